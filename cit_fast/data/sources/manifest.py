"""The ``manifest`` source: CSV or JSONL with columns image, mask, label and optional stratum, bias; or, for
multi-hot labels, a ``labels`` column of ``;``-separated class names or indices (a JSON list in JSONL)
instead of ``label`` (multilabel.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .files import check_labels, manifest_files, read_manifest_rows, row_names
from .multilabel import manifest_multilabel
from .records import DataError, SampleSet
from .registry import Source


def _manifest_classes(raw_labels: Sequence[str], wheres: Sequence[str]) -> List[str]:
    """The classes of a training manifest's ``label`` column: class names (sorted), or integer indices
    0..C-1 with every index present; a mix of the two, or a gap in the indices, is an error naming a row."""
    is_int = [l.lstrip("-").isdigit() for l in raw_labels]
    empty = [i for i, l in enumerate(raw_labels) if not l]
    if empty:
        raise DataError(f"{wheres[empty[0]]}: empty 'label'")
    if all(is_int):
        values = sorted({int(l) for l in raw_labels})
        if values[0] < 0:
            row = [int(l) for l in raw_labels].index(values[0])
            raise DataError(f"{wheres[row]}: label {values[0]} is negative; integer labels are "
                            f"class indices 0..C-1")
        gaps = sorted(set(range(values[-1] + 1)) - set(values))
        if gaps:
            row = [int(l) for l in raw_labels].index(values[-1])
            raise DataError(f"{wheres[row]}: label {values[-1]} makes {values[-1] + 1} classes, but "
                            f"label(s) {', '.join(map(str, gaps[:8]))} never occur (labels found: "
                            f"{', '.join(map(str, values[:12]))}); integer labels must be 0..C-1 with every class "
                            f"present, or use class names")
        return [str(c) for c in range(values[-1] + 1)]
    if any(is_int):
        i = is_int.index(True)
        name = raw_labels[is_int.index(False)]
        raise DataError(f"{wheres[i]}: label {raw_labels[i]!r} is a number, but other rows "
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
    wheres = row_names(path, len(rows))
    training_split = classes is None
    if classes is None:
        classes = _manifest_classes(raw_labels, wheres)
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for where, lab in zip(wheres, raw_labels):
        if lab in index:
            labels.append(index[lab])
        elif lab.lstrip("-").isdigit():
            v = int(lab)
            if not 0 <= v < len(classes):
                raise DataError(f"{where}: label {v} is out of range [0, {len(classes) - 1}]")
            labels.append(v)
        else:
            raise DataError(f"{where}: label {lab!r} is not a known class ({', '.join(classes[:10])}...)")
    images, masks, strata, bias = manifest_files(rows, wheres, base, verify)
    check_labels(np.asarray(labels, np.int64), len(classes), f"manifest {path}", require_all=training_split)
    return SampleSet(images, masks, np.asarray(labels, np.int64), list(classes), strata, bias,
                     name=f"manifest {path}")


SOURCE = Source("manifest", "a .csv or .jsonl file", lambda p: p.is_file() and p.suffix.lower() in (".csv", ".jsonl"),
                lambda d, path, split, classes: load_manifest(path, d.root, classes, verify=d.verify),
                keys=("root", "verify"))
