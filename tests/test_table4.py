import pytest

from cit_fast.cli import main
from cit_fast.table4 import ROWS, VERSIONS
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
