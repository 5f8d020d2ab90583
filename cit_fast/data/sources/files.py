"""Image files and manifest rows, shared by every file-based source (folder, manifest, coco, nuswide,
and the multi-label manifest): start-up checks that name the file, and the columns of a row."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .records import DataError


def image_size(path: Path, kind: str) -> tuple:
    """(width, height) from the file header; a DataError naming the file if it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{kind} {path}: file not found") from None
    except Exception as e:
        raise DataError(f"{kind} {path}: cannot read ({type(e).__name__}: {e})") from None


def _check_jpeg_end(path: Path, kind: str) -> None:
    """A JPEG ends with the EOI marker FF D9 (trailing padding allowed): a cheap test for truncation."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 64))
        tail = f.read()
    if b"\xff\xd9" not in tail:
        raise DataError(f"{kind} {path}: truncated JPEG (no end-of-image marker); re-copy or remove it")


def _check_decodes(path: Path, kind: str) -> None:
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:
        raise DataError(f"{kind} {path}: cannot decode ({type(e).__name__}: {e})") from None


def check_pairs(images: Sequence[str], masks: Sequence[Optional[str]], verify: str = "header") -> None:
    """Every image readable (``verify="full"``: decoded; ``header``: its header and, for a JPEG, its end
    marker), its mask present, readable and of the same size."""
    from tqdm import tqdm

    full = verify == "full"
    pairs = list(zip(images, masks))
    bar = tqdm(pairs, desc="verify", unit="img", disable=not full or not sys.stderr.isatty(), leave=False)
    for img, msk in bar:
        isz = image_size(Path(img), "image")
        if full:
            _check_decodes(Path(img), "image")
        elif Path(img).suffix.lower() in (".jpg", ".jpeg"):
            _check_jpeg_end(Path(img), "image")
        if msk is None:
            continue
        if not Path(msk).is_file():
            raise DataError(f"mask {msk}: file not found (expected beside image {img})")
        msz = image_size(Path(msk), "mask")
        if full:
            _check_decodes(Path(msk), "mask")
        if msz != isz:
            raise DataError(f"mask {msk}: size {msz[0]}x{msz[1]} does not match image {img} ({isz[0]}x{isz[1]})")


def read_manifest_rows(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        raise DataError(f"manifest {path}: not found")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for ln, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"manifest {path}, line {ln}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise DataError(f"manifest {path}, line {ln}: expected a JSON object")
            rows.append(row)
        return rows
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    raise DataError(f"manifest {path}: expected a .csv or .jsonl file")


def row_names(path, n: int) -> List[str]:
    """How errors name the manifest's rows: 'manifest PATH, row N', N the file's line (a CSV's header is row 1)."""
    first = 2 if Path(path).suffix.lower() == ".csv" else 1
    return [f"manifest {path}, row {ln}" for ln in range(first, first + n)]


def manifest_row_fields(row: Dict, where: str, base: Path, has_mask: bool):
    """(image path, mask path or None, stratum or None, bias or None) of one manifest row."""
    img = str(row.get("image", "") or "").strip()
    if not img:
        raise DataError(f"{where}: empty 'image'")
    msk = None
    if has_mask:
        m = str(row.get("mask", "") or "").strip()
        if not m:
            raise DataError(f"{where}: empty 'mask' for image {img}")
        msk = str(base / m)
    side = []
    for col in ("stratum", "bias"):
        v = row.get(col)
        if v is not None and str(v).strip() != "":
            try:
                side.append(int(v))
            except ValueError:
                raise DataError(f"{where}: {col!r} must be an integer, got {v!r}") from None
        else:
            side.append(None)
    return str(base / img), msk, side[0], side[1]


def manifest_files(rows: List[Dict], wheres: Sequence[str], base: Path, verify: str = "header"):
    """(images, masks or None, strata or None, bias or None) of a manifest's rows (``wheres[i]`` names row
    i in errors), the image/mask pairs checked at ``verify``; stratum and bias are int64 columns, None
    where the manifest has none, and a column filled for some rows only is an error naming the first
    empty row."""
    has_mask = "mask" in rows[0]
    images, masks, strata, bias = [], [], [], []
    for row, where in zip(rows, wheres):
        img, msk, stratum, b = manifest_row_fields(row, where, base, has_mask)
        images.append(img)
        masks.append(msk)
        strata.append(stratum)
        bias.append(b)
    if verify != "none":
        check_pairs(images, masks, verify)

    def column(values, name):
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):
            raise DataError(f"{wheres[values.index(None)]}: column {name!r} is filled for other rows but empty here")
        return np.asarray(values, np.int64)

    return images, masks if has_mask else None, column(strata, "stratum"), column(bias, "bias")


def check_labels(labels: np.ndarray, num_classes: int, where: str, require_all: bool = True) -> None:
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


def text_lines(path: Path, source: str = "", keep_trailing_blank: bool = False) -> List[str]:
    """A text file's lines (CRLF-safe), trailing blank lines dropped unless asked to keep them; a
    missing or non-UTF-8 file is one DataError naming it (after ``source``, e.g. 'deepfashion ')."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{source}{path}: file not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"{source}{path}: cannot read as UTF-8 text ({type(e).__name__}: {e})") from None
    lines = text.splitlines()
    if not keep_trailing_blank:
        while lines and not lines[-1].strip():
            lines.pop()
    return lines
