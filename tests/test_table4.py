import json
import re

import pytest

from cit_fast.cli import main
from cit_fast.errors import UsageError
from cit_fast.table4 import ROWS, VERSIONS, by_cell, check_seeds, format_table, plan_runs
from tests.test_report import Images, decode_png


@pytest.mark.slow
def test_table4_runs_all_cells_and_appends_results(tmp_path, capsys):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## an older section\n\nkept\n")
    rc = main(["table4", "--out-dir", str(tmp_path / "t4"), "--results-md", str(md), "--jobs", "2",
               "model.name=resnet8", "optim.epochs=1", "data.synthetic_train_per_class=4",
               "data.synthetic_test_per_class=2", "data.batch_size=8"])
    assert rc == 0
    out = capsys.readouterr().out
    text = md.read_text()
    assert "kept" in text and "CIT Table IV" in text  # appended, not rewritten
    for label, _, _ in ROWS:
        assert "| " + label.replace("|", "\\|") + " |" in text  # a | inside a cell is escaped
    assert "| Stratify B - Stratify C\\|A |" in text
    # 13 distinct runs, each with its own results and log
    runs = [p for p in (tmp_path / "t4").iterdir() if (p / "results.json").is_file()]
    assert len(runs) == 1 + 3 * len(VERSIONS) and all((p / "train.log").stat().st_size > 0 for p in runs)
    assert "13 runs in" in out
    assert "[1/13]" in out and "[13/13]" in out and "12 left, about" in out  # progress with an ETA

    # the report of the sweep: Table IV, Grad-CAM of baseline vs CIT, per-class accuracy change
    assert main(["report", str(tmp_path / "t4")]) == 0
    page = (tmp_path / "t4" / "report" / "index.html").read_text()
    parser = Images()
    parser.feed(page)
    assert "CIT Table IV" in page
    for alt in ("grad-cam none-V4", "grad-cam stratify_c-V4", "per-class accuracy change"):
        img = decode_png(parser.images[alt])
        assert img.shape[0] > 100 and img.std() > 10, alt


# -- --seeds: every cell over seeds 0..N-1, mean ± 95% CI half-width, and the paired differences ------------

def _acc(value):
    return {f"{plan}-{fixed or v}": value("original" if fixed else plan, v) for _, fixed, plan in ROWS for v in VERSIONS}


def test_format_without_seeds_is_the_demo_table():
    acc = _acc(lambda plan, v: 91.0 if plan == "original" else
               {"none": 50.0, "stratify_b": 90.04, "stratify_c": 89.0}[plan] + VERSIONS.index(v))
    assert format_table(acc) == "\n".join([
        "| Training method | V1 | V2 | V3 | V4 |", "|---|---|---|---|---|",
        "| Baseline on Ori. | 91.0 | 91.0 | 91.0 | 91.0 |", "| Baseline on Syn. | 50.0 | 51.0 | 52.0 | 53.0 |",
        "| CIT - Stratify B | 90.0 | 91.0 | 92.0 | 93.0 |", "| CIT - Stratify C\\|A | 89.0 | 90.0 | 91.0 | 92.0 |",
        "| Stratify B - Stratify C\\|A | +1.0 | +1.0 | +1.0 | +1.0 |"])


def test_format_with_seeds_by_hand():
    # per seed: baseline 70, 72, 74 (mean 72, sd 2: half-width t(2) 4.303 * 2 / sqrt 3 = 4.97);
    # B = baseline + 2, 4, 3 (diff mean 3, sd 1: [3 - 2.48, 3 + 2.48]); C|A = B - 1 in every seed (no spread)
    base = [70.0, 72.0, 74.0]
    b = [x + d for x, d in zip(base, (2.0, 4.0, 3.0))]
    acc = _acc(lambda plan, v: {"none": base, "stratify_b": b, "stratify_c": [x - 1 for x in b]}.get(plan, [91.0] * 3))
    lines = format_table(acc).splitlines()
    assert lines[3] == "| Baseline on Syn. | 72.0 ± 5.0 | 72.0 ± 5.0 | 72.0 ± 5.0 | 72.0 ± 5.0 |"
    assert lines[2] == "| Baseline on Ori. | 91.0 ± 0.0 | 91.0 ± 0.0 | 91.0 ± 0.0 | 91.0 ± 0.0 |"
    assert lines[7] == "| paired difference, mean [95% CI] over 3 seeds | V1 | V2 | V3 | V4 |"
    assert lines[9] == "| Stratify B - Baseline on Syn. | " + " | ".join(["+3.0 [+0.5, +5.5]"] * 4) + " |"
    assert lines[10] == "| Stratify C\\|A - Baseline on Syn. | " + " | ".join(["+2.0 [-0.5, +4.5]"] * 4) + " |"
    assert lines[11] == "| Stratify B - Stratify C\\|A | " + " | ".join(["+1.0 [+1.0, +1.0]"] * 4) + " |"
    assert len(lines) == 12 and lines[6] == ""
    # the differences are paired by seed: the same cells in another seed order give another CI
    acc["stratify_b-V1"] = [b[1], b[2], b[0]]
    assert format_table(acc).splitlines()[9].split(" | ")[1] != "+3.0 [+0.5, +5.5]"


def test_by_cell_pairs_values_by_seed_and_plan_runs_sets_both_seeds(tmp_path):
    assert by_cell({"seed1/none-V1": 2.0, "seed0/none-V1": 1.0, "seed0/x": 5.0, "seed1/x": 6.0}, 2) == {
        "none-V1": [1.0, 2.0], "x": [5.0, 6.0]}
    runs = plan_runs(tmp_path, ["optim.epochs=1"], seeds=2)
    assert len(runs) == 26 and list(runs)[0] == "seed0/none-original" and list(runs)[13] == "seed1/none-original"
    assert {"seed=1", "data.synthetic_seed=1", "optim.epochs=1"} <= set(runs["seed1/stratify_c-V4"])
    assert f"out_dir={tmp_path / 'seed1' / 'stratify_c-V4'}" in runs["seed1/stratify_c-V4"]
    assert not any(o.startswith("seed=") for o in plan_runs(tmp_path, [], seeds=1)["none-V1"])  # the demo as it was


@pytest.mark.parametrize("seeds, overrides, message", [
    (0, [], "--seeds: expected at least 1, got 0"),
    (3, ["seed=4"], "--seeds 3 sets seed and data.synthetic_seed of every run (0..2); drop seed=4"),
    (2, ["optim.epochs=1", "data.synthetic_seed=1"], "drop data.synthetic_seed=1 from the overrides"),
])
def test_check_seeds_errors(seeds, overrides, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        check_seeds(seeds, overrides)
    check_seeds(1, overrides)  # one seed: the overrides choose it


def test_seeds_mistakes_through_the_cli(capsys):
    assert main(["table4", "--seeds", "2", "seed=1"]) == 2
    assert "drop seed=1" in capsys.readouterr().err
    assert main(["table4", "--seeds", "2", "--images", "cifar10:/nowhere"]) == 2
    assert "--seeds: for the embedded table" in capsys.readouterr().err


@pytest.mark.slow
def test_table4_with_seeds_through_the_cli(tmp_path, capsys):
    md = tmp_path / "RESULTS.md"
    rc = main(["table4", "--seeds", "2", "--out-dir", str(tmp_path / "t4"), "--results-md", str(md), "--jobs", "2",
               "model.name=resnet8", "optim.epochs=1", "data.synthetic_train_per_class=4",
               "data.synthetic_test_per_class=2", "data.batch_size=8"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "CIT Table IV: 26 runs (2 seeds)" in out and "mean ± 95% CI half-width over seeds 0-1" in out
    text = md.read_text()
    assert "2 paired seeds" in text and "| paired difference, mean [95% CI] over 2 seeds |" in text
    for s in (0, 1):  # each seed a complete sweep, its runs on that seed's data and init
        runs = [p for p in (tmp_path / "t4" / f"seed{s}").iterdir() if (p / "results.json").is_file()]
        assert len(runs) == 13
        cfg = json.loads((tmp_path / "t4" / f"seed{s}" / "stratify_b-V2" / "results.json").read_text())["config"]
        assert cfg["seed"] == s and cfg["data"]["synthetic_seed"] == s
    acc = {f"seed{s}/{p.name}": json.loads((p / "results.json").read_text())["test_top1"]
           for s in (0, 1) for p in (tmp_path / "t4" / f"seed{s}").iterdir()}
    assert format_table(by_cell(acc, 2)) in text  # the table is the runs' own numbers
