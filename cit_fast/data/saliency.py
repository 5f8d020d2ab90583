"""Content/context separation, the paper's function g: an object mask for every image that lacks one.

``cit-fast masks SRC OUT`` walks SRC/images/<class>/<name>.<ext> and writes OUT/masks/<class>/<name>.png
(255 = object/content, 0 = context), the layout ``load_folder`` reads. Two kinds of mask makers:

- ``SaliencyMasker`` (the default, no weights): a static saliency map -- OpenCV's spectral residual
  (Hou & Zhang, CVPR 2007) or fine-grained saliency (Montabone & Soto, 2010) from
  ``opencv-contrib-python-headless``, or the same spectral residual in numpy when OpenCV is absent --
  smoothed, thresholded with Otsu's method and cleaned: opening and closing, the largest connected
  components kept, holes filled.
- ``TorchMasker``: a segmentation/saliency model from a local checkpoint, never downloaded: a
  TorchScript file, or a state dict for a torchvision segmentation architecture.

The run is resumable (existing masks are skipped), every mask is written atomically, unreadable
images are named at the end, and the report counts masks that came out empty or full (saliency
found nothing to separate: worth a look).
"""
from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter

from ..utils import atomic_path
from .records import DataError, decode_image
from .sources import IMAGE_EXTS

_UMASK = os.umask(0o022)
os.umask(_UMASK)
WORK_SIDE = 256  # pixels: the longer side at which saliency is computed and cleaned
SALIENCY_METHODS = ("spectral", "fine_grained")
SEGMENTATION_ARCHS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                      "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large")

Masker = Callable[[np.ndarray], np.ndarray]  # uint8 (H, W, 3) RGB -> uint8 (H, W) in {0, 255}


def _cv2():
    try:
        import cv2

        cv2.saliency  # noqa: B018 -- the contrib module
        return cv2
    except (ImportError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# numpy building blocks (the fallback when OpenCV is absent)


def _box3(x: np.ndarray) -> np.ndarray:
    """3x3 mean filter with edge replication."""
    p = np.pad(x, 1, mode="edge")
    h, w = x.shape
    return sum(p[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a float (h, w) array, edges replicated."""
    r = max(1, int(3 * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / max(sigma, 1e-6)) ** 2)
    k /= k.sum()
    p = np.pad(x, r, mode="edge")
    p = sum(k[i] * p[i:i + x.shape[0]] for i in range(2 * r + 1))  # rows
    return sum(k[i] * p[:, i:i + x.shape[1]] for i in range(2 * r + 1))  # columns


def spectral_residual(gray: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency (Hou & Zhang 2007) of a float (h, w) image, as float (h, w) in [0, 1].

    The log amplitude spectrum minus its local mean is the 'unexpected' part of the image; back in
    the spatial domain (with the original phase) it lights up the salient regions.
    """
    f = np.fft.fft2(gray)
    log_amp = np.log(np.abs(f) + 1e-8)
    phase = np.angle(f)
    sal = np.abs(np.fft.ifft2(np.exp(log_amp - _box3(log_amp) + 1j * phase))) ** 2
    sal = gaussian_blur(sal, 2.5)
    lo, hi = float(sal.min()), float(sal.max())
    return (sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)


def otsu_threshold(x: np.ndarray) -> int:
    """Otsu's threshold of a uint8 array: the level that maximises the between-class variance."""
    hist = np.bincount(x.reshape(-1), minlength=256).astype(np.float64)
    p = hist / max(hist.sum(), 1)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0))
    between[~np.isfinite(between)] = -1
    return int(np.argmax(between))


def _label(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """8-connected components of a bool (h, w) mask: labels (h, w) (0 = background), areas per label."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    areas = [0]
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        lab = len(areas)
        labels[y0, x0] = lab
        q, n = deque([(y0, x0)]), 0
        while q:
            y, x = q.popleft()
            n += 1
            for yy in (y - 1, y, y + 1):
                for xx in (x - 1, x, x + 1):
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                        labels[yy, xx] = lab
                        q.append((yy, xx))
        areas.append(n)
    return labels, np.asarray(areas)


# ---------------------------------------------------------------------------------------------
# the built-in detector


def _odd(x: float) -> int:
    k = max(3, int(round(x)))
    return k if k % 2 else k + 1


def clean_mask(binary: np.ndarray, keep_ratio: float = 0.3, use_cv2: bool = True, morph: float = 0.03) -> np.ndarray:
    """bool (h, w) -> bool: opening and closing, components of >= keep_ratio x the largest, holes filled.

    morph: the structuring element's side as a fraction of the longer image side.
    """
    cv2 = _cv2() if use_cv2 else None
    h, w = binary.shape
    k = _odd(morph * max(h, w))
    m = binary.astype(np.uint8) * 255
    if cv2 is not None:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
        n, labels, stats, _ = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8), connectivity=8)
        areas = stats[:, cv2.CC_STAT_AREA].copy()
    else:
        im = Image.fromarray(m)
        im = im.filter(ImageFilter.MinFilter(k)).filter(ImageFilter.MaxFilter(k))  # opening
        im = im.filter(ImageFilter.MaxFilter(k)).filter(ImageFilter.MinFilter(k))  # closing
        m = np.asarray(im)
        labels, areas = _label(m > 0)
    areas[0] = 0
    if areas.max(initial=0) == 0:
        return np.zeros((h, w), bool)
    keep = areas >= keep_ratio * areas.max()
    keep[0] = False
    obj = keep[labels]
    # holes: background not connected to the border
    if cv2 is not None:
        bg = (~obj).astype(np.uint8)
        n, lab, _, _ = cv2.connectedComponentsWithStats(bg, connectivity=4)
    else:
        lab, _ = _label(~obj)  # 8-connectivity for the background is close enough for the fallback
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    holes = (~obj) & ~np.isin(lab, border)
    return obj | holes


@dataclass
class SaliencyMasker:
    """A mask from a static saliency map, needing no weights (see the module doc).

    method: "spectral" or "fine_grained" (OpenCV); without OpenCV only "spectral", in numpy.
    """

    method: str = "spectral"
    use_cv2: bool = True  # False: the numpy implementation even when OpenCV is installed
    keep_ratio: float = 0.3  # keep components at least this fraction of the largest
    blur: float = 0.01  # Gaussian smoothing of the saliency map, sigma as a fraction of the longer side
    morph: float = 0.02  # opening/closing element, as a fraction of the longer side

    def __post_init__(self) -> None:
        if self.method not in SALIENCY_METHODS:
            raise ValueError(f"saliency method must be one of {', '.join(SALIENCY_METHODS)}, got {self.method!r}")
        self._cv2 = _cv2() if self.use_cv2 else None
        if self.method == "fine_grained" and self._cv2 is None:
            raise ValueError("saliency method 'fine_grained' needs OpenCV's contrib modules: "
                             "pip install opencv-contrib-python-headless (or use --method spectral)")

    @property
    def backend(self) -> str:
        return "opencv" if self._cv2 is not None else "numpy"

    def saliency(self, img: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (h, w) in [0, 1] at the working size (longer side <= WORK_SIDE)."""
        h, w = img.shape[:2]
        scale = min(1.0, WORK_SIDE / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        work = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR)) if scale < 1 else img
        cv2 = self._cv2
        if cv2 is not None:
            bgr = np.ascontiguousarray(work[..., ::-1])
            det = (cv2.saliency.StaticSaliencySpectralResidual_create() if self.method == "spectral"
                   else cv2.saliency.StaticSaliencyFineGrained_create())
            ok, sal = det.computeSaliency(bgr)
            if not ok:
                return np.zeros(work.shape[:2], np.float32)
            sal = sal.astype(np.float32)
            sigma = self.blur * max(sal.shape)
            sal = cv2.GaussianBlur(sal, (_odd(6 * sigma),) * 2, sigma)
        else:  # spectral residual at 64 px on the longer side, as OpenCV does
            grey = Image.fromarray(work).convert("L")
            s = 64 / max(grey.size)
            small = grey.resize((max(1, round(grey.size[0] * s)), max(1, round(grey.size[1] * s))), Image.BILINEAR)
            sal = spectral_residual(np.asarray(small, np.float64) / 255.0)
            sal = np.asarray(Image.fromarray(sal.astype(np.float32)).resize(work.shape[1::-1], Image.BILINEAR))
            sal = gaussian_blur(sal, self.blur * max(sal.shape))
        lo, hi = float(sal.min()), float(sal.max())
        return ((sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)).astype(np.float32)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        sal = self.saliency(img)
        s8 = np.round(sal * 255).astype(np.uint8)
        if s8.max() == s8.min():
            binary = np.zeros(s8.shape, bool)
        else:
            binary = s8 > otsu_threshold(s8)
        m = clean_mask(binary, self.keep_ratio, use_cv2=self._cv2 is not None, morph=self.morph)
        return _upsample_mask(m, img.shape[:2])


def _upsample_mask(m: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """bool (h, w) -> uint8 (H, W) in {0, 255}, smooth edges thresholded at half."""
    im = Image.fromarray(m.astype(np.uint8) * 255)
    if im.size != (hw[1], hw[0]):
        im = im.resize((hw[1], hw[0]), Image.BILINEAR)
    return np.where(np.asarray(im) >= 128, 255, 0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# a model from a local checkpoint


class TorchMasker:
    """Object masks from a local segmentation/saliency model (never downloaded).

    checkpoint: a TorchScript file, or a state dict (optionally under "state_dict"/"model") for
    ``arch``, one of SEGMENTATION_ARCHS built without pretrained weights. The model sees the image
    resized to input_size x input_size with ImageNet normalisation. A one-channel output is a
    saliency/foreground map (logits, or probabilities in [0, 1]) thresholded at ``threshold``;
    several channels are classes, and every pixel whose argmax is not ``background`` is object.
    """

    def __init__(self, checkpoint: str, arch: str = "", num_classes: int = 0, input_size: int = 320,
                 threshold: float = 0.5, background: int = 0, device: str = "", clean: bool = True):
        import torch

        p = Path(checkpoint)
        if not p.is_file():
            raise DataError(f"mask model {checkpoint}: file not found (models are only loaded from local files)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.input_size, self.threshold, self.background, self.clean = input_size, threshold, background, clean
        self.model = self._load(p, arch, num_classes).to(self.device).eval()

    @staticmethod
    def _load(p: Path, arch: str, num_classes: int):
        import torch

        try:
            return torch.jit.load(str(p), map_location="cpu")
        except Exception as jit_error:  # not TorchScript: a state dict for a known architecture
            if not arch:
                raise DataError(f"mask model {p}: not a TorchScript file ({type(jit_error).__name__}); for a "
                                f"state dict give its architecture with --arch ({', '.join(SEGMENTATION_ARCHS)})") from None
        if arch not in SEGMENTATION_ARCHS:
            raise DataError(f"mask model {p}: unknown --arch {arch!r}; known: {', '.join(SEGMENTATION_ARCHS)}")
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise DataError(f"mask model {p}: cannot load a state dict ({type(e).__name__}: {e})") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise DataError(f"mask model {p}: expected a state dict, got {type(state).__name__}")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if not num_classes:  # from the final classifier layer
            head = "classifier.high_classifier.weight" if arch.startswith("lraspp") else "classifier.4.weight"
            if head not in state:
                raise DataError(f"mask model {p}: no {head!r} in the state dict to infer the number of "
                                f"classes from; give --num-classes (or check --arch {arch})")
            num_classes = int(state[head].shape[0])
        import torchvision.models.segmentation as seg

        kw = dict(weights=None, weights_backbone=None, num_classes=num_classes)
        if "aux_classifier." in "".join(state):
            kw["aux_loss"] = True
        model = getattr(seg, arch)(**kw)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise DataError(f"mask model {p}: state dict does not fit {arch} with {num_classes} classes: "
                            f"{str(e).splitlines()[0]}") from None
        return model

    def __call__(self, img: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        h, w = img.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                          align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406], device=self.device)[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225], device=self.device)[:, None, None]
        with torch.inference_mode():
            out = self.model((x - mean) / std)
        if isinstance(out, dict):
            out = out["out"]
        elif isinstance(out, (tuple, list)):
            out = out[0]
        out = F.interpolate(out.float(), size=(h, w), mode="bilinear", align_corners=False)[0]  # (C, H, W)
        if out.shape[0] == 1:
            prob = out[0] if (out.min() >= 0 and out.max() <= 1) else torch.sigmoid(out[0])
            m = (prob > self.threshold).cpu().numpy()
        else:
            m = (out.argmax(0) != self.background).cpu().numpy()
        if self.clean:
            m = clean_mask(m)
        return m.astype(np.uint8) * 255


# ---------------------------------------------------------------------------------------------
# the command


@dataclass
class MaskReport:
    written: int = 0
    skipped: int = 0  # already had a mask
    empty: List[str] = field(default_factory=list)  # masks with no object pixel
    full: List[str] = field(default_factory=list)  # masks with no context pixel
    failed: Dict[str, str] = field(default_factory=dict)  # image -> why it could not be read

    def summary(self) -> str:
        def some(xs):
            return f" (e.g. {', '.join(xs[:3])})" if xs else ""

        return (f"{self.written} masks written, {self.skipped} already present; "
                f"{len(self.empty)} empty{some(self.empty)}, {len(self.full)} full{some(self.full)}; "
                f"{len(self.failed)} images unreadable")


def find_images(src: Path) -> List[Tuple[Path, str]]:
    """(image path, 'class/name') for every image under src/images/<class>/."""
    root = src / "images"
    if not root.is_dir():
        raise DataError(f"masks: {src} has no 'images/<class>/' directory")
    found: Dict[str, Path] = {}
    for f in sorted(root.glob("*/*")):
        if not f.is_file() or f.suffix.lower() not in IMAGE_EXTS:
            continue
        key = f"{f.parent.name}/{f.stem}"
        if key in found:
            raise DataError(f"masks: {found[key]} and {f} would share the mask {key}.png; rename one")
        found[key] = f
    if not found:
        raise DataError(f"masks: no images under {root} (extensions {', '.join(IMAGE_EXTS)})")
    return [(p, k) for k, p in found.items()]


def generate_masks(src: str, out: str, masker: Masker, *, overwrite: bool = False,
                   progress: Optional[bool] = None) -> MaskReport:
    """Write out/masks/<class>/<name>.png for every image under src that lacks one.

    Raises a DataError naming the unreadable images after doing all the others (so a rerun only
    has those left).
    """
    from tqdm import tqdm

    images = find_images(Path(src))
    report = MaskReport()
    masks_root = Path(out) / "masks"
    todo = []
    for img_path, key in images:
        target = masks_root / f"{key}.png"
        if target.is_file() and not overwrite:
            report.skipped += 1
        else:
            todo.append((img_path, target))
    show = sys.stderr.isatty() if progress is None else progress
    for img_path, target in tqdm(todo, desc="masks", unit="img", disable=not show):
        try:
            img = decode_image(str(img_path))
        except DataError as e:
            report.failed[str(img_path)] = str(e)
            continue
        m = masker(img)
        if m.shape != img.shape[:2] or m.dtype != np.uint8:
            raise DataError(f"masks: the mask maker returned {m.dtype} {m.shape} for {img_path} "
                            f"({img.shape[1]}x{img.shape[0]}); expected uint8 of the image's size")
        with atomic_path(target) as tmp:
            Image.fromarray(m).save(tmp, format="PNG")
            tmp.chmod(0o666 & ~_UMASK)  # mkstemp makes it private; a mask is as readable as its image
        report.written += 1
        if not m.any():
            report.empty.append(str(target))
        elif m.all():
            report.full.append(str(target))
    if report.failed:
        lines = "; ".join(f"{why}" for why in list(report.failed.values())[:5])
        raise DataError(f"masks: {len(report.failed)} image(s) could not be read, the rest are done "
                        f"({report.summary()}): {lines}")
    return report


def make_masker(method: str = "spectral", model: str = "", arch: str = "", num_classes: int = 0,
                input_size: int = 320, threshold: float = 0.5, device: str = "") -> Masker:
    if model:
        return TorchMasker(model, arch, num_classes, input_size, threshold, device=device)
    return SaliencyMasker(method)
