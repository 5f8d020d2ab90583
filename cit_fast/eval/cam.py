"""``cit-fast masks --method cam``: the user's classifier as a class-activation map maker.

The classifier comes from a local file (``load_classifier``): a torchvision ResNet-18/34/50 state
dict (e.g. the ImageNet weights copied onto the machine; the architecture is read from the keys;
the top-scoring class is explained) or a cit_fast checkpoint of a single-branch model (through
``load_run``; the image's own class when the run's class folders name it). ``ClassifierCam`` turns
it into the map that ``data.masks.cam.CamMasker`` refines into a mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import is_deepspeed_checkpoint, read_weights, safe_load
from ..data.masks.cam import CamMasker
from ..data.sources.layout import detect_layout
from ..errors import CheckpointError, UsageError, UserError
from ..models.build import model_task
from ..models.cam import grad_cam
from ..models.registry import create_model
from ..models.weights import fit_state_dict, is_torchvision_resnet
from .run import load_run

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50")


@dataclass
class Classifier:
    """A single-branch model (``forward_features`` -> (B, F, h, w), ``forward_head``) and how it sees
    an image."""

    model: torch.nn.Module
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    input_size: int  # square side its training pipeline used; 0 = the shorter side is scaled to `short_side`
    short_side: int  # pixels, when input_size is 0 (torchvision weights: 224, aspect kept)
    classes: Optional[List[str]]  # class names in index order, when the file says them
    what: str  # one line for the log


def _torchvision_arch(state: Dict[str, torch.Tensor], path: Path) -> str:
    """resnet18/34/50 from a torchvision ResNet state dict's block names."""
    if "layer1.0.conv3.weight" in state:  # bottleneck blocks
        if "layer3.6.conv1.weight" in state:
            raise CheckpointError(f"--classifier {path}: a ResNet-101/152 state dict; supported: "
                                  f"{', '.join(TORCHVISION_ARCHS)}")
        return "resnet50"
    return "resnet34" if "layer3.2.conv1.weight" in state else "resnet18"


def load_classifier(path: str, arch: str = "", device: str = "") -> Classifier:
    """A ``--classifier`` file -> Classifier; one CheckpointError line for a missing file or a file of
    the wrong kind. A cit_fast checkpoint goes through ``eval.run.load_run`` (the one door from a
    run back to its model); a torchvision state dict through ``models.weights`` (its key names)."""

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"--classifier {path}: not found (a torchvision ResNet state dict, or a cit_fast "
                              f"checkpoint of a single-branch model)")
    if arch and arch not in TORCHVISION_ARCHS:
        raise CheckpointError(f"--arch {arch!r}: a --classifier state dict is one of {', '.join(TORCHVISION_ARCHS)}")
    if p.is_dir() or is_deepspeed_checkpoint(p):
        return _from_run(p, device)
    obj = safe_load(p, what="--classifier")
    if isinstance(obj, dict) and "config" in obj and "model" in obj:
        _check_single(obj["config"], p)  # before building a model it cannot use
        del obj
        return _from_run(p, device)
    state = read_weights(p, what="--classifier")  # unwraps 'state_dict' / 'model', drops 'module.'
    if not is_torchvision_resnet(state):
        some = ", ".join(list(state)[:3])
        raise CheckpointError(f"--classifier {path}: neither a torchvision ResNet state dict (conv1.*, layer1.*, "
                              f"fc.*) nor a cit_fast checkpoint (model + config); its keys start {some}")
    if "fc.weight" not in state:
        raise CheckpointError(f"--classifier {path}: no 'fc.weight'; the class activation map needs the "
                              f"classifier head")
    found = _torchvision_arch(state, p)
    if arch and arch != found:
        raise CheckpointError(f"--classifier {path}: --arch {arch} does not match the state dict (its keys are "
                              f"those of a {found}); leave --arch out to use what the file holds")

    model = create_model(found, num_classes=int(state["fc.weight"].shape[0]))
    state, _ = fit_state_dict(state, model, f"--classifier {path}")
    model.load_state_dict(state)
    return Classifier(model.eval(), IMAGENET_MEAN, IMAGENET_STD, 0, 224, None,
                      f"{found} state dict {p.name}, {state['fc.weight'].shape[0]} classes, top class per image")


def _run_classes(cfg) -> Optional[List[str]]:
    """The class names of a folder-source run without reading its images (load_folder's order:
    the sorted class folders of data.train); None for other sources or when the folder is gone."""

    if cfg.data.source != "folder" or not cfg.data.train:
        return None
    try:
        return [d.name for d in detect_layout(cfg.data.train).class_dirs()] or None
    except UserError:
        return None


def _check_single(config: dict, p: Path) -> None:

    model = config.get("model", {}) if isinstance(config, dict) else {}
    task = model_task(str(model.get("name", "")), task=str(model.get("task", "auto")))
    if task != "single":
        raise CheckpointError(f"--classifier {p}: a {task} model ({model.get('name')}); --method cam needs a "
                              f"single-branch classifier (e.g. a resnet18 run, or a torchvision state dict)")


def _from_run(p: Path, device: str) -> Classifier:
    """A cit_fast checkpoint (file, DeepSpeed directory or run directory) of a single-branch model."""

    run = load_run(p, device=device or None, datasets=False)
    _check_single({"model": {"name": run.cfg.model.name, "task": run.task}}, p)
    classes = _run_classes(run.cfg)
    d = run.cfg.data
    return Classifier(run.model, tuple(d.mean), tuple(d.std), int(d.image_size), 0, classes,
                      f"cit_fast {run.cfg.model.name} checkpoint {run.checkpoint.name}, "
                      + ("the image's own class where the run knows it" if classes else "top class per image"))


class ClassifierCam:
    """A single-branch classifier as a map maker: uint8 (H, W, 3) image [+ its class name] ->
    (float (H, W) Grad-CAM in [0, 1] at the image's size, the class explained: the image's own when
    the classifier knows the name, else its top-scoring class)."""

    def __init__(self, classifier: Classifier, device: str = ""):
        self.clf = classifier
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = classifier.model.to(self.device).eval()
        self._mean = torch.tensor(classifier.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(classifier.std, device=self.device).view(1, 3, 1, 1)

    def _input(self, img: np.ndarray) -> torch.Tensor:
        """(1, 3, h, w) normalised, at the size the classifier expects."""
        x = torch.from_numpy(np.array(img, np.uint8)).to(self.device).permute(2, 0, 1)[None].float() / 255
        h, w = img.shape[:2]
        if self.clf.input_size:
            size = (self.clf.input_size, self.clf.input_size)
        elif self.clf.short_side:
            s = self.clf.short_side / min(h, w)
            size = (max(32, round(h * s)), max(32, round(w * s)))
        else:
            size = (h, w)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return (x - self._mean) / self._std

    def __call__(self, img: np.ndarray, class_name: Optional[str] = None) -> Tuple[np.ndarray, int]:
        x = self._input(img)
        classes = self.clf.classes
        if classes and class_name in classes:
            cls = classes.index(class_name)
        else:
            with torch.no_grad():
                cls = int(self.model(x).argmax(1)[0])
        cam = grad_cam(self.model, x, torch.tensor([cls], device=self.device))  # (1, h, w) in [0, 1]
        cam = F.interpolate(cam[None], size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        return cam.clamp(0, 1).cpu().numpy(), cls


def cam_masker(classifier: Classifier, device: str = "") -> CamMasker:
    """The mask maker of ``--method cam`` over a loaded classifier."""
    return CamMasker(ClassifierCam(classifier, device), f"Grad-CAM of {classifier.what}")


def make_cam_masker(classifier: str, arch: str = "", device: str = "") -> CamMasker:
    """``--method cam --classifier FILE [--arch resnet18]``."""

    if not classifier:
        raise UsageError("--method cam needs --classifier FILE (a torchvision ResNet state dict, or a cit_fast "
                         "checkpoint of a single-branch model)")
    return cam_masker(load_classifier(classifier, arch, device), device)
