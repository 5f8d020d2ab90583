"""Data sources -> SampleSet, each validated with errors that name the file or field.

- ``arrays``:   one .npz with images uint8 (N,H,W,3) or (N,H,W), masks uint8/float (N,H,W),
                labels int (N,) (or multi-hot (N, C) of 0/1), optional strata, bias.
- ``folder``:   images/<class>/<name>.<ext> and masks/<class>/<name>.png (same stem).
- ``manifest``: CSV or JSONL with columns image, mask, label and optional stratum, bias; or, for
                multi-hot labels, a ``labels`` column of ``;``-separated class names or indices
                (a JSON list in JSONL) instead of ``label`` (multilabel.py).
- ``synthetic``: the built-in CIT benchmark (see synthetic.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .files import check_pairs, manifest_row_fields, read_manifest_rows
from .layout import IMAGE_EXTS, detect_layout
from .multilabel import check_multi_hot, manifest_multilabel
from ..utils import read_mapping_file
from .records import DataError, SampleSet, as_uint8_mask


# ---------------------------------------------------------------------------------------------
# arrays


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
    if labels.ndim == 2:  # multi-hot (N, C)
        return _arrays_multilabel(images, masks, labels, strata, bias, names, classes, where)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: 'labels' must be a 1-D integer array, got {labels.dtype} {list(labels.shape)}")
    if len(labels) != n:
        raise DataError(f"{where}: 'labels' has {len(labels)} entries but 'images' has {n}")
    masks = _check_side_columns(masks, strata, bias, (n, h, w), where)
    training_split = classes is None  # a test split is checked against the training classes
    classes = list(classes) if classes is not None else (names or [str(c) for c in range(int(labels.max(initial=-1)) + 1)])
    _check_labels(labels.astype(np.int64), len(classes), where, require_all=training_split)
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


def _check_labels(labels: np.ndarray, num_classes: int, where: str, require_all: bool = True) -> None:
    if len(labels) == 0:
        raise DataError(f"{where}: no samples")
    bad = np.nonzero((labels < 0) | (labels >= num_classes))[0]
    if len(bad):
        raise DataError(f"{where}: label {int(labels[bad[0]])} of sample {int(bad[0])} is out of range "
                        f"[0, {num_classes - 1}] ({len(bad)} such samples)")
    if require_all:
        counts = np.bincount(labels, minlength=num_classes)
        empty = np.nonzero(counts == 0)[0]
        if len(empty):
            raise DataError(f"{where}: class {int(empty[0])} has no samples "
                            f"(every class in [0, {num_classes - 1}] needs at least one)")


# ---------------------------------------------------------------------------------------------
# files


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


def _manifest_classes(raw_labels: Sequence[str], path: str, first_row: int) -> List[str]:
    """The classes of a training manifest's ``label`` column: class names (sorted), or integer indices
    0..C-1 with every index present; a mix of the two, or a gap in the indices, is an error naming a row."""
    is_int = [l.lstrip("-").isdigit() for l in raw_labels]
    empty = [i for i, l in enumerate(raw_labels) if not l]
    if empty:
        raise DataError(f"manifest {path}, row {empty[0] + first_row}: empty 'label'")
    if all(is_int):
        values = sorted({int(l) for l in raw_labels})
        if values[0] < 0:
            row = [int(l) for l in raw_labels].index(values[0]) + first_row
            raise DataError(f"manifest {path}, row {row}: label {values[0]} is negative; integer labels are "
                            f"class indices 0..C-1")
        gaps = sorted(set(range(values[-1] + 1)) - set(values))
        if gaps:
            row = [int(l) for l in raw_labels].index(values[-1]) + first_row
            raise DataError(f"manifest {path}, row {row}: label {values[-1]} makes {values[-1] + 1} classes, but "
                            f"label(s) {', '.join(map(str, gaps[:8]))} never occur (labels found: "
                            f"{', '.join(map(str, values[:12]))}); integer labels must be 0..C-1 with every class "
                            f"present, or use class names")
        return [str(c) for c in range(values[-1] + 1)]
    if any(is_int):
        i = is_int.index(True)
        name = raw_labels[is_int.index(False)]
        raise DataError(f"manifest {path}, row {i + first_row}: label {raw_labels[i]!r} is a number, but other rows "
                        f"name classes (e.g. {name!r}); use class names or integer indices throughout, not both")
    return sorted(set(raw_labels))


def load_manifest(path: str, root: str = "", classes: Optional[Sequence[str]] = None,
                  verify: str = "header") -> SampleSet:
    p = Path(path)
    rows = read_manifest_rows(p)
    if not rows:
        raise DataError(f"manifest {path}: no rows")
    base = Path(root) if root else p.parent
    if "labels" in rows[0] and "label" not in rows[0]:  # multi-hot labels: see multilabel.py
        return manifest_multilabel(p, rows, base, classes, verify)
    for col in ("image", "label"):
        if col not in rows[0]:
            raise DataError(f"manifest {path}: missing column {col!r} (has {', '.join(rows[0])})")
    raw_labels = [str(r.get("label", "")).strip() for r in rows]
    first_row = 2 if p.suffix.lower() == ".csv" else 1
    training_split = classes is None
    if classes is None:
        classes = _manifest_classes(raw_labels, path, first_row)
    index = {c: i for i, c in enumerate(classes)}
    labels, images, masks, strata, bias = [], [], [], [], []
    has_mask = "mask" in rows[0]
    for ln, (row, lab) in enumerate(zip(rows, raw_labels), first_row):
        where = f"manifest {path}, row {ln}"
        if lab in index:
            labels.append(index[lab])
        elif lab.lstrip("-").isdigit():
            v = int(lab)
            if not 0 <= v < len(classes):
                raise DataError(f"{where}: label {v} is out of range [0, {len(classes) - 1}]")
            labels.append(v)
        else:
            raise DataError(f"{where}: label {lab!r} is not a known class ({', '.join(classes[:10])}...)")
        img, msk, stratum, b = manifest_row_fields(row, where, base, has_mask)
        images.append(img)
        if has_mask:
            masks.append(msk)
        strata.append(stratum)
        bias.append(b)
    if verify != "none":
        check_pairs(images, masks if has_mask else [None] * len(images), verify)
    _check_labels(np.asarray(labels, np.int64), len(classes), f"manifest {path}", require_all=training_split)

    def column(values, default):
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):
            missing = values.index(None)
            raise DataError(f"manifest {path}: column filled for some rows but empty at row {missing + 1}")
        return np.asarray(values, np.int64)

    return SampleSet(images, masks if has_mask else None, np.asarray(labels, np.int64), list(classes),
                     column(strata, None), column(bias, None), name=f"manifest {path}")


# ---------------------------------------------------------------------------------------------
# strata mapping (common-sense groups A)


def apply_strata_file(samples: SampleSet, path: str) -> SampleSet:
    """Set each sample's stratum from a YAML/JSON mapping {class name or index: group}."""
    mapping = {str(k): str(v) for k, v in read_mapping_file(Path(path), "strata file", DataError).items()}
    unknown = sorted(set(mapping) - set(samples.classes) - {str(i) for i in range(samples.num_classes)})
    if unknown:
        raise DataError(f"strata file {path}: unknown class(es) {unknown}")
    groups: Dict[str, int] = {}
    per_class = []
    for ci, name in enumerate(samples.classes):
        g = mapping.get(name, mapping.get(str(ci)))
        if g is None:
            raise DataError(f"strata file {path}: class {name!r} has no group")
        per_class.append(groups.setdefault(g, len(groups)))
    samples.strata = np.asarray(per_class, np.int64)[samples.labels]
    return samples
