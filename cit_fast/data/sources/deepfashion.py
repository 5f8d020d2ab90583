"""The ``deepfashion`` source: DeepFashion's Category and Attribute Prediction Benchmark as downloaded.

``data.train=ROOT`` reads the ``train`` partition and ``data.test=ROOT`` the ``test`` one
(``data.deepfashion_test_split=val``: the validation one). In ROOT, as the benchmark unpacks:

- ``Anno_coarse/list_attr_cloth.txt`` (the first release: ``Anno/``): a count line, a header line,
  then one line per attribute, ``<name, may hold spaces>  <type 1-5>``;
- ``Anno_coarse/list_attr_img.txt``: a count line, a header line, then ``<image path> v1 .. vA``,
  one value per attribute in {-1, 1} (the later release: {0, 1}; 1 = present);
- ``Eval/list_eval_partition.txt``: a count line, a header line, then ``<image path> train|val|test``;
- images under ``Img/`` (paths in the lists read ``img/<category>/img_00000001.jpg``; found under
  ``ROOT/Img/``, else ``ROOT/``).

Classes: the ``data.deepfashion_attributes`` (K, default 250: Singh et al.) attributes with the most
positives in the training partition (ties: the earlier attribute), kept in the file's order, named as
list_attr_cloth.txt names them, lower-case (a name listed twice gets `` (2)``). Top-3 recall, the
benchmark's metric, is in every multi-label evaluation.

Masks (DeepFashion has none): a masks tree written by ``cit-fast masks ROOT/Img/img`` (saliency, no
weights: ``Img/img_masks/<category>/<name>.png``) when it exists; else the clothes' bounding boxes of
``Anno_coarse/list_bbox.txt`` (``<path> x_1 y_1 x_2 y_2``; the box is object, written once as PNGs to
the cache directory); else none (a plan that needs masks then says how to get them).

Errors name the file and line: a count line that disagrees with the lines, a row of the wrong width,
a value outside {-1, 0, 1}, an unknown partition, an image of the partition that has no attributes.
"""
from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ...errors import ConfigError
from .coco import cache_dir
from .files import check_pairs, text_lines
from .multilabel import check_multi_hot
from .records import DataError, SampleSet
from .registry import Source

ANNO_DIRS = ("Anno_coarse", "Anno")
PARTITIONS = ("train", "val", "test")


def _anno_dir(root: Path) -> Optional[Path]:
    return next((root / a for a in ANNO_DIRS if (root / a / "list_attr_img.txt").is_file()), None)




def _counted(path: Path, what: str) -> List[Tuple[int, str]]:
    """The (line number, line) rows after the count and header lines, the count checked."""
    lines = text_lines(path, "deepfashion ")
    if len(lines) < 2:
        raise DataError(f"deepfashion {path}: expected a count line and a header line, then one line per {what}")
    try:
        n = int(lines[0].strip())
    except ValueError:
        raise DataError(f"deepfashion {path}, line 1: {lines[0].strip()!r}, expected the number of {what}s") from None
    rows = [(ln, line) for ln, line in enumerate(lines[2:], 3)]
    if n != len(rows):
        raise DataError(f"deepfashion {path}, line 1: says {n} {what}s, the file lists {len(rows)}")
    return rows


def read_attr_cloth(path: Path) -> List[str]:
    """list_attr_cloth.txt -> the attribute names (lower-case, stripped, made unique)."""
    names: List[str] = []
    seen: dict = {}
    for ln, line in _counted(path, "attribute"):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].isdigit() or not parts[0].strip():
            raise DataError(f"deepfashion {path}, line {ln}: {line.strip()!r}, expected '<attribute name> <type>'")
        name = parts[0].strip().lower()
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    if not names:
        raise DataError(f"deepfashion {path}: no attributes listed")
    return names


def _row_values(rest: str, width: int, where: str) -> np.ndarray:
    try:  # C speed (a row is 1000 values, the file 289,222 rows); any doubt: the tokens name the culprit
        v = np.fromstring(rest, dtype=np.int64, sep=" ") if rest.strip() else np.zeros(0, np.int64)
    except ValueError:  # numpy >= 2.3: unparsable text (earlier releases warn and stop short)
        v = np.zeros(0, np.int64)
    if len(v) == width and (np.abs(v) <= 1).all():
        return v
    tokens = rest.split()
    bad = next((t for t in tokens if t not in ("-1", "0", "1")), None)
    if bad is not None:
        raise DataError(f"{where}: value {bad!r} is not -1, 0 or 1")
    raise DataError(f"{where}: {len(tokens)} values, expected {width} (one per attribute of list_attr_cloth.txt)")


@lru_cache(maxsize=1)
def _read_attr_img(path: str, size: int, mtime_ns: int, width: int) -> Tuple[Tuple[str, ...], np.ndarray, int]:
    """(image paths, bit-packed presence (N, ceil(width / 8)), width), read once per process (both splits)."""
    import warnings

    paths, rows = [], []
    with warnings.catch_warnings():  # fromstring warns when a row stops early; _row_values names it
        warnings.simplefilter("ignore", DeprecationWarning)
        for ln, line in _counted(Path(path), "image"):
            parts = line.split(None, 1)
            if not parts:
                raise DataError(f"deepfashion {path}, line {ln}: empty line")
            paths.append(parts[0].replace("\\", "/"))
            rows.append(np.packbits(_row_values(parts[1] if len(parts) > 1 else "", width,
                                                f"deepfashion {path}, line {ln}") == 1))
    if not rows:
        raise DataError(f"deepfashion {path}: no images listed")
    return tuple(paths), np.stack(rows), width


def read_attr_img(path: Path, width: int) -> Tuple[Tuple[str, ...], np.ndarray]:
    """list_attr_img.txt -> (image paths, bit-packed presence (N, ceil(width / 8)); ``unpack`` a row subset)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"deepfashion {path}: file not found") from None
    paths, packed, _ = _read_attr_img(str(path), st.st_size, st.st_mtime_ns, width)
    return paths, packed


def unpack(packed: np.ndarray, rows: Sequence[int], width: int) -> np.ndarray:
    """bool (len(rows), width) presence of the given rows (the whole table unpacked is 289 MB)."""
    return np.unpackbits(packed[np.asarray(rows)], axis=1, count=width).astype(bool)


def read_partition(path: Path) -> List[Tuple[int, str, str]]:
    """list_eval_partition.txt -> (line, image path, partition) rows."""
    out = []
    for ln, line in _counted(path, "image"):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in PARTITIONS:
            raise DataError(f"deepfashion {path}, line {ln}: {line.strip()!r}, expected '<image path> "
                            f"{'|'.join(PARTITIONS)}'")
        out.append((ln, parts[0].replace("\\", "/"), parts[1]))
    return out


def top_attributes(present: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k columns with the most positives (ties: the earlier column), in column order."""
    counts = present.sum(0)
    order = np.lexsort((np.arange(len(counts)), -counts))  # by count descending, then index
    return np.sort(order[:k])


def _image_base(root: Path, first: str) -> Path:
    for base in (root / "Img", root):
        if (base / first).is_file():
            return base
    raise DataError(f"deepfashion {root}: image {first} (the partition's first) is neither under {root / 'Img'} "
                    f"nor under {root}; unzip Img/img.zip into {root / 'Img'}")


# -- masks ------------------------------------------------------------------------------------------------

def tree_mask(base: Path, rel: str) -> Path:
    """``img/<category>/<name>.jpg`` -> ``<base>/img_masks/<category>/<name>.png`` (`cit-fast masks base/img`)."""
    parts = rel.split("/")
    return base.joinpath(f"{parts[0]}_masks", *parts[1:-1], Path(parts[-1]).stem + ".png")


def read_bboxes(path: Path) -> dict:
    """list_bbox.txt -> {image path: (line, x1, y1, x2, y2)}."""
    out = {}
    for ln, line in _counted(path, "image"):
        parts = line.split()
        try:
            box = tuple(int(v) for v in parts[1:])
        except ValueError:
            box = ()
        if len(parts) != 5 or len(box) != 4:
            raise DataError(f"deepfashion {path}, line {ln}: {line.strip()!r}, expected '<image path> x_1 y_1 x_2 y_2'")
        out[parts[0].replace("\\", "/")] = (ln, *box)
    return out


def _box_mask(image: Path, box: Tuple[int, int, int, int], out: Path) -> None:
    if out.is_file():
        return
    try:
        with Image.open(image) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"image {image}: file not found") from None
    except Exception as e:
        raise DataError(f"image {image}: cannot read ({type(e).__name__}: {e})") from None
    x1, y1, x2, y2 = box
    m = np.zeros((h, w), np.uint8)
    m[max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)] = 255
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # temp then rename
    try:
        Image.fromarray(m).save(tmp, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def bbox_masks(bbox_file: Path, base: Path, rels: Sequence[str]) -> List[str]:
    """The clothes' boxes as mask PNGs (once, in the cache directory) for the images ``rels``."""
    boxes = read_bboxes(bbox_file)
    st = bbox_file.stat()
    key = hashlib.sha1(f"{bbox_file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{base.resolve()}".encode()).hexdigest()
    out_dir = cache_dir() / "deepfashion_masks" / key[:12]
    jobs = []
    for rel in rels:
        if rel not in boxes:
            raise DataError(f"deepfashion {bbox_file}: no box for image {rel}")
        jobs.append((base / rel, boxes[rel][1:], out_dir / Path(rel).with_suffix(".png")))
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda j: _box_mask(*j), jobs))
    return [str(j[2]) for j in jobs]


# -- the split ---------------------------------------------------------------------------------------------

def load_deepfashion(path: str, split: str, classes: Optional[Sequence[str]] = None, attributes: int = 250,
                     test_split: str = "test", verify: str = "header") -> SampleSet:
    """One partition of the benchmark (module doc) as a multi-label SampleSet."""
    root = Path(path)
    anno = _anno_dir(root)
    if anno is None:
        raise DataError(f"deepfashion {root}: no Anno_coarse/list_attr_img.txt (nor Anno/)")
    names = read_attr_cloth(anno / "list_attr_cloth.txt")
    if not 0 <= attributes <= len(names):
        raise ConfigError(f"data.deepfashion_attributes={attributes}: expected 0 (all) .. {len(names)} (the "
                          f"attributes {anno / 'list_attr_cloth.txt'} lists)")
    attr_file = anno / "list_attr_img.txt"
    paths, packed = read_attr_img(attr_file, len(names))
    part_file = root / "Eval" / "list_eval_partition.txt"
    partition = read_partition(part_file)
    index = {p: i for i, p in enumerate(paths)}
    for ln, rel, _ in partition:
        if rel not in index:
            raise DataError(f"deepfashion {part_file}, line {ln}: {rel} is not in {attr_file}")
    want = "train" if split == "train" else test_split
    rows = [index[rel] for _, rel, s in partition if s == want]
    if not rows:
        raise DataError(f"deepfashion {part_file}: no image in the {want!r} partition")
    where = f"deepfashion {root} ({want})"
    present = unpack(packed, rows, len(names))
    training_split = want == "train"  # and its classes inferred here: every one needs a positive
    if classes is None:  # the K most frequent in training (a test split read alone too: cross-eval's target)
        train = present if training_split else unpack(
            packed, [index[rel] for _, rel, s in partition if s == "train"], len(names))
        cols = top_attributes(train, attributes or len(names))
        classes = [names[j] for j in cols]
    else:
        col_of = {n: j for j, n in enumerate(names)}
        unknown = [c for c in classes if c not in col_of]
        if unknown:
            raise DataError(f"{where}: training classes {unknown[:5]} are not attributes of "
                            f"{anno / 'list_attr_cloth.txt'}")
        cols = np.asarray([col_of[c] for c in classes])
        training_split = False
    labels = present[:, cols].astype(np.float32)
    check_multi_hot(labels, classes, where, require_all=training_split)
    rels = [paths[i] for i in rows]
    base = _image_base(root, rels[0])
    images = [str(base / r) for r in rels]
    first = rels[0].split("/")[0]
    masks: Optional[List[str]] = None
    if (base / f"{first}_masks").is_dir():
        masks = [str(tree_mask(base, r)) for r in rels]
    elif (anno / "list_bbox.txt").is_file():
        masks = bbox_masks(anno / "list_bbox.txt", base, rels)
    if verify != "none":
        check_pairs(images, masks if masks is not None else [None] * len(images), verify)
    return SampleSet(images, masks, labels, list(classes), name=where)


def _is_deepfashion(p: Path) -> bool:
    return p.is_dir() and _anno_dir(p) is not None and (p / "Eval" / "list_eval_partition.txt").is_file()


def _near_miss(p: Path, key: str) -> Optional[str]:
    if p.is_dir() and p.name in ANNO_DIRS + ("Eval", "Img") and _is_deepfashion(p.parent):
        return f"{key} {p}: a folder of a DeepFashion benchmark; name the benchmark's directory ({key}={p.parent})"
    return None


SOURCE = Source("deepfashion", "a DeepFashion Category and Attribute Prediction Benchmark directory (Anno_coarse/, "
                               "Eval/, Img/; data.train: the train partition, data.test: the test one)",
                _is_deepfashion,
                lambda d, path, split, classes: load_deepfashion(
                    path, split, classes, d.deepfashion_attributes, d.deepfashion_test_split, verify=d.verify),
                keys=("deepfashion_attributes", "deepfashion_test_split", "verify"), priority=25,
                near_miss=_near_miss)
