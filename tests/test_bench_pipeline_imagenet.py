"""bench/pipeline.py --case imagenet on a few files: the ImageNet-like data it writes and every row it
compares (torchvision's loader without compositing, cit_fast's torch and DALI pipelines with it)."""
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pipeline as bench  # noqa: E402


def test_imagenet_like_files(tmp_path):
    root, kb = bench.make_imagenet_like(tmp_path, 8, 4)
    jpgs = sorted(root.rglob("*.JPEG"))
    assert len(jpgs) == 8 and {p.parent.name for p in jpgs} == {f"n{c:08d}" for c in range(4)}
    sizes = {Image.open(p).size for p in jpgs}
    assert sizes <= {(500, 375), (375, 500)}
    assert 70 < kb < 160  # ImageNet's typical ~110 KB
    cover = []
    for p in jpgs:
        m = np.asarray(Image.open(tmp_path / "train_masks" / p.parent.name / f"{p.stem}.png"))
        assert m.shape == Image.open(p).size[::-1]
        cover.append((m > 127).mean())
    assert min(cover) > 0 and sum(c < 1 for c in cover) >= 4  # the photos' objects, cut with them


@pytest.mark.slow
def test_imagenet_case_runs_every_row(tmp_path, capsys):
    md = tmp_path / "R.md"
    assert bench.main(["--case", "imagenet", "--images", "24", "--batch-size", "4", "--repeats", "1",
                       "--warmup", "0", "--workers", "0", "--results-md", str(md)]) == 0
    out = capsys.readouterr().out
    text = md.read_text()
    for row in ("torchvision ImageFolder, RandomResizedCrop, NO compositing",
                "cit_fast torch, random-resized + CIT compositing + decode reuse",
                "cit_fast dali, random-resized + CIT compositing"):
        assert row in out and f"| {row}" in text
    assert "vs torchvision" in text and "shared with other jobs" in text
