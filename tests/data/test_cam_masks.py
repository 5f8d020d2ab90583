"""--method cam: masks from the class activation map of the user's own classifier."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from cit_fast.eval.cam import ClassifierCam, cam_masker, load_classifier
from cit_fast.cli import main as cli_main
from cit_fast.config import from_dict, to_dict
from cit_fast.data.masks.quality import mask_iou
from cit_fast.errors import CheckpointError
from cit_fast.models.registry import create_model

SIDE = 64  # pixels of the generated photos
INPUT = 32  # pixels the classifier sees (its run's data.image_size): training stays a few seconds on a CPU
COLOURS = {"red": (0.85, 0.15, 0.1), "blue": (0.1, 0.25, 0.9)}  # the class is the object's colour


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads contend and run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scene(rng, colour):
    """A coloured blob (off centre, 8-20% of the image) on a grey textured background."""
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    grain = np.asarray(Image.fromarray(rng.random((6, 6)).astype(np.float32)).resize((SIDE, SIDE), Image.BICUBIC))
    bg = (0.3 + 0.4 * grain)[..., None] * np.ones(3) * (0.9 + 0.1 * np.sin(30 * x + 10 * y))[..., None]
    r = rng.uniform(0.16, 0.25)
    cx, cy = rng.uniform(r + 0.03, 1 - r - 0.03, 2)
    theta = np.arctan2(y - cy, x - cx)
    m = np.hypot(x - cx, y - cy) < r * (1 + 0.2 * np.cos(3 * theta + rng.uniform(0, 6)))
    obj = np.array(colour) * (0.8 + 0.3 * grain)[..., None]
    img = np.where(m[..., None], obj, bg) + rng.normal(0, 0.02, (SIDE, SIDE, 3))
    return np.clip(img * 255, 0, 255).astype(np.uint8), m


def make_folder(root: Path, n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    truth = {}
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for k in range(n_per_class):
            img, m = scene(rng, colour)
            Image.fromarray(img).save(root / name / f"{k}.png")
            truth[f"{name}/{k}"] = m
    return truth


def train_classifier(root: Path, steps: int = 30) -> torch.nn.Module:
    """resnet8 trained for a few steps on the folder's images at INPUT pixels (the default
    (x - 0.5) / 0.25 normalisation)."""
    torch.manual_seed(0)
    files = sorted(root.glob("*/*.png"))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).resize((INPUT, INPUT), Image.BILINEAR),
                                                 np.float32) / 255).permute(2, 0, 1) for f in files])
    x = (x - 0.5) / 0.25
    y = torch.tensor([sorted(COLOURS).index(f.parent.name) for f in files])
    model = create_model("resnet8", num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9, accuracy
    return model


def save_run_checkpoint(path: Path, model: torch.nn.Module, name: str, train: Path) -> Path:
    cfg = from_dict({"model": {"name": name}, "data": {"source": "folder", "train": str(train),
                                                      "image_size": INPUT}})
    torch.save({"model": model.state_dict(), "epoch": 1, "step_in_epoch": 0, "config": to_dict(cfg)}, path)
    return path


@pytest.mark.slow
def test_cam_of_a_trained_classifier_finds_the_object(tmp_path, capsys):
    train = tmp_path / "train"
    make_folder(train, 24, seed=0)
    model = train_classifier(train)
    ckpt = save_run_checkpoint(tmp_path / "ckpt_e0001_s000000.pt", model, "resnet8", train)
    photos = tmp_path / "photos"  # new images of the same classes, an ImageFolder without masks
    truth = make_folder(photos, 4, seed=1)
    assert cli_main(["masks", str(photos), "--classifier", str(ckpt), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "masks by cam: Grad-CAM of cit_fast resnet8 checkpoint" in out and "own class" in out
    assert "8 masks written" in out
    masks = tmp_path / "photos_masks"  # the ImageFolder's sibling tree
    ious = [mask_iou(np.asarray(Image.open(masks / f"{k}.png")) >= 128, m) for k, m in truth.items()]
    # the same architecture untrained: its map does not know where the object is
    untrained = cam_masker(load_classifier(str(save_run_checkpoint(
        tmp_path / "untrained.pt", create_model("resnet8", num_classes=2), "resnet8", train))), device="cpu")
    rng = np.random.default_rng(1)
    control = []
    for name, colour in COLOURS.items():
        for _ in range(4):
            img, m = scene(rng, colour)
            control.append(mask_iou(untrained(img, name) > 0, m))
    assert np.mean(ious) > 0.8 and min(ious) > 0.5, ious
    assert np.mean(ious) > np.mean(control) + 0.3, (ious, control)


def test_cam_explains_the_images_own_class_when_the_run_names_it(tmp_path):
    train = tmp_path / "train"
    make_folder(train, 2, seed=0)
    clf = load_classifier(str(save_run_checkpoint(tmp_path / "c.pt", create_model("resnet8", num_classes=2),
                                                   "resnet8", train)))
    assert clf.classes == ["blue", "red"] and clf.input_size == INPUT and clf.mean == (0.5, 0.5, 0.5)
    cam = ClassifierCam(clf, device="cpu")
    img, _ = scene(np.random.default_rng(0), COLOURS["red"])
    assert cam(img, "red")[1] == 1 and cam(img, "blue")[1] == 0
    top = cam(img, "not-a-class")[1]  # unknown folder name: the top-scoring class
    with torch.no_grad():
        x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]
        x = torch.nn.functional.interpolate(x, size=(INPUT, INPUT), mode="bilinear", antialias=True)
        assert top == int(clf.model((x - 0.5) / 0.25).argmax(1))


def test_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    clf = load_classifier(str(path))
    assert "resnet18 state dict" in clf.what and clf.classes is None and clf.short_side == 224
    assert clf.mean == (0.485, 0.456, 0.406)
    masker = cam_masker(clf, device="cpu")
    img, _ = scene(np.random.default_rng(0), COLOURS["blue"])
    img = np.asarray(Image.fromarray(img).resize((90, 60)))
    cam, cls = masker.cam(img)
    assert cam.shape == (60, 90) and 0 <= cam.min() and cam.max() <= 1 and 0 <= cls < 1000
    m = masker(img)
    assert m.shape == (60, 90) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
    with pytest.raises(CheckpointError, match="--arch resnet34 does not match the state dict .* a resnet18"):
        load_classifier(str(path), arch="resnet34")
    with pytest.raises(CheckpointError, match="one of resnet18, resnet34, resnet50"):
        load_classifier(str(path), arch="vgg16")


def test_torchvision_arch_is_read_from_the_keys():
    from cit_fast.eval.cam import _torchvision_arch

    for arch in ("resnet18", "resnet34", "resnet50"):
        keys = dict.fromkeys(getattr(torchvision.models, arch)().state_dict())
        assert _torchvision_arch(keys, Path("x")) == arch
    with pytest.raises(CheckpointError, match="ResNet-101/152"):
        _torchvision_arch(dict.fromkeys(torchvision.models.resnet101().state_dict()), Path("x"))


def test_wrong_kind_of_classifier_file_is_one_clear_error(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(CheckpointError, match="neither a torchvision ResNet state dict .* its keys start encoder"):
        load_classifier(str(other))
    double = tmp_path / "double.pt"
    cfg = from_dict({"model": {"name": "double_resnet18"}, "data": {"source": "folder", "train": str(tmp_path)}})
    torch.save({"model": {}, "epoch": 1, "step_in_epoch": 0, "config": to_dict(cfg)}, double)
    with pytest.raises(CheckpointError, match="a double model .*double_resnet18.*single-branch classifier"):
        load_classifier(str(double))
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier(str(tmp_path / "missing.pth"))
