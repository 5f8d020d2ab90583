"""The ``coco`` source: a COCO-format instances JSON -> multi-hot labels and object masks.

Labels: an image is positive for every category among its annotations (classes are the JSON's
categories in id order, named by ``name``; images without annotations are all-negative). Masks: the
union of the image's instance segmentations (polygons or RLE, decoded by pycocotools; an annotation
without a segmentation contributes its box), so the intervention composite can separate content
from context. Masks are written once as PNGs to a cache directory (``mask_dir``; default
``$CIT_FAST_CACHE`` or ``~/.cache/cit_fast``, under a name derived from the JSON file) and then read
like any other mask file, by both pipelines.

Image paths: ``root/<file_name>`` when ``root`` is given (``{split}`` in it is replaced by the
split named in the JSON file, ``instances_val2017.json`` -> ``val2017``); otherwise the file is
looked for beside the JSON, then in ``<json dir>/../<split>/`` (the standard COCO layout).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
from PIL import Image

from .files import check_pairs
from .multilabel import check_multi_hot
from ...utils import atomic_path
from .records import DataError, SampleSet
from .registry import Source


def split_name(ann_path: Path) -> str:
    """instances_val2017.json (stuff_val2017.json: COCO-Stuff's) -> val2017."""
    stem = ann_path.stem
    return stem.split("_", 1)[1] if stem.startswith(("instances_", "stuff_")) else stem


def _resolve_image(ann_path: Path, root: str, file_name: str) -> Path:
    split = split_name(ann_path)
    if root:
        return Path(root.replace("{split}", split)) / file_name
    beside = ann_path.parent / file_name
    if beside.exists():
        return beside
    std = ann_path.parent.parent / split / file_name
    return std if std.exists() else beside


def cache_dir() -> Path:
    """Where derived files (masks) are written once: $CIT_FAST_CACHE, else ~/.cache/cit_fast."""
    return Path(os.environ.get("CIT_FAST_CACHE", Path.home() / ".cache" / "cit_fast"))


def default_mask_dir(ann_path: Path) -> Path:
    st = ann_path.stat()
    key = hashlib.sha1(f"{ann_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    return cache_dir() / "coco_masks" / f"{ann_path.stem}-{key}"


def read_annotations(path: Path) -> dict:
    """A COCO-format annotations file as a dict (images, annotations, categories); a DataError naming the
    file if it is missing, not JSON or lacks one of those keys."""
    if not path.is_file():
        raise DataError(f"coco annotations {path}: not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"coco annotations {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"coco annotations {path}: expected a JSON object at the top level")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"coco annotations {path}: missing list {key!r}")
    for i, im in enumerate(data["images"]):
        for key in ("id", "file_name", "height", "width"):
            if key not in im:
                raise DataError(f"coco annotations {path}: images[{i}] has no {key!r}")
    for i, c in enumerate(data["categories"]):
        for key in ("id", "name"):
            if key not in c:
                raise DataError(f"coco annotations {path}: categories[{i}] has no {key!r}")
    return data


def _instance_mask(coco, ann: dict, h: int, w: int, where: str) -> np.ndarray:
    seg = ann.get("segmentation")
    if seg:
        try:
            m = coco.annToMask(ann)
        except Exception as e:
            raise DataError(f"{where}: cannot decode its segmentation ({type(e).__name__}: {e})") from None
        if m.shape != (h, w):
            raise DataError(f"{where}: segmentation decodes to {m.shape[1]}x{m.shape[0]}, the image is {w}x{h}")
        return m.astype(bool)
    box = ann.get("bbox")
    if not box or len(box) != 4:
        raise DataError(f"{where}: has neither a segmentation nor a bbox")
    x, y, bw, bh = box
    m = np.zeros((h, w), bool)
    m[int(max(y, 0)):int(np.ceil(y + bh)), int(max(x, 0)):int(np.ceil(x + bw))] = True
    return m


def load_coco(ann_file: str, root: str = "", classes: Optional[Sequence[str]] = None, masks: bool = True,
              mask_dir: str = "", verify: str = "header") -> SampleSet:
    """A COCO instances JSON as a multi-label SampleSet (with union masks unless masks=False)."""
    path = Path(ann_file)
    return coco_samples(read_annotations(path), path, f"coco annotations {path}", root, classes, masks,
                        Path(mask_dir) if mask_dir else default_mask_dir(path), verify)


def coco_samples(data: dict, path: Path, where: str, root: str = "", classes: Optional[Sequence[str]] = None,
                 masks: bool = True, mask_dir: Optional[Path] = None, verify: str = "header",
                 is_object: Callable[[dict], bool] = lambda ann: True) -> SampleSet:
    """COCO-format annotations already read (``read_annotations``) as a multi-label SampleSet: labels from
    every annotation, masks (written once to ``mask_dir``) the union of the annotations ``is_object``
    admits (COCO-Stuff's merged pair: the thing instances, not the stuff). ``path`` places the images
    (its split) and ``where`` names the file(s) in errors."""
    try:
        from pycocotools.coco import COCO
    except ImportError:  # pragma: no cover - the `coco` extra
        raise DataError("the coco source needs pycocotools: pip install 'cit_fast[coco]'") from None
    cats = sorted(data["categories"], key=lambda c: c["id"])
    names = [str(c["name"]) for c in cats]
    training_split = classes is None
    if classes is None:
        classes = names
    else:
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DataError(f"{where}: categories {unknown} are not among the training classes")
    col = {c["id"]: list(classes).index(str(c["name"])) for c in cats}
    img_ids = [im["id"] for im in data["images"]]
    if len(set(img_ids)) != len(img_ids):
        raise DataError(f"{where}: image ids are not unique")
    row = {iid: n for n, iid in enumerate(img_ids)}
    labels = np.zeros((len(img_ids), len(classes)), np.float32)
    for a in data["annotations"]:
        aw = f"{where}: annotation {a.get('id', '?')}"
        if a.get("image_id") not in row:
            raise DataError(f"{aw}: image_id {a.get('image_id')!r} is not among the images")
        if a.get("category_id") not in col:
            raise DataError(f"{aw}: category_id {a.get('category_id')!r} is not among the categories")
        labels[row[a["image_id"]], col[a["category_id"]]] = 1
    if not img_ids:
        raise DataError(f"{where}: no images")
    check_multi_hot(labels, classes, where, require_all=training_split)
    images = [str(_resolve_image(path, root, im["file_name"])) for im in data["images"]]
    mask_paths: Optional[List[str]] = None
    if masks:
        out_dir = mask_dir if mask_dir is not None else default_mask_dir(path)
        out_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO()
            coco.dataset = data  # already read and checked: the file is not parsed twice
            coco.createIndex()
        mask_paths = []
        for im in data["images"]:
            mp = out_dir / f"{im['id']}.png"
            mask_paths.append(str(mp))
            if mp.is_file():
                continue
            h, w = int(im["height"]), int(im["width"])
            m = np.zeros((h, w), bool)
            for a in (a for a in coco.imgToAnns.get(im["id"], []) if is_object(a)):
                m |= _instance_mask(coco, a, h, w, f"{where}: annotation {a.get('id', '?')}")
            with atomic_path(mp) as tmp:
                Image.fromarray(m.astype(np.uint8) * 255).save(tmp, format="PNG")
    if verify != "none":
        for img, im in zip(images, data["images"]):
            if not Path(img).is_file():
                raise DataError(f"image {img}: file not found ({where}, image id {im['id']}, "
                                f"file_name {im['file_name']!r})")
        check_pairs(images, mask_paths if mask_paths is not None else [None] * len(images), verify)
    return SampleSet(images, mask_paths, labels, list(classes), name=where)


SOURCE = Source("coco", "a .json COCO instances file (or a path template with {split})",
                lambda p: p.is_file() and p.suffix.lower() == ".json",
                lambda d, path, split, classes: load_coco(path, d.root, classes, verify=d.verify),
                keys=("root", "verify"), accepts=lambda p: p.is_dir(), template=True)
