"""What a mask job writes and reports: where a folder dataset's masks go, the images to mask, the
report ``cit-fast masks`` prints, and montage thumbnails. The mask makers are in saliency.py and cam.py;
the job that runs them (workers, ranks, restarts) in job.py."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from ...errors import DataError, UsageError
from ..sources.layout import IMAGE_EXTS, FolderLayout, detect_layout
from .quality import MaskQuality

MONTAGE_NAME = "masks_montage.png"
# the process umask (read once: os.umask can only be read by setting it): a mask written through a
# private temporary file is made as readable as its image
UMASK = os.umask(0o022)
os.umask(UMASK)


MONTAGE_TILES = 24  # images shown in the montage, spread over the classes


@dataclass
class MaskReport:
    written: int = 0
    skipped: int = 0  # already had a mask
    empty: List[str] = field(default_factory=list)  # masks with no object pixel
    full: List[str] = field(default_factory=list)  # masks with no context pixel
    failed: Dict[str, str] = field(default_factory=dict)  # image -> why it could not be read
    coverages: List[float] = field(default_factory=list)  # object share of every mask written
    masks_root: Optional[Path] = None
    montage: Optional[Path] = None  # the montage PNG, when masks were written

    def quality(self) -> MaskQuality:
        return MaskQuality.of(self.coverages)

    def summary(self) -> str:
        def some(xs):
            return f" (e.g. {', '.join(xs[:3])})" if xs else ""

        where = f" in {self.masks_root}" if self.masks_root is not None else ""
        return (f"{self.written} masks written{where}, {self.skipped} already present; "
                f"{len(self.empty)} empty{some(self.empty)}, {len(self.full)} full{some(self.full)}; "
                f"{len(self.failed)} images unreadable")

    def lines(self) -> List[str]:
        """What ``cit-fast masks`` prints: the summary, the coverage quality, a warning if degenerate,
        the montage."""
        out = [self.summary(), self.quality().format()]
        warn = self.quality().warning()
        if warn:
            out.append(warn)
        if self.montage is not None:
            out.append(f"montage of images with their mask outlines: {self.montage}")
        return out


def mask_layout(src: str | Path, out: str | Path | None = None) -> FolderLayout:
    """Where the masks of the folder dataset ``src`` go (``layout.py``).

    Without ``out``: the layout's own masks tree (``SRC/masks/`` for ``SRC/images/``; the sibling
    ``SRC_masks/`` for an ImageFolder ``SRC/<class>/``). With ``out``: ``OUT/masks/<class>/`` for the
    cit layout (OUT is a dataset root, often SRC itself) and ``OUT/<class>/`` for ImageFolder (OUT
    is the masks tree itself; read it with the folder source's masks root).
    """
    lay = detect_layout(src, flat=True)  # a flat validation folder: masks in SRC_masks/<name>.png
    if out is None:
        return lay
    masks_root = Path(out) / "masks" if lay.kind == "cit" else Path(out)
    if lay.kind in ("imagefolder", "flat"):
        inside = masks_root.resolve()
        if inside == lay.images_root.resolve() or lay.images_root.resolve() in inside.parents:
            raise UsageError(f"masks: OUT {out} is inside the ImageFolder {src}, where it would read as a class "
                             f"folder; leave OUT out (masks go to {detect_layout(src).masks_root}) or name a "
                             f"directory outside it")
    return FolderLayout(lay.root, lay.kind, lay.images_root, masks_root)


def montage_path(layout: FolderLayout) -> Path:
    """OUT/masks_montage.png: beside masks/ for the cit layout, at the top of the masks tree for ImageFolder."""
    return (layout.masks_root.parent if layout.kind == "cit" else layout.masks_root) / MONTAGE_NAME


def find_images(layout: FolderLayout) -> List[Tuple[Path, str]]:
    """(image path, 'class/stem') for every image in the layout's class folders."""
    found: Dict[str, Path] = {}
    for d in layout.class_dirs():
        for f in sorted(d.iterdir()):
            if not f.is_file() or f.suffix.lower() not in IMAGE_EXTS:
                continue
            key = f"{d.name}/{f.stem}"
            if key in found:
                raise DataError(f"masks: {found[key]} and {f} would share the mask {key}.png; rename one")
            found[key] = f
    if not found:
        raise DataError(f"masks: no images in the class folders of {layout.images_root} "
                        f"(extensions {', '.join(IMAGE_EXTS)})")
    return [(p, k) for k, p in found.items()]


def thumbnail(x: np.ndarray, side: int = 320) -> np.ndarray:
    """A montage-sized copy (so the montage holds at most MONTAGE_TILES small images)."""
    h, w = x.shape[:2]
    if max(h, w) <= side:
        return x
    s = side / max(h, w)
    return np.asarray(Image.fromarray(x).resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST))


