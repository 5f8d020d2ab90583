"""The ``folder`` source: images/<class>/<name>.<ext> with masks/<class>/<name>.png, or torchvision's
<class>/<name>.<ext> with a sibling masks tree (layout.py)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from .files import check_pairs
from .imagenet_val import is_flat_image_folder, load_imagenet_val
from .layout import IMAGE_EXTS, detect_layout
from .records import DataError, SampleSet
from .registry import Source


def load_folder(root: str, classes: Optional[Sequence[str]] = None, verify: str = "header",
                masks_root: str = "") -> SampleSet:
    """A folder dataset in either layout (layout.py): images/<class>/ or torchvision's <class>/.

    Masks are optional as a whole (a set without masks can train plan ``none``; the trainer says how
    to get masks otherwise), but once the masks tree exists, every image needs its mask.
    """
    lay = detect_layout(root, masks_root or None)
    found = [d.name for d in lay.class_dirs()]
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"folder {root}: class folder(s) {unknown} are not among the training classes "
                            f"({', '.join(list(classes)[:10])})")
    if not classes:
        raise DataError(f"folder {root}: no class folders under {lay.images_root}")
    has_masks = lay.masks_root.is_dir()
    images: List[str] = []
    masks: List[Optional[str]] = []
    labels: List[int] = []
    for ci, name in enumerate(classes):
        d = lay.images_root / name
        files = sorted(f for f in d.glob("*") if f.suffix.lower() in IMAGE_EXTS) if d.is_dir() else []
        if not files and name in found:
            raise DataError(f"folder {root}: class {name!r} is empty (no images in {d})")
        for f in files:
            images.append(str(f))
            if has_masks:
                m = lay.mask_path(f)
                if not m.is_file():
                    raise DataError(f"mask {m}: file not found (every image needs a mask with the same stem "
                                    f"once {lay.masks_root} exists: {f}; `cit-fast masks {root}` writes the "
                                    f"missing ones)")
                masks.append(str(m))
            labels.append(ci)
    if verify != "none":
        check_pairs(images, masks if has_masks else [None] * len(images), verify)
    return SampleSet(images, masks if has_masks else None, np.asarray(labels, np.int64), list(classes),
                     name=f"folder {root}")


def _load(d, path: str, split: str, classes: Optional[Sequence[str]]) -> SampleSet:
    """Class folders, or a flat folder of ImageNet validation images with its label file."""
    labels = getattr(d, "test_labels", "")
    if is_flat_image_folder(path):
        return load_imagenet_val(path, classes, labels if path == d.test else "", verify=d.verify)
    if labels and path == d.test:
        raise DataError(f"data.test_labels={labels}: a label file is for a flat folder of images, but "
                        f"data.test={path} has class folders (their names are the labels)")
    return load_folder(path, classes, verify=d.verify)


# the catch-all of directories: asked last
SOURCE = Source("folder", "another directory: class folders (images/<class>/ or <class>/), or a flat folder "
                          "of ImageNet validation images", lambda p: p.is_dir(), _load,
                keys=("test_labels", "verify"), priority=-100)
