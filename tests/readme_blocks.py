"""The README's shell blocks as a newcomer types them: parsed, and run command by command.

Every ```bash block of README.md carries a marker on the line above it saying what the test does:

    <!-- test: run -->                          run in a fresh empty directory, the venv's bin on PATH
    <!-- test: run in the checkout -->          run from the repository root (its commands name repo paths)
    <!-- test: run by tests/test_first_day.py --> that test runs it, with checks of what it made
    <!-- test: skip REASON -->                  not run; REASON is shown as the test's skip reason

A block is run as written, in one bash, command by command (a command = a line, its backslash
continuations, or a compound statement), each one's output kept; the first command that fails stops
the block and is reported with its README line. Nothing is activated: PATH is ``/usr/bin:/bin`` plus,
for ``run`` blocks, the venv's bin (what the walkthrough's ``export PATH=$PWD/.venv/bin:$PATH`` sets),
and HOME is a temporary directory (``~`` in a block lands there).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"
SHELLS = ("bash", "sh", "shell", "console")
MARK = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->$")
KINDS = ("run", "run in the checkout", "run by", "skip")


@dataclass
class Command:
    line: int  # README line of its first line (1-based)
    text: str


@dataclass
class Block:
    line: int  # README line of the opening fence
    heading: str
    text: str
    mark: Optional[str]  # the marker's text after "test:", None if there is none
    commands: List[Command] = field(default_factory=list)

    @property
    def kind(self) -> Optional[str]:
        m = self.mark or ""
        if m == "run" or m == "run in the checkout":
            return m
        if m.startswith("run by "):
            return "run by"
        if m.startswith("skip ") and m[5:].strip():
            return "skip"
        return None

    @property
    def detail(self) -> str:
        """The reason of a skip, the test file of a 'run by'."""
        return self.mark.split(" ", 2)[2] if self.kind == "run by" else (self.mark[5:].strip() if self.kind == "skip" else "")

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-") + f"-L{self.line}"


def _complete(text: str) -> bool:
    return subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True).returncode == 0


def split_commands(lines: List[str], first_line: int) -> List[Command]:
    """Commands of a block: blank and comment-only lines dropped, a backslash continues a line, and a
    compound statement (for ... done) is one command (lines are joined until bash can parse them)."""
    out: List[Command] = []
    cur: List[str] = []
    start = 0
    for i, ln in enumerate(lines):
        if not cur and (not ln.strip() or ln.lstrip().startswith("#")):
            continue
        if not cur:
            start = first_line + i
        cur.append(ln)
        if ln.rstrip().endswith("\\"):
            continue
        text = "\n".join(cur)
        if _complete(text):
            out.append(Command(start, text))
            cur = []
    if cur:
        out.append(Command(start, "\n".join(cur)))  # bash will say what is wrong with it
    return out


def blocks(path: Path = README) -> List[Block]:
    """Every shell block of the README, with its heading and marker."""
    lines = path.read_text().splitlines()
    found: List[Block] = []
    heading, i = "", 0
    while i < len(lines):
        ln = lines[i]
        fence = re.match(r"^```(\S*)\s*$", ln)
        if fence:
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if fence.group(1) in SHELLS:
                k = i - 1
                while k >= 0 and not lines[k].strip():
                    k -= 1
                m = MARK.match(lines[k].strip()) if k >= 0 else None
                body = lines[i + 1:j]
                found.append(Block(i + 1, heading, "\n".join(body), m.group(1) if m else None,
                                   split_commands(body, i + 2)))
            i = j + 1
            continue
        if ln.startswith("#"):
            heading = ln.lstrip("#").strip()
        i += 1
    return found


def block_under(heading: str, mark: str) -> Block:
    """The one block under ``heading`` marked ``mark`` (for a test that runs it with its own checks)."""
    hits = [b for b in blocks() if b.heading == heading and b.mark == mark]
    assert len(hits) == 1, f"README.md: expected one shell block under '{heading}' marked '<!-- test: {mark} -->', " \
                           f"found {len(hits)}"
    return hits[0]


@dataclass
class Ran:
    command: Command
    rc: Optional[int]  # None: not reached, or killed by the timeout
    out: str
    err: str


def user_env(home: Path, venv_on_path: bool, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """A newcomer's environment: nothing activated, HOME a scratch directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = (f"{VENV_BIN}:" if venv_on_path else "") + "/usr/bin:/bin"
    env["HOME"] = str(home)
    env.update(extra or {})
    return env


def run_block(block: Block, cwd: Path, env: Dict[str, str], logs: Path, timeout: int,
              substitute: Optional[Dict[str, str]] = None) -> List[Ran]:
    """Run ``block``'s commands in one bash from ``cwd``, in order, stopping at the first that fails.
    ``substitute``: placeholders of the README (``/path/to/...``) and what the test puts there; each
    must occur in the block (so a stale one is noticed)."""
    substitute = substitute or {}
    logs.mkdir(parents=True, exist_ok=True)
    script = []
    for n, c in enumerate(block.commands):
        text = c.text
        for old, new in substitute.items():
            text = text.replace(old, new)
        script.append(f"{{ {text}\n}} >'{logs}/{n}.out' 2>'{logs}/{n}.err' </dev/null\n"
                      f"echo $? >'{logs}/{n}.rc'; [ \"$(cat '{logs}/{n}.rc')\" = 0 ] || exit 1\n")
    for old in substitute:
        assert old in block.text, f"README.md:{block.line}: the test fills in {old!r}, which the block no longer has"
    rest = block.text
    for old in substitute:
        rest = rest.replace(old, "")
    left = sorted(set(re.findall(r"/path/to/\S*", rest)))
    assert not left, f"README.md:{block.line}: placeholders the test cannot fill: {', '.join(left)}"
    (logs / "block.sh").write_text("".join(script))
    p = subprocess.Popen(["bash", str(logs / "block.sh")], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # the block's own process group: launchers and their workers too
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    ran = []
    for n, c in enumerate(block.commands):
        rc_file = logs / f"{n}.rc"
        read = (lambda p: p.read_text(errors="replace") if p.is_file() else "")
        ran.append(Ran(c, int(rc_file.read_text()) if rc_file.is_file() else None,
                       read(logs / f"{n}.out"), read(logs / f"{n}.err")))
    return ran


def check_ran(ran: List[Ran], timeout: int) -> None:
    """Every command exited 0; else the first that did not (the block stops there), with its README
    line and output."""
    bad = next((r for r in ran if r.rc != 0), None)
    if bad is not None:
        how = f"exited {bad.rc}" if bad.rc is not None else f"did not finish (the block's limit: {timeout} s)"
        raise AssertionError(f"README.md:{bad.command.line}: `{bad.command.text}` {how}\n"
                             f"--- stdout (tail)\n{bad.out[-3000:]}\n--- stderr (tail)\n{bad.err[-5000:]}")
