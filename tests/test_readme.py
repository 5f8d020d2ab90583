"""The README's shell blocks, run as a newcomer types them (tests/readme_blocks.py says how).

Every ```bash block must say, in a marker on the line above it, whether this test runs it or why not:
a block added without one fails here, so a new README line is either run or skipped with its reason in
plain view. The first-day walkthrough is run by tests/test_first_day.py, which checks what it made.
"""
import pytest

from tests.readme_blocks import KINDS, REPO, VENV_BIN, blocks, check_ran, run_block, user_env

BLOCKS = blocks()
TIMEOUT = 300  # s per block: the run blocks take seconds (the walkthrough has its own test)


def test_every_shell_block_says_whether_it_runs():
    bad = [f"README.md:{b.line} (under '{b.heading}'): " + ("no marker" if b.mark is None else f"marker '{b.mark}'")
           for b in BLOCKS if b.kind is None]
    assert not bad, ("each ```bash block needs a marker on the line above it, one of "
                     "'<!-- test: run -->', '<!-- test: run in the checkout -->', '<!-- test: run by tests/X.py -->' "
                     "or '<!-- test: skip REASON -->':\n" + "\n".join(bad))
    assert len(BLOCKS) >= 10 and {b.kind for b in BLOCKS} <= set(KINDS)
    for b in BLOCKS:
        if b.kind == "run by":
            assert (REPO / b.detail).is_file(), f"README.md:{b.line}: {b.detail} does not exist"
            assert "readme_blocks" in (REPO / b.detail).read_text(), f"{b.detail} does not run README blocks"


def test_the_parser_splits_commands_as_bash_reads_them(tmp_path):
    """Continuations, compound statements and comment lines: what a command of a block is."""
    (tmp_path / "R.md").write_text("# T\n<!-- test: run -->\n```bash\n# a comment line\necho a \\\n  b   # -> a b\n"
                                   "for x in 1 2; do\n  echo $x\ndone\n\nfalse\necho never\n```\n```\nnot shell\n```\n")
    (b,) = blocks(tmp_path / "R.md")
    assert b.kind == "run" and b.heading == "T" and b.line == 3
    assert [(c.line, c.text.split()[0]) for c in b.commands] == [(5, "echo"), (7, "for"), (11, "false"), (12, "echo")]
    ran = run_block(b, tmp_path, user_env(tmp_path, False), tmp_path / "logs", 30)
    assert [r.rc for r in ran] == [0, 0, 1, None] and ran[0].out == "a b\n" and ran[1].out == "1\n2\n"
    with pytest.raises(AssertionError, match=r"README.md:11: `false` exited 1"):
        check_ran(ran, 30)


def _params():
    for b in BLOCKS:
        if b.kind in ("run", "run in the checkout"):
            yield pytest.param(b, id=b.id)
        else:
            why = f"run with its checks by {b.detail}" if b.kind == "run by" else (b.detail or "no marker")
            yield pytest.param(b, id=b.id, marks=pytest.mark.skip(reason=f"README.md:{b.line}: {why}"))


@pytest.mark.slow
@pytest.mark.parametrize("block", list(_params()))
def test_readme_block(block, tmp_path):
    if not (VENV_BIN / "cit-fast").is_file():
        pytest.skip(f"no {VENV_BIN}/cit-fast: the README's setup (make venv) makes it")
    work = tmp_path / "work"
    work.mkdir()
    cwd = REPO if block.kind == "run in the checkout" else work
    ran = run_block(block, cwd, user_env(tmp_path, venv_on_path=True), tmp_path / "logs", TIMEOUT)
    check_ran(ran, TIMEOUT)
