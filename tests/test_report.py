import base64
import io
from html.parser import HTMLParser

import pytest
import numpy as np
from PIL import Image

from cit_fast.cli import main


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables = {}, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images[a["alt"]] = a["src"]
        self.tables += tag == "table"


def decode_png(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.slow
def test_report_renders_curves_and_composite_grids(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "model.name=resnet8", "data.synthetic_version=V2", "data.synthetic_train_per_class=16",
                 "data.synthetic_test_per_class=4", "data.batch_size=16", "optim.epochs=3", "progress=false",
                 "intervention.plan=stratify_c", f"out_dir={run}"]) == 0
    assert main(["report", str(run)]) == 0
    page = (run / "report" / "index.html").read_text()
    parser = Images()
    parser.feed(page)
    assert parser.tables >= 1 and "stratify_c" in page
    curves = decode_png(parser.images["training curves"])
    grid = decode_png(parser.images["composite grid run"])
    cam = decode_png(parser.images["grad-cam run"])
    for img in (curves, grid, cam):
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 10  # non-trivial pictures
    # the grid has 3 rows of tiles: object, context partner, composite
    assert grid.shape[0] > 2.5 * 32 and (run / "report" / "curves.png").stat().st_size > 5000
    # composites really mix two images: the composite row differs from the object row's border
    h = grid.shape[0] // 3
    assert not np.array_equal(grid[:h], grid[2 * h: 3 * h])


def test_report_on_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
def test_report_of_a_double_branch_run_shows_its_evaluation_and_both_branch_maps(tmp_path):
    run = tmp_path / "dbl"
    assert main(["train", "model.name=double_resnet8", "data.synthetic_version=V2", "data.synthetic_train_per_class=8",
                 "data.synthetic_test_per_class=3", "data.batch_size=16", "optim.epochs=1", "progress=false",
                 "intervention.plan=stratify_c", f"out_dir={run}"]) == 0
    assert main(["eval", "--checkpoint", str(run), "--table2", "--bg-challenge", "--out", str(run / "eval.json")]) == 0
    assert main(["report", str(run)]) == 0
    page = (run / "report" / "index.html").read_text()
    assert "CIT Table II (top-1 %)" in page and "only background" in page and "Background Challenge" in page
    assert "Per class (top-1 %)" in page and "synthetic_train_per_class" not in page  # metrics, not the config
    parser = Images()
    parser.feed(page)
    cam = decode_png(parser.images["grad-cam dbl"])
    grid = decode_png(parser.images["composite grid dbl"])
    assert cam.shape[0] > 3.5 * 32  # four rows: content, its map, context, its map
    # one image per class: the 8 tiles show 8 different classes' images (a spread, not the first 8)
    assert cam.shape[1] >= 8 * 32 and grid.std() > 10


def test_a_failing_report_leaves_nothing_behind(tmp_path, monkeypatch):
    import cit_fast.report as report

    run = tmp_path / "r"
    assert main(["train", "model.name=resnet8", "data.synthetic_train_per_class=4", "data.synthetic_test_per_class=2",
                 "data.batch_size=8", "optim.epochs=1", "progress=false", f"out_dir={run}"]) == 0

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(report, "gradcam_figure", broken)
    try:
        main(["report", str(run)])
    except RuntimeError:
        pass
    assert not (run / "report").exists() and not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_report_and_eval_of_a_deepspeed_run(tmp_path, monkeypatch):
    """A DeepSpeed run's checkpoint is a directory: eval reads it, the report draws its Grad-CAM."""
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    run = tmp_path / "ds"
    assert main(["train", "model.name=resnet8", "dist.engine=deepspeed", "dist.zero_stage=2",
                 "data.synthetic_train_per_class=4", "data.synthetic_test_per_class=2", "data.batch_size=8",
                 "optim.epochs=1", "progress=false", f"out_dir={run}"]) == 0
    ck = run / "checkpoints" / "ds_e0001_s000000"
    assert ck.is_dir() and main(["eval", "--checkpoint", str(ck), "--out", str(tmp_path / "e.json")]) == 0
    assert main(["report", str(run)]) == 0
    parser = Images()
    parser.feed((run / "report" / "index.html").read_text())
    assert decode_png(parser.images["grad-cam ds"]).std() > 10
