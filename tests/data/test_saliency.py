"""Mask generation (the function g): saliency masks, model masks, and the resumable `masks` command."""
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cit_fast.cli import main as cli_main
from cit_fast.data.records import DataError
from cit_fast.data.layout import detect_layout
from cit_fast.data.masks_quality import MaskQuality, coverage, mask_iou
from cit_fast.data.saliency import (DEFAULT_METHOD, SaliencyMasker, TorchMasker, clean_mask, generate_masks,
                                    grabcut_seeds, otsu_threshold, robust_background_saliency, rgb_to_lab,
                                    slic_numpy, spectral_residual)


def scene(seed: int, h: int = 120, w: int = 150):
    """A red disk on a flat green background with a little noise; returns (image, true mask)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    cx, cy, r = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6), rng.uniform(0.15, 0.25) * h
    m = (x - cx) ** 2 + (y - cy) ** 2 < r * r
    img = np.where(m[..., None], np.array([220, 60, 40]), np.array([40, 80, 60])) + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), m


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("method, use_cv2, min_iou", [("spectral", True, 0.6), ("spectral", False, 0.5),
                                                      ("fine_grained", True, 0.3), ("grabcut", True, 0.85),
                                                      ("rbd", True, 0.8), ("rbd", False, 0.8)])
def test_saliency_masker_finds_the_object(method, use_cv2, min_iou):
    masker = SaliencyMasker(method, use_cv2=use_cv2)
    assert masker.backend == ("opencv" if use_cv2 else "numpy")
    ious = []
    for seed in range(6):
        img, truth = scene(seed)
        m = masker(img)
        assert m.shape == img.shape[:2] and m.dtype == np.uint8
        assert set(np.unique(m)) <= {0, 255}
        assert m[0, 0] == m[-1, -1] == 0  # the corners are context
        ious.append(iou(m > 0, truth))
    assert np.mean(ious) > min_iou, ious  # classical saliency is rough: judged on average


def test_spectral_residual_lights_up_the_object():
    img, truth = scene(0, 64, 64)
    sal = spectral_residual(img.mean(-1) / 255.0)
    assert sal.shape == truth.shape and sal.min() >= 0 and sal.max() <= 1
    assert sal[truth].mean() > 2 * sal[~truth].mean()


def test_otsu_splits_two_modes():
    x = np.concatenate([np.full(500, 40), np.full(300, 200)]).astype(np.uint8)
    assert 40 <= otsu_threshold(x) < 200


@pytest.mark.parametrize("use_cv2", [True, False])
def test_clean_mask_removes_specks_and_fills_holes(use_cv2):
    m = np.zeros((100, 100), bool)
    m[20:80, 20:80] = True
    m[45:55, 45:55] = False  # a hole
    m[5, 5] = m[90:92, 90:92] = True  # specks
    out = clean_mask(m, use_cv2=use_cv2)
    assert out[50, 50] and out[25, 25]  # hole filled, body kept
    assert not out[5, 5] and not out[91, 91]


def make_src(root: Path, n_per_class: int = 2) -> Path:
    for c in ("cat", "dog"):
        (root / "images" / c).mkdir(parents=True)
        for k in range(n_per_class):
            img, _ = scene(k + (10 if c == "dog" else 0), 40, 50)
            Image.fromarray(img).save(root / "images" / c / f"{c}{k}.jpg")
    return root


def test_generate_masks_writes_folder_layout_and_is_resumable(tmp_path):
    src = make_src(tmp_path / "data")
    out = tmp_path / "out"
    report = generate_masks(str(src), str(out), SaliencyMasker(), progress=False)
    assert report.written == 4 and report.skipped == 0 and not report.failed
    masks = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert masks == ["masks/cat/cat0.png", "masks/cat/cat1.png", "masks/dog/dog0.png", "masks/dog/dog1.png",
                     "masks_montage.png"]
    assert not list(out.rglob("*.tmp"))
    m = np.asarray(Image.open(out / "masks/cat/cat0.png"))
    assert m.shape == (40, 50) and m.dtype == np.uint8
    # a rerun does nothing; a deleted mask is the only one recomputed
    stamp = (out / "masks/dog/dog1.png").stat().st_mtime_ns
    (out / "masks/cat/cat1.png").unlink()
    again = generate_masks(str(src), str(out), SaliencyMasker(), progress=False)
    assert (again.written, again.skipped) == (1, 3)
    assert (out / "masks/dog/dog1.png").stat().st_mtime_ns == stamp
    assert generate_masks(str(src), str(out), SaliencyMasker(), overwrite=True, progress=False).written == 4
    # the result is a dataset load_folder reads
    from cit_fast.data.sources import load_folder

    (out / "images").symlink_to(src / "images")
    assert len(load_folder(str(out))) == 4


def test_generate_masks_is_atomic_when_the_masker_fails(tmp_path):
    src = make_src(tmp_path / "data")
    calls = []

    def flaky(img):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("model crashed")
        return np.full(img.shape[:2], 255, np.uint8)

    with pytest.raises(RuntimeError, match="model crashed"):
        generate_masks(str(src), str(src), flaky, progress=False)
    written = list((src / "masks").rglob("*"))
    assert len([p for p in written if p.is_file()]) == 2  # the two finished masks, no temporary files
    assert all(p.suffix == ".png" for p in written if p.is_file())
    report = generate_masks(str(src), str(src), lambda im: np.full(im.shape[:2], 255, np.uint8), progress=False)
    assert (report.written, report.skipped) == (2, 2)


def test_empty_and_full_masks_are_counted(tmp_path):
    src = make_src(tmp_path / "data")
    names = []

    def alternate(img):
        names.append(1)
        return np.zeros(img.shape[:2], np.uint8) if len(names) % 2 else np.full(img.shape[:2], 255, np.uint8)

    report = generate_masks(str(src), str(tmp_path / "o"), alternate, progress=False)
    assert len(report.empty) == 2 and len(report.full) == 2
    assert "2 empty" in report.summary() and "2 full" in report.summary()


def test_unreadable_image_is_named_and_the_rest_done(tmp_path):
    src = make_src(tmp_path / "data")
    bad = src / "images" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg") as e:
        generate_masks(str(src), str(src), SaliencyMasker(), progress=False)
    assert "4 masks written" in str(e.value)
    assert not (src / "masks" / "cat" / "broken.png").exists()


def test_layout_errors(tmp_path):
    with pytest.raises(DataError, match="images/<class>/"):
        generate_masks(str(tmp_path), str(tmp_path), SaliencyMasker(), progress=False)
    src = make_src(tmp_path / "d", 1)
    Image.fromarray(scene(0, 20, 20)[0]).save(src / "images" / "cat" / "cat0.png")  # same stem as cat0.jpg
    with pytest.raises(DataError, match="cat0"):
        generate_masks(str(src), str(src), SaliencyMasker(), progress=False)


def test_masks_command(tmp_path, capsys):
    src = make_src(tmp_path / "data")
    assert cli_main(["masks", str(src), str(src), "--no-progress"]) == 0
    assert "4 masks written" in capsys.readouterr().out
    assert cli_main(["masks", str(src), str(src), "--no-progress"]) == 0
    assert "4 already present" in capsys.readouterr().out
    (src / "images" / "dog" / "dog9.jpg").write_bytes(b"")
    assert cli_main(["masks", str(src), str(src), "--no-progress"]) == 2
    assert "dog9.jpg" in capsys.readouterr().err
    assert cli_main(["masks", str(src), str(src), "--model", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


class _RedIsObject(torch.nn.Module):
    """A stand-in saliency model: logit = red - green (ImageNet-normalised input)."""

    def forward(self, x):
        return (x[:, :1] - x[:, 1:2]) * 4


def test_torchscript_model(tmp_path):
    path = tmp_path / "sal.pt"
    torch.jit.script(_RedIsObject()).save(str(path))
    img, truth = scene(1)
    m = TorchMasker(str(path), input_size=64, device="cpu")(img)
    assert m.shape == img.shape[:2] and m.dtype == np.uint8
    assert iou(m > 0, truth) > 0.8


def test_state_dict_model_for_a_torchvision_arch(tmp_path):
    import torchvision.models.segmentation as seg

    torch.manual_seed(0)
    net = seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=2)
    path = tmp_path / "seg.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    masker = TorchMasker(str(path), arch="lraspp_mobilenet_v3_large", input_size=64, device="cpu", clean=False)
    img, _ = scene(2)
    m = masker(img)
    expect = (net.eval()(torch.zeros(1, 3, 64, 64))["out"].shape[1])
    assert expect == 2 and m.shape == img.shape[:2] and set(np.unique(m)) <= {0, 255}
    with pytest.raises(DataError, match="--arch"):
        TorchMasker(str(path))  # a state dict needs its architecture
    with pytest.raises(DataError, match="unknown --arch"):
        TorchMasker(str(path), arch="unet")
    with pytest.raises(DataError, match="does not fit"):
        TorchMasker(str(path), arch="lraspp_mobilenet_v3_large", num_classes=5)
