"""The ``arrays`` source: one .npz with images uint8 (N,H,W,3) or (N,H,W), masks uint8/float (N,H,W),
labels int (N,) (or multi-hot (N, C) of 0/1), optional strata and bias. Masks may also come from
the sidecar ``FILE.masks.npz`` beside it (``mask_sidecar``; written by ``cit-fast masks FILE.npz``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .files import check_labels
from .mask_sidecar import read_sidecar, sidecar_for_arrays
from .multilabel import check_multi_hot
from .records import DataError, SampleSet, as_uint8_mask
from .registry import Source


def load_arrays(path: str, classes: Optional[Sequence[str]] = None) -> SampleSet:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"arrays file {path}: not found")
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as e:
        raise DataError(f"arrays file {path}: not a readable .npz ({type(e).__name__}: {e})") from None
    with z:
        for key in ("images", "labels"):
            if key not in z.files:
                raise DataError(f"arrays file {path}: missing array {key!r} (has {', '.join(z.files) or 'nothing'})")
        images = z["images"]
        labels = z["labels"]
        masks = z["masks"] if "masks" in z.files else None
        strata = z["strata"] if "strata" in z.files else None
        bias = z["bias"] if "bias" in z.files else None
        names = [str(c) for c in z["classes"]] if "classes" in z.files else None
    where = f"arrays file {path}"
    if images.dtype != np.uint8:
        raise DataError(f"{where}: 'images' must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)  # grey -> RGB
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{where}: 'images' must have shape [N,H,W,3] or [N,H,W], got {list(images.shape)}")
    n, h, w = images.shape[:3]
    sidecar = read_sidecar(sidecar_for_arrays(p), images)  # `cit-fast masks FILE.npz` writes it
    if sidecar is not None:
        masks = sidecar
    if labels.ndim == 2:  # multi-hot (N, C)
        return _arrays_multilabel(images, masks, labels, strata, bias, names, classes, where)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: 'labels' must be a 1-D integer array, got {labels.dtype} {list(labels.shape)}")
    if len(labels) != n:
        raise DataError(f"{where}: 'labels' has {len(labels)} entries but 'images' has {n}")
    masks = _check_side_columns(masks, strata, bias, (n, h, w), where)
    training_split = classes is None  # a test split is checked against the training classes
    classes = list(classes) if classes is not None else (names or [str(c) for c in range(int(labels.max(initial=-1)) + 1)])
    check_labels(labels.astype(np.int64), len(classes), where, require_all=training_split)
    return SampleSet(images, masks, labels.astype(np.int64), classes, strata, bias, name=where)


def _check_side_columns(masks, strata, bias, nhw, where):
    """Masks of the images' shape (returned as uint8) and integer strata / bias of length N."""
    n = nhw[0]
    if masks is not None:
        if masks.shape != tuple(nhw):
            raise DataError(f"{where}: 'masks' must have shape {list(nhw)} to match 'images', got {list(masks.shape)}")
        masks = as_uint8_mask(masks, f"{where}: 'masks'")
    for key, col in (("strata", strata), ("bias", bias)):
        if col is not None and (col.shape != (n,) or not np.issubdtype(col.dtype, np.integer)):
            raise DataError(f"{where}: {key!r} must be an integer array of shape [{n}], got {col.dtype} {list(col.shape)}")
    return masks


def _arrays_multilabel(images, masks, labels, strata, bias, names, classes, where) -> SampleSet:
    """The multi-hot branch of load_arrays: labels (N, C) of 0/1."""

    n, h, w = images.shape[:3]
    if len(labels) != n:
        raise DataError(f"{where}: 'labels' has {len(labels)} rows but 'images' has {n}")
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == bool) or not np.isin(labels, (0, 1)).all():
        raise DataError(f"{where}: 2-D 'labels' must be multi-hot (0/1 values), got {labels.dtype}")
    masks = _check_side_columns(masks, strata, bias, (n, h, w), where)
    c = labels.shape[1]
    training_split = classes is None
    classes = list(classes) if classes is not None else (names or [str(i) for i in range(c)])
    if len(classes) != c:
        raise DataError(f"{where}: 'labels' has {c} columns but there are {len(classes)} classes")
    labels = labels.astype(np.float32)
    check_multi_hot(labels, classes, where, require_all=training_split)
    return SampleSet(images, masks, labels, classes, strata, bias, name=where)


SOURCE = Source("arrays", "a .npz file", lambda p: p.is_file() and p.suffix.lower() == ".npz",
                lambda d, path, split, classes: load_arrays(path, classes))
