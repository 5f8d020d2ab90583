"""Multi-hot labels for the ``manifest`` source: a ``labels`` column instead of ``label``.

CSV: ``labels`` holds ``;``-separated class names (``person;dog``) or indices (``0;3``); an empty
cell is an image with no label. JSONL: a list (``["person", "dog"]``) or the same string. Classes
are inferred from the training split (sorted names, or 0..max when every label is an index) and a
test split is read against the training classes. Labels become an (N, C) float32 multi-hot array.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .files import manifest_files, row_names
from .records import DataError, SampleSet


def split_labels(value, where: str) -> List[str]:
    """A cell (``a;b`` string, list, or empty) -> its label tokens."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        tokens = [str(v).strip() for v in value]
    elif isinstance(value, (str, int)):
        tokens = [t.strip() for t in str(value).split(";")]
    else:
        raise DataError(f"{where}: 'labels' must be a ';'-separated string or a list, got {value!r}")
    return [t for t in tokens if t]


def infer_classes(token_lists: Sequence[Sequence[str]]) -> List[str]:
    tokens = {t for ts in token_lists for t in ts}
    if tokens and all(t.isdigit() for t in tokens):
        return [str(c) for c in range(max(int(t) for t in tokens) + 1)]
    return sorted(tokens)


def multi_hot(token_lists: Sequence[Sequence[str]], classes: Sequence[str], wheres: Sequence[str]) -> np.ndarray:
    """Label tokens per sample -> (N, C) float32; unknown names and out-of-range indices are errors."""
    index: Dict[str, int] = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(token_lists), len(classes)), np.float32)
    for n, (tokens, where) in enumerate(zip(token_lists, wheres)):
        for t in tokens:
            if t in index:
                out[n, index[t]] = 1
            elif t.lstrip("-").isdigit():
                v = int(t)
                if not 0 <= v < len(classes):
                    raise DataError(f"{where}: label {v} is out of range [0, {len(classes) - 1}]")
                out[n, v] = 1
            else:
                shown = ", ".join(list(classes)[:10]) + ("..." if len(classes) > 10 else "")
                raise DataError(f"{where}: label {t!r} is not a known class ({shown})")
    return out


def check_multi_hot(labels: np.ndarray, classes: Sequence[str], where: str, require_all: bool) -> None:
    if len(labels) == 0:
        raise DataError(f"{where}: no samples")
    if require_all:
        empty = np.nonzero(labels.sum(0) == 0)[0]
        if len(empty):
            raise DataError(f"{where}: class {classes[int(empty[0])]!r} (index {int(empty[0])}) has no positive "
                            f"sample (every class needs at least one)")


def manifest_multilabel(path: Path, rows: List[dict], base: Path, classes: Optional[Sequence[str]],
                        verify: str = "header") -> SampleSet:
    """The multi-label branch of ``sources.load_manifest`` (rows already read)."""
    if "image" not in rows[0]:
        raise DataError(f"manifest {path}: missing column 'image' (has {', '.join(rows[0])})")
    wheres = row_names(path, len(rows))
    tokens = [split_labels(r.get("labels"), w) for r, w in zip(rows, wheres)]
    training_split = classes is None
    if classes is None:
        classes = infer_classes(tokens)
        if not classes:
            raise DataError(f"manifest {path}: column 'labels' is empty in every row")
    labels = multi_hot(tokens, classes, wheres)
    images, masks, strata, bias = manifest_files(rows, wheres, base, verify)
    check_multi_hot(labels, classes, f"manifest {path}", require_all=training_split)
    return SampleSet(images, masks, labels, list(classes), strata, bias, name=f"manifest {path}")
