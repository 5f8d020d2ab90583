"""Mask quality without ground truth: coverage summary, degenerate warning, montage; IoU."""
import numpy as np
import pytest
from PIL import Image

from cit_fast.data.masks.quality import MaskQuality, coverage, mask_iou, spread, write_montage


def box_mask(h, w, frac_rows):
    """uint8 (h, w) mask whose first round(frac_rows * h) rows are object."""
    m = np.zeros((h, w), np.uint8)
    m[: round(frac_rows * h)] = 255
    return m


def test_coverage_and_iou_of_known_masks():
    assert coverage(box_mask(100, 30, 0.25)) == pytest.approx(0.25)
    assert coverage(np.zeros((4, 4), bool)) == 0.0 and coverage(np.ones((4, 4), bool)) == 1.0
    a, b = box_mask(100, 10, 0.5), box_mask(100, 10, 0.25)
    assert mask_iou(a, b) == pytest.approx(0.5)  # 25 rows shared of 50
    assert mask_iou(a, 255 - a) == 0.0
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


def test_quality_summary_numbers():
    fracs = [0.0, 0.02, 0.25, 0.5, 0.6, 0.7, 1.0]
    q = MaskQuality.of(coverage(box_mask(100, 8, f)) for f in fracs)
    assert q.count == 7
    assert q.mean == pytest.approx(np.mean(fracs))
    assert q.quantiles == pytest.approx(tuple(np.quantile(fracs, (0, 0.1, 0.5, 0.9, 1.0))))
    assert q.median == pytest.approx(0.5)
    assert q.nearly_empty == pytest.approx(2 / 7) and q.nearly_full == pytest.approx(1 / 7)
    text = q.format()
    assert "7 masks" in text and "mean 43.9%" in text and "median 50.0%" in text
    assert "29% of masks under 5%, 14% over 95%" in text
    assert q.warning() is None  # 4 of 7 masks are usable
    assert "57% of the masks are degenerate" in MaskQuality.of(fracs[:-2] + [0.97, 1.0]).warning()
    assert MaskQuality.of([]).format() == "coverage: no new masks" and MaskQuality.of([]).warning() is None


@pytest.mark.parametrize("fracs, words", [
    ([0.01, 0.02, 0.03, 0.3], "nearly empty (median coverage 2.5%"),
    ([0.99, 0.97, 1.0, 0.5], "nearly full (median coverage 98.0%"),
    ([0.0, 0.01, 0.3, 0.99, 1.0], "80% of the masks are degenerate"),
])
def test_degenerate_coverage_warns_in_one_line(fracs, words):
    w = MaskQuality.of(fracs).warning()
    assert w is not None and words in w and "\n" not in w and w.startswith("warning: ")


def test_spread_takes_every_class_first():
    keys = [f"a/{i}" for i in range(5)] + ["b/0"] + [f"c/{i}" for i in range(3)]
    picked = spread(keys, 4)
    assert [keys[i].split("/")[0] for i in picked].count("b") == 1
    assert {keys[i].split("/")[0] for i in picked} == {"a", "b", "c"} and len(picked) == 4
    assert spread(keys, 100) == list(range(len(keys)))


def test_montage_draws_outlines_and_is_atomic(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for k in range(7):
        img = np.full((60 + 10 * k, 80, 3), 128, np.uint8)
        m = np.zeros(img.shape[:2], np.uint8)
        m[10:40, 20:60] = 255
        items.append((img, m, f"cls/img{k}"))
    items.append((rng.integers(0, 255, (30, 30, 3), dtype=np.uint8), np.zeros((30, 30), np.uint8), "cls/empty"))
    path = write_montage(items, tmp_path / "m" / "montage.png", side=64, cols=3)
    assert path == tmp_path / "m" / "montage.png" and [p.name for p in path.parent.iterdir()] == ["montage.png"]
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (3 * (64 + 14), 3 * 64, 3)  # 8 tiles in 3 columns, a caption strip under each
    tile = sheet[:64, :64].astype(int)
    outline = (tile[..., 0] > 200) & (tile[..., 1] > 200) & (tile[..., 2] < 60)
    assert outline.sum() > 50  # the yellow outline is drawn ...
    ys, xs = np.nonzero(outline)
    inside = tile[ys.mean().astype(int), xs.mean().astype(int)]
    assert (abs(inside - 128) <= 2).all()  # ... around the object, which keeps its colour ...
    assert (abs(tile[20, 3] - 0.4 * 128) <= 2).all()  # ... while the context is dimmed
    assert write_montage([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
