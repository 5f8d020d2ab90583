"""Where a folder dataset keeps its images and masks: the one place both layouts are defined.

Two layouts of class folders are read (``folder`` source) and written (``cit-fast masks``):

- ``cit``: ``ROOT/images/<class>/<name>.<ext>`` with masks at ``ROOT/masks/<class>/<name>.png``.
- ``imagefolder`` (torchvision's ``ImageFolder``): ``ROOT/<class>/<name>.<ext>``; masks live in the
  sibling tree ``ROOT_masks/<class>/<name>.png`` (``data/train`` -> ``data/train_masks``), so the
  image tree stays exactly as the user (or another tool) keeps it.

A third, ``flat`` (``ROOT/<name>.<ext>``, no class folders: ImageNet's validation split as
distributed, labelled by a file, ``imagenet_val.py``), keeps its masks in ``ROOT_masks/<name>.png``; it
is only detected where asked for (``detect_layout(..., flat=True)``: the masks command), so a class-
folder source never mistakes a flat folder for one class.

A mask has its image's stem and the ``.png`` extension; 255 = object (content), 0 = context.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .records import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LAYOUTS = ("cit", "imagefolder", "flat")


@dataclass(frozen=True)
class FolderLayout:
    root: Path
    kind: str  # one of LAYOUTS
    images_root: Path  # holds one directory per class
    masks_root: Path  # mirrors images_root: <class>/<stem>.png

    def mask_path(self, image: Path) -> Path:
        """The mask file of an image under images_root."""
        image = Path(image)
        if self.kind == "flat":
            return self.masks_root / f"{image.stem}.png"
        return self.masks_root / image.parent.name / f"{image.stem}.png"

    def class_dirs(self) -> List[Path]:
        if self.kind == "flat":
            return [self.images_root]
        return sorted(d for d in self.images_root.iterdir() if d.is_dir() and not d.name.startswith("."))


def sibling_masks_root(root: Path) -> Path:
    """``data/train`` -> ``data/train_masks``."""
    root = Path(root)
    return root.parent / f"{root.resolve().name}_masks"


def _has_images(d: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir() if f.is_file())


def detect_layout(root: str | Path, masks_root: Optional[str | Path] = None, flat: bool = False) -> FolderLayout:
    """The layout of a folder dataset; a DataError naming the directory when it is none of them.

    masks_root: where the masks are (or go), overriding the layout's default; flat: a folder of
    images without class folders is the ``flat`` layout (otherwise an error).
    """
    r = Path(root)
    if not r.exists():
        raise DataError(f"folder {root}: not found")
    if not r.is_dir():
        raise DataError(f"folder {root}: not a directory")
    if (r / "images").is_dir():
        return FolderLayout(r, "cit", r / "images", Path(masks_root) if masks_root else r / "masks")
    subdirs = [d for d in r.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subdirs and any(_has_images(d) for d in subdirs):
        return FolderLayout(r, "imagefolder", r, Path(masks_root) if masks_root else sibling_masks_root(r))
    if flat and not subdirs and _has_images(r):
        return FolderLayout(r, "flat", r, Path(masks_root) if masks_root else sibling_masks_root(r))
    raise DataError(f"folder {root}: expected class directories of images, either {root}/<class>/<name>.jpg "
                    f"(torchvision ImageFolder) or {root}/images/<class>/<name>.jpg")
