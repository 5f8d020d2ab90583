"""ImageNet's validation split as distributed: one flat folder of JPEGs plus a label file, read directly.

Two label files are understood (``find_val_labels`` looks for them in the folder and the folders above
it, so both the devkit's and Kaggle's trees work as unpacked; ``data.test_labels`` names one anywhere):

- ``LOC_val_solution.csv`` (Kaggle's ImageNet localization challenge): a header ``ImageId,PredictionString``
  then ``ILSVRC2012_val_00000001,n01751748 x y x y ...``: the image's stem and its boxes, each box
  led by the class's WordNet id (all boxes of a validation image have its class).
- ``ILSVRC2012_validation_ground_truth.txt`` (the ILSVRC2012 devkit): line k is the 1-based
  ILSVRC2012_ID of ``ILSVRC2012_val_{k:08d}.JPEG``. The ID -> WordNet id table comes from the devkit's
  ``meta.mat`` beside it (needs scipy) or a plain ``ILSVRC2012_id_to_wnid.txt`` beside it, one
  ``<ILSVRC2012_ID> <wnid>`` per line. (The IDs are not in WordNet-id order: a table is required.)

Labels index the training classes (the WordNet ids of the training folders, sorted as ``folder``
reads them); a label naming another class is one DataError with the file and line. Object masks, if
any, live in the sibling tree ``<folder>_masks/<stem>.png`` (``layout.py``'s ``flat`` layout; ``cit-fast
masks <folder>`` writes them).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .files import check_pairs
from .layout import IMAGE_EXTS, FolderLayout, sibling_masks_root
from .records import DataError, SampleSet

LOC_CSV = "LOC_val_solution.csv"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
ID_TABLE = "ILSVRC2012_id_to_wnid.txt"
_WNID = re.compile(r"^n\d{8}$")
_SEARCH_UP = 4  # Kaggle: LOC_val_solution.csv sits 4 levels above ILSVRC/Data/CLS-LOC/val


def is_flat_image_folder(root: Path) -> bool:
    """Images directly in ``root`` and no class subfolders: a validation folder as distributed."""
    root = Path(root)
    if not root.is_dir():
        return False
    has_images = any(f.suffix.lower() in IMAGE_EXTS for f in root.iterdir() if f.is_file())
    has_classes = any(d.is_dir() and not d.name.startswith(".") for d in root.iterdir())
    return has_images and not has_classes


def find_val_labels(root: Path) -> Path:
    """The label file of a flat validation folder: in it, or in up to four folders above it (the
    devkit's ``data/`` subfolder included); a DataError saying what was looked for otherwise."""
    root = Path(root).resolve()
    looked: List[str] = []
    for d in [root, *list(root.parents)[:_SEARCH_UP]]:
        for cand in (d / LOC_CSV, d / GROUND_TRUTH, d / "data" / GROUND_TRUTH):
            looked.append(str(cand))
            if cand.is_file():
                return cand
        for kit in sorted(d.glob("ILSVRC2012_devkit*/data")):
            cand = kit / GROUND_TRUTH
            looked.append(str(cand))
            if cand.is_file():
                return cand
    raise DataError(f"folder {root}: images but no class folders, and no ImageNet validation labels found "
                    f"({LOC_CSV} or the devkit's {GROUND_TRUTH} in it or up to {_SEARCH_UP} folders above); "
                    f"name the file with data.test_labels=PATH, or sort the images into <class>/ folders")


def _read_loc_csv(path: Path) -> List[Tuple[str, str, int]]:
    """[(image stem, wnid, line)] from LOC_val_solution.csv."""
    out = []
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path}, line 1: expected the header 'ImageId,PredictionString', got "
                            f"{','.join(header or [])!r}")
        for line, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[1].split():
                raise DataError(f"{path}, line {line}: expected 'ImageId,<wnid> x y x y ...', got {','.join(row)!r}")
            wnid = row[1].split()[0]
            if not _WNID.match(wnid):
                raise DataError(f"{path}, line {line}: {wnid!r} is not a WordNet id (n########)")
            out.append((row[0].strip(), wnid, line))
    return out


def _read_id_table(gt: Path) -> Dict[int, str]:
    """ILSVRC2012_ID -> wnid, from the devkit's meta.mat or ILSVRC2012_id_to_wnid.txt beside ``gt``."""
    table, meta = gt.parent / ID_TABLE, gt.parent / "meta.mat"
    if table.is_file():
        ids: Dict[int, str] = {}
        for line, text in enumerate(table.read_text().splitlines(), start=1):
            parts = text.replace(",", " ").split()
            if not parts or text.lstrip().startswith("#"):
                continue
            if len(parts) < 2 or not parts[0].isdigit() or not _WNID.match(parts[1]):
                raise DataError(f"{table}, line {line}: expected '<ILSVRC2012_ID> <wnid>', got {text.strip()!r}")
            ids[int(parts[0])] = parts[1]
        return ids
    if meta.is_file():
        try:
            from scipy.io import loadmat
        except ImportError:
            raise DataError(f"{meta}: reading the devkit's meta.mat needs scipy (pip install scipy), or write "
                            f"{table} ('<ILSVRC2012_ID> <wnid>' per line)") from None
        try:
            synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
            return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
        except Exception as e:
            raise DataError(f"{meta}: not the devkit's meta.mat ({type(e).__name__}: {e})") from None
    raise DataError(f"{gt}: the ILSVRC2012_ID -> WordNet id table is missing: the devkit's meta.mat or "
                    f"{ID_TABLE} ('<ILSVRC2012_ID> <wnid>' per line) beside it")


def _read_ground_truth(path: Path) -> List[Tuple[str, str, int]]:
    """[(image stem, wnid, line)] from the devkit's ground-truth list."""
    ids = _read_id_table(path)
    out = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        text = text.strip()
        if not text:
            continue
        if not text.isdigit():
            raise DataError(f"{path}, line {line}: expected an ILSVRC2012_ID (1..1000), got {text!r}")
        if int(text) not in ids:
            raise DataError(f"{path}, line {line}: ILSVRC2012_ID {text} is not in the ID table "
                            f"({len(ids)} ids)")
        out.append((f"ILSVRC2012_val_{line:08d}", ids[int(text)], line))
    return out


def load_imagenet_val(root: str, classes: Optional[Sequence[str]] = None, labels: str = "",
                      verify: str = "header") -> SampleSet:
    """A flat folder of validation images with its label file (``labels``, or found by
    ``find_val_labels``), labelled in the order of ``classes`` (the training folders' WordNet ids)."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"folder {root}: not found" if not r.exists() else f"folder {root}: not a directory")
    lab = Path(labels) if labels else find_val_labels(r)
    if not lab.is_file():
        raise DataError(f"data.test_labels {lab}: file not found")
    rows = _read_loc_csv(lab) if lab.suffix.lower() == ".csv" else _read_ground_truth(lab)
    files = {f.stem: f for f in r.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS}
    if classes is None:
        classes = sorted({wnid for _, wnid, _ in rows})
    order = {c: k for k, c in enumerate(classes)}
    images: List[str] = []
    labels_out: List[int] = []
    seen = set()
    for stem, wnid, line in rows:
        if wnid not in order:
            shown = ", ".join(list(classes)[:5]) + (", ..." if len(classes) > 5 else "")
            raise DataError(f"{lab}, line {line}: class {wnid} of {stem} is not among the {len(classes)} "
                            f"training classes ({shown})")
        if stem in seen:
            raise DataError(f"{lab}, line {line}: {stem} is labelled twice")
        seen.add(stem)
        if stem not in files:
            raise DataError(f"{lab}, line {line}: image {stem} not found in {r} (the folder must hold every "
                            f"labelled image)")
        images.append(str(files[stem]))
        labels_out.append(order[wnid])
    unlabelled = sorted(set(files) - seen)
    if unlabelled:
        raise DataError(f"{files[unlabelled[0]]}: no label in {lab} ({len(unlabelled)} image(s) of {r} unlabelled)")
    lay = FolderLayout(r, "flat", r, sibling_masks_root(r))  # where `cit-fast masks` writes them
    masks_root = lay.masks_root
    masks: Optional[List[str]] = None
    if masks_root.is_dir():
        masks = [str(lay.mask_path(Path(p))) for p in images]
        missing = [m for m in masks if not Path(m).is_file()]
        if missing:
            raise DataError(f"mask {missing[0]}: file not found (every image needs a mask once {masks_root} "
                            f"exists; {len(missing)} missing)")
    if verify != "none":
        check_pairs(images, masks if masks else [None] * len(images), verify)
    return SampleSet(images, masks, np.asarray(labels_out, np.int64), list(classes), name=f"folder {root}")
