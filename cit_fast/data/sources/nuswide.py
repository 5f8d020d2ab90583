"""The ``nuswide`` source: a NUS-WIDE-style image list and per-image labels -> a multi-label SampleSet.

One split per directory; ``data.train`` / ``data.test`` name the directory or its image list. In it:

- ``ImageList.txt``: one image path per line, relative to the image root (the original lists'
  Windows separators, ``actor\\0001_2124494179.jpg``, are accepted).
- the labels, the first of these found:
  1. ``AllLabels81.txt`` (any ``AllLabels<n>.txt`` or ``labels.txt``): one row of C 0/1 values per
     image (spaces or commas), columns named by ``Concepts81.txt`` (any ``Concepts<n>.txt``, one
     name per line; without it the classes are ``0 .. C-1``);
  2. ``AllLabels/``: the original ground-truth folder, one ``Labels_<concept>.txt`` of one 0/1 per
     line (per image) for every concept; column order from the concept list, else by name;
  3. ``tags.txt``: one line per image of the tag names it holds, separated by spaces or commas (an
     empty line is an image without tags); classes from the concept list when there is one, else
     the sorted set of tags.
- images under ``data.root`` when given, else ``images/`` or ``Flickr/`` when present, else the
  directory itself.
- masks (optional): ``masks/<image path, .png>`` for every image; without the folder every pixel is
  object (``SampleSet.mask``), which is all mAP evaluation needs.

A test split is read against the training classes: its concepts / tags must be among them, columns
follow the training order and a training class the split lacks is all-negative. Errors name the
file and line: image count vs label rows, an unknown tag, a bad 0/1 value, an unreadable image.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .files import check_pairs, text_lines
from .multilabel import check_multi_hot
from .records import DataError, SampleSet
from .registry import Source

_SEP = re.compile(r"[,\s]+")
_LIST = re.compile(r"imagelist\.txt", re.I)
_CONCEPTS = re.compile(r"concepts\d*\.txt", re.I)
_MATRIX = re.compile(r"(alllabels\d*|labels)\.txt", re.I)
_TAGS = re.compile(r"tags\.txt", re.I)
_PER_CONCEPT_DIR = re.compile(r"alllabels", re.I)




def _find(directory: Path, pattern: re.Pattern, kind: str, want_dir: bool = False) -> Optional[Path]:
    hits = sorted(p for p in directory.iterdir() if pattern.fullmatch(p.name) and (p.is_dir() if want_dir else p.is_file()))
    if len(hits) > 1:
        raise DataError(f"nuswide {directory}: several {kind} files ({', '.join(p.name for p in hits)}); "
                        f"keep one per split directory")
    return hits[0] if hits else None


def _resolve(path: str) -> Tuple[Path, Path]:
    """(split directory, image list file) of a directory or an image-list path."""
    p = Path(path)
    if p.is_file():
        return p.parent, p
    if not p.is_dir():
        raise DataError(f"nuswide {path}: not found (expected a split directory or its ImageList.txt)")
    lst = _find(p, _LIST, "image list")
    if lst is None:
        raise DataError(f"nuswide {path}: no ImageList.txt (one image path per line) in the directory")
    return p, lst


def read_image_list(path: Path) -> List[str]:
    out = []
    for ln, line in enumerate(text_lines(path), 1):
        rel = line.strip().replace("\\", "/")
        if not rel:
            raise DataError(f"{path}, line {ln}: empty image path")
        out.append(rel)
    if not out:
        raise DataError(f"{path}: no images listed")
    return out


def read_concepts(path: Path) -> List[str]:
    names: List[str] = []
    seen: Dict[str, int] = {}
    for ln, line in enumerate(text_lines(path), 1):
        name = line.strip()
        if not name:
            raise DataError(f"{path}, line {ln}: empty concept name")
        if name in seen:
            raise DataError(f"{path}, line {ln}: concept {name!r} repeats line {seen[name]}")
        seen[name] = ln
        names.append(name)
    if not names:
        raise DataError(f"{path}: no concepts listed")
    return names


def _bits(tokens: Sequence[str], where: str) -> List[float]:
    out = []
    for j, t in enumerate(tokens):
        if t not in ("0", "1"):
            raise DataError(f"{where}: value {t!r} in column {j + 1} is not 0 or 1")
        out.append(float(t))
    return out


def read_matrix(path: Path, width: Optional[int], concepts_file: Optional[Path]) -> np.ndarray:
    """(N, C) float32 of 0/1 rows."""
    rows = []
    for ln, line in enumerate(text_lines(path), 1):
        tokens = [t for t in _SEP.split(line.strip()) if t]
        where = f"{path}, line {ln}"
        if width is None:
            width = len(tokens)
        if len(tokens) != width:
            named = f" ({concepts_file.name} lists {width} concepts)" if concepts_file else f" (line 1 has {width})"
            raise DataError(f"{where}: {len(tokens)} values, expected {width}{named}")
        rows.append(_bits(tokens, where))
    if not rows:
        raise DataError(f"{path}: no label rows")
    return np.asarray(rows, np.float32)


def read_per_concept(folder: Path, concepts: Optional[List[str]], n: int, list_file: Path
                     ) -> Tuple[List[str], np.ndarray]:
    """The original ``AllLabels/Labels_<concept>.txt`` files -> (concepts, (N, C))."""
    files = {p.name[len("Labels_"):-len(".txt")]: p for p in folder.glob("Labels_*.txt")}
    if not files:
        raise DataError(f"nuswide {folder}: no Labels_<concept>.txt files")
    if concepts is None:
        concepts = sorted(files)
    else:
        missing = [c for c in concepts if c not in files]
        extra = sorted(set(files) - set(concepts))
        if missing or extra:
            raise DataError(f"nuswide {folder}: " + "; ".join(
                ([f"no Labels_<concept>.txt for concept(s) {missing}"] if missing else [])
                + ([f"file(s) for concept(s) {extra} not in the concept list"] if extra else [])))
    cols = []
    for c in concepts:
        f = files[c]
        lines = text_lines(f)
        if len(lines) != n:
            raise DataError(f"nuswide: {list_file} lists {n} images but {f} has {len(lines)} lines")
        cols.append([_bits([l.strip()], f"{f}, line {ln}")[0] for ln, l in enumerate(lines, 1)])
    return concepts, np.asarray(cols, np.float32).T.copy()


def read_tags(path: Path, n: int, classes: Optional[Sequence[str]], list_file: Path) -> Tuple[List[str], np.ndarray]:
    """``tags.txt`` -> (classes, (N, C)); an unknown tag (given classes) is an error naming its line."""
    lines = text_lines(path, keep_trailing_blank=True)
    while len(lines) > n and not lines[-1].strip():  # a trailing newline too many
        lines.pop()
    if len(lines) != n:
        raise DataError(f"nuswide: {list_file} lists {n} images but {path} has {len(lines)} lines")
    tokens = [[t for t in _SEP.split(l.strip()) if t] for l in lines]
    if classes is None:
        classes = sorted({t for ts in tokens for t in ts})
        if not classes:
            raise DataError(f"{path}: no tags on any line")
    index = {c: j for j, c in enumerate(classes)}
    out = np.zeros((n, len(classes)), np.float32)
    for i, ts in enumerate(tokens):
        for t in ts:
            if t not in index:
                shown = ", ".join(list(classes)[:10]) + ("..." if len(classes) > 10 else "")
                raise DataError(f"{path}, line {i + 1}: unknown tag {t!r} (classes: {shown})")
            out[i, index[t]] = 1
    return list(classes), out


def _check_known(names: Sequence[str], classes: Sequence[str], where: str) -> None:
    unknown = [c for c in names if c not in classes]
    if unknown:
        raise DataError(f"{where}: concept(s) {unknown} are not among the training classes")


def _to_training_order(names: List[str], labels: np.ndarray, classes: Sequence[str], where: str) -> np.ndarray:
    _check_known(names, classes, where)
    out = np.zeros((len(labels), len(classes)), np.float32)
    out[:, [list(classes).index(c) for c in names]] = labels
    return out


def _check_images(images: List[str], rels: List[str], masks: Optional[List[str]], list_file: Path,
                  verify: str = "header") -> None:
    for ln, (img, rel) in enumerate(zip(images, rels), 1):
        try:
            check_pairs([img], [masks[ln - 1] if masks is not None else None], verify)
        except DataError as e:
            raise DataError(f"{list_file}, line {ln} ({rel}): {e}") from None


def load_nuswide(path: str, root: str = "", classes: Optional[Sequence[str]] = None,
                 verify: str = "header") -> SampleSet:
    """A NUS-WIDE-style split (see the module doc) as a multi-label SampleSet."""
    directory, list_file = _resolve(path)
    rels = read_image_list(list_file)
    n = len(rels)
    where = f"nuswide {directory}"
    concepts_file = _find(directory, _CONCEPTS, "concept list")
    concepts = read_concepts(concepts_file) if concepts_file else None
    matrix = _find(directory, _MATRIX, "label matrix")
    per_concept = _find(directory, _PER_CONCEPT_DIR, "per-concept label folder", want_dir=True)
    tags = _find(directory, _TAGS, "tags")
    training_split = classes is None
    if matrix is not None:
        labels = read_matrix(matrix, len(concepts) if concepts else None, concepts_file)
        if len(labels) != n:
            raise DataError(f"nuswide: {list_file} lists {n} images but {matrix} has {len(labels)} rows")
        names = concepts or [str(j) for j in range(labels.shape[1])]
    elif per_concept is not None:
        names, labels = read_per_concept(per_concept, concepts, n, list_file)
    elif tags is not None:
        if concepts is not None and classes is not None:
            _check_known(concepts, classes, f"{where} ({concepts_file.name})")
        names, labels = read_tags(tags, n, concepts if concepts is not None else classes, list_file)
    else:
        raise DataError(f"{where}: no labels: expected AllLabels81.txt (0/1 rows) with Concepts81.txt, an "
                        f"AllLabels/ folder of Labels_<concept>.txt, or tags.txt (tag names per line)")
    if classes is not None and names != list(classes):
        labels = _to_training_order(names, labels, classes, where)
        names = list(classes)
    check_multi_hot(labels, names, where, require_all=training_split)
    if root:
        img_root = Path(root)
    else:
        img_root = next((directory / d for d in ("images", "Flickr") if (directory / d).is_dir()), directory)
    images = [str(img_root / r) for r in rels]
    masks = None
    if (directory / "masks").is_dir():
        masks = [str((directory / "masks" / r).with_suffix(".png")) for r in rels]
    if verify != "none":
        _check_images(images, rels, masks, list_file, verify)
    return SampleSet(images, masks, labels, names, name=where)


def save_nuswide(samples: SampleSet, directory: str, layout: str = "matrix", masks: bool = False) -> Path:
    """Write an in-memory multi-label SampleSet as a NUS-WIDE-style split (tests, conversions).

    layout: ``matrix`` (``Concepts<C>.txt`` + ``AllLabels<C>.txt``) or ``tags`` (``tags.txt``);
    images go to ``images/<i>.png`` (and ``masks/<i>.png`` with masks=True).
    """
    from PIL import Image

    if not samples.multilabel:
        raise ValueError(f"save_nuswide: {samples.name} has single-label data; expected multi-hot labels")
    if layout not in ("matrix", "tags"):
        raise ValueError(f"save_nuswide: layout must be 'matrix' or 'tags', got {layout!r}")
    out = Path(directory)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if masks:
        (out / "masks").mkdir(parents=True, exist_ok=True)
    rels = []
    for i in range(len(samples)):
        rel = f"{i:06d}.png"
        Image.fromarray(samples.image(i)).save(out / "images" / rel)
        if masks:
            Image.fromarray(samples.mask(i)).save(out / "masks" / rel)
        rels.append(rel)
    (out / "ImageList.txt").write_text("".join(r + "\n" for r in rels))
    y = np.asarray(samples.labels) > 0
    c = samples.num_classes
    if layout == "matrix":
        (out / f"Concepts{c}.txt").write_text("".join(n + "\n" for n in samples.classes))
        (out / f"AllLabels{c}.txt").write_text("".join(" ".join("1" if v else "0" for v in row) + "\n" for row in y))
    else:
        (out / "tags.txt").write_text("".join(" ".join(n for n, v in zip(samples.classes, row) if v) + "\n"
                                              for row in y))
    return out


def _is_nuswide(p: Path) -> bool:
    return (p.is_dir() and (p / "ImageList.txt").is_file()) or (p.is_file() and p.name == "ImageList.txt")


SOURCE = Source("nuswide", "a directory with ImageList.txt, or that file", _is_nuswide,
                lambda d, path, split, classes: load_nuswide(path, d.root, classes, verify=d.verify),
                keys=("root", "verify"), priority=30)
