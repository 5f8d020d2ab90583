"""How good a set of object masks looks without ground truth, and how good it is with it.

- ``MaskQuality``: the coverage (object share of the image) of every mask a run wrote, as
  quantiles and the shares of nearly empty (< 5% of the image) and nearly full (> 95%) masks, with
  a one-line warning when the set is degenerate. A saliency method that only finds small bright
  details (eyes, a cup's rim, lamps) reads here as a median coverage of a few percent.
- ``write_montage``: images with their mask outlines (context dimmed), a grid written atomically
  as PNG, to look at before training on the masks.
- ``mask_iou``: intersection over union against exact masks (bench/masks.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ...utils import atomic_path

NEARLY_EMPTY = 0.05  # coverage below this: the mask holds almost nothing of the image
NEARLY_FULL = 0.95  # coverage above this: almost no context is left
QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)  # min, 10%, median, 90%, max


def coverage(mask: np.ndarray) -> float:
    """Object share of a uint8 (H, W) mask (pixels >= 128; bool masks as they are)."""
    m = mask if mask.dtype == bool else mask >= 128
    return float(m.mean()) if m.size else 0.0


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two masks (bool, or uint8 thresholded at 128); 1.0 when both are empty."""
    a = pred if pred.dtype == bool else pred >= 128
    b = truth if truth.dtype == bool else truth >= 128
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass(frozen=True)
class MaskQuality:
    count: int
    mean: float
    quantiles: Tuple[float, ...]  # coverage at QUANTILES
    nearly_empty: float  # share of masks with coverage < NEARLY_EMPTY
    nearly_full: float  # share of masks with coverage > NEARLY_FULL

    @classmethod
    def of(cls, coverages: Iterable[float]) -> "MaskQuality":
        c = np.asarray(list(coverages), np.float64)
        if c.size == 0:
            return cls(0, float("nan"), tuple(float("nan") for _ in QUANTILES), 0.0, 0.0)
        return cls(int(c.size), float(c.mean()), tuple(float(q) for q in np.quantile(c, QUANTILES)),
                   float((c < NEARLY_EMPTY).mean()), float((c > NEARLY_FULL).mean()))

    @property
    def median(self) -> float:
        return self.quantiles[QUANTILES.index(0.5)]

    def format(self) -> str:
        if not self.count:
            return "coverage: no new masks"
        q = " / ".join(f"{name} {100 * v:.1f}%" for name, v in zip(("min", "10%", "median", "90%", "max"),
                                                                      self.quantiles))
        return (f"coverage of the image over {self.count} masks: mean {100 * self.mean:.1f}%; {q}; "
                f"{100 * self.nearly_empty:.0f}% of masks under {100 * NEARLY_EMPTY:.0f}%, "
                f"{100 * self.nearly_full:.0f}% over {100 * NEARLY_FULL:.0f}%")

    def warning(self) -> Optional[str]:
        """One line when the coverage is degenerate (None when it looks usable)."""
        if not self.count:
            return None
        look = "look at the montage; try another --method (grabcut, cam with your classifier) or a --model"
        if self.median < NEARLY_EMPTY:
            return (f"warning: the masks are nearly empty (median coverage {100 * self.median:.1f}% of the image): "
                    f"the method marks small details, not the object; {look}")
        if self.median > NEARLY_FULL:
            return (f"warning: the masks are nearly full (median coverage {100 * self.median:.1f}% of the image): "
                    f"almost no context is left to intervene on; {look}")
        bad = self.nearly_empty + self.nearly_full
        if bad > 0.5:
            return (f"warning: {100 * bad:.0f}% of the masks are degenerate (under {100 * NEARLY_EMPTY:.0f}% or over "
                    f"{100 * NEARLY_FULL:.0f}% of the image); {look}")
        return None


def spread(keys: Sequence[str], n: int) -> List[int]:
    """Indices of up to n keys ('class/name'), taken round-robin over the classes in order."""
    by_class: dict = {}
    for i, k in enumerate(keys):
        by_class.setdefault(k.split("/", 1)[0], []).append(i)
    queues = list(by_class.values())
    picked: List[int] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return sorted(picked)


def _tile(img: np.ndarray, mask: np.ndarray, side: int) -> Image.Image:
    """One montage tile: the image fitted into side x side, context dimmed, the mask outline drawn."""
    h, w = img.shape[:2]
    s = side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    im = np.asarray(Image.fromarray(img).convert("RGB").resize(size, Image.BILINEAR), np.float32)
    m = Image.fromarray(np.where(mask >= 128, 255, 0).astype(np.uint8)).resize(size, Image.NEAREST)
    inner = np.asarray(m) > 0
    eroded = np.asarray(m.filter(ImageFilter.MinFilter(3))) > 0
    dilated = np.asarray(m.filter(ImageFilter.MaxFilter(3))) > 0
    edge = dilated & ~eroded
    out = np.where(inner[..., None], im, im * 0.4)
    out[edge] = (255, 225, 0)
    tile = Image.new("RGB", (side, side), (40, 40, 40))
    tile.paste(Image.fromarray(out.astype(np.uint8)), ((side - size[0]) // 2, (side - size[1]) // 2))
    return tile


def write_montage(items: Sequence[Tuple[np.ndarray, np.ndarray, str]], path: Path, side: int = 160,
                  cols: int = 6) -> Optional[Path]:
    """A grid of (image uint8 (H, W, 3), mask uint8 (H, W), caption) tiles with mask outlines, as PNG
    at ``path`` (atomically). Returns the path, or None when there is nothing to show."""
    if not items:
        return None
    cols = min(cols, len(items))
    rows = -(-len(items) // cols)
    caption_h = 14
    sheet = Image.new("RGB", (cols * side, rows * (side + caption_h)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for i, (img, mask, caption) in enumerate(items):
        x, y = (i % cols) * side, (i // cols) * (side + caption_h)
        sheet.paste(_tile(img, mask, side), (x, y))
        draw.text((x + 3, y + side + 1), caption[: side // 6], fill=(230, 230, 230))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return path
