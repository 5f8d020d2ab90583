"""The ``cocostuff`` source: COCO-Stuff as downloaded -> Singh et al.'s 171 labels and thing masks.

Two layouts, both as the cocostuff repository's README leaves them:

1. **Label maps** (``stuffthingmaps_trainval2017.zip``): a directory ``ROOT`` with ``labels.txt``
   (``0: unlabeled`` ... ``182: wood``, 183 lines), ``dataset/images/{train2017,val2017}/*.jpg`` and
   ``dataset/annotations/{train2017,val2017}/*.png``, 8-bit maps whose pixel is the class id - 1
   (0-181) and 255 unlabeled. ``data.train=ROOT`` reads train2017, ``data.test=ROOT`` val2017 (the
   2014 folders when the 2017 ones are absent); ``data.train=ROOT/dataset/images/train2014`` names a
   split folder itself. COCO-2014 images (``COCO_train2014_<12-digit id>.jpg``, as Singh et al. train)
   are matched to the 2017 maps by id, in either map folder (2014's val images are spread over
   2017's train and val). An image's labels are the classes present in its map.
2. **COCO format**: ``data.train=.../stuff_train2017.json`` (``stuff_trainval2017.zip``), merged with
   ``instances_train2017.json`` beside it (the things); stuff class 183 ``other`` is dropped. Images as
   for the ``coco`` source (``data.root``, beside the JSON, or ``<json dir>/../train2017/``).

Classes: the 182 ids without the 11 that have no annotations (street sign, hat, shoe, eye glasses,
plate, mirror, window, desk, door, blender, hair brush): 171, in id order, named as labels.txt (or the
JSONs) name them. Masks for the intervention's composite: the thing pixels (ids 1-91) of the map (the
thing instances of the JSON), written once as PNGs to a cache directory (``$CIT_FAST_CACHE`` or
``~/.cache/cit_fast``); reading the maps (labels, value check, masks) is done once per map folder and
cached too, then a start-up only stats the files.

Errors, one line naming the file: a map without its image (or an image without its map), a pixel
value outside 0-181 / 255, a labels.txt that is not 183 lines ``<id>: <name>``, an instances JSON
missing beside the stuff JSON.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .coco import cache_dir, coco_samples, default_mask_dir, read_annotations, split_name
from .files import check_pairs
from .multilabel import check_multi_hot
from .records import DataError, SampleSet
from .registry import Source
from ...utils import atomic_path

N_IDS = 183  # 0 unlabeled, 1-91 things, 92-182 stuff
UNLABELED = 255  # the maps' unlabeled pixel
LAST_THING = 91
# thing ids that COCO defines but never annotated (cocostuff's labels.md; Singh et al. drop them)
UNANNOTATED = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
KEPT_IDS = tuple(i for i in range(1, N_IDS) if i not in UNANNOTATED)  # the 171
OTHER_STUFF = 183  # the stuff JSON's "other": dropped

# labels.txt of the cocostuff repository (the tests write it; the loader reads the user's file)
LABEL_NAMES = (
    "unlabeled", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe",
    "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass",
    "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table",
    "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "hair brush", "banner", "blanket", "branch", "bridge", "building-other", "bush",
    "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other",
    "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
    "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform",
    "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea",
    "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other",
    "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood")
assert len(LABEL_NAMES) == N_IDS

_LABEL_LINE = re.compile(r"\s*(\d+)\s*:\s*(\S.*?)\s*")
_SPLIT_DIR = re.compile(r"(train|val)(2014|2017)")
_COCO2014 = re.compile(r"COCO_(?:train|val)2014_(\d{12})\.jpg")


def read_labels_txt(path: Path) -> List[str]:
    """labels.txt -> the 183 names, index = class id (0 unlabeled)."""
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise DataError(f"cocostuff {path}: file not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(f"cocostuff {path}: cannot read as UTF-8 text ({type(e).__name__}: {e})") from None
    if len(lines) != N_IDS:
        raise DataError(f"cocostuff {path}: {len(lines)} lines, expected {N_IDS} ('0: unlabeled' ... '182: wood', "
                        f"the cocostuff repository's labels.txt)")
    names = []
    for i, line in enumerate(lines):
        m = _LABEL_LINE.fullmatch(line)
        if not m or int(m.group(1)) != i:
            raise DataError(f"cocostuff {path}, line {i + 1}: {line.strip()!r}, expected '{i}: <class name>'")
        names.append(m.group(2).strip().lower())
    return names


# -- where the files are ----------------------------------------------------------------------------------

def _is_root(p: Path) -> bool:
    return p.is_dir() and (p / "labels.txt").is_file() and (p / "dataset" / "annotations").is_dir()


def _is_images_split(p: Path) -> bool:
    return (p.is_dir() and bool(_SPLIT_DIR.fullmatch(p.name)) and p.parent.name == "images"
            and _is_root(p.parent.parent.parent))


def _is_stuff_json(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() == ".json" and p.name.startswith("stuff_")


def _recognise(p: Path) -> bool:
    return _is_root(p) or _is_images_split(p) or _is_stuff_json(p)


def _near_miss(p: Path, key: str) -> Optional[str]:
    if p.is_dir() and p.name == "dataset" and (p / "annotations").is_dir() and (p / "images").is_dir():
        return (f"{key} {p}: COCO-Stuff's dataset/ folder; name the directory above it, which holds labels.txt "
                f"(data.train={p.parent})")
    if p.is_dir() and (p / "dataset" / "annotations").is_dir() and (p / "dataset" / "images").is_dir():
        return (f"{key} {p}: a COCO-Stuff directory without labels.txt ('0: unlabeled' ... '182: wood', from the "
                f"cocostuff repository); put it beside dataset/")
    return None


def _images_dir(path: Path, split: str) -> Tuple[Path, Path]:
    """(root with labels.txt, images split folder) of a root or a split folder."""
    if _is_images_split(path):
        return path.parent.parent.parent, path
    images = path / "dataset" / "images"
    name = "train" if split == "train" else "val"
    for year in ("2017", "2014"):
        if (images / f"{name}{year}").is_dir():
            return path, images / f"{name}{year}"
    raise DataError(f"cocostuff {path}: no {images / (name + '2017')} (nor {name}2014) for the {split} split; "
                    f"unzip COCO's {name}2017.zip into {images}")


def _pairs(root: Path, img_dir: Path) -> Tuple[List[Path], List[Path]]:
    """(images, maps), one map per image, in name order."""
    ann = root / "dataset" / "annotations"
    if img_dir.name.endswith("2017"):
        map_dir = ann / img_dir.name
        if not map_dir.is_dir():
            raise DataError(f"cocostuff {root}: no label maps {map_dir} for the images in {img_dir}; unzip "
                            f"stuffthingmaps_trainval2017.zip into {ann}")
        maps = sorted(map_dir.glob("*.png"))
        if not maps:
            raise DataError(f"cocostuff {map_dir}: no .png label maps")
        images = [img_dir / f"{m.stem}.jpg" for m in maps]
        for m, im in zip(maps, images):
            if not im.is_file():
                raise DataError(f"cocostuff map {m}: no image {im}")
        have = {m.stem for m in maps}
        extra = next((f for f in sorted(img_dir.glob("*.jpg")) if f.stem not in have), None)
        if extra is not None:
            raise DataError(f"cocostuff image {extra}: no label map {map_dir / (extra.stem + '.png')}")
        return images, maps
    # COCO-2014 names, matched by id to the 2017 maps of either folder
    images = sorted(f for f in img_dir.glob("*.jpg"))
    if not images:
        raise DataError(f"cocostuff {img_dir}: no .jpg images")
    map_dirs = [ann / "train2017", ann / "val2017"]
    maps = []
    for im in images:
        m = _COCO2014.fullmatch(im.name)
        if not m:
            raise DataError(f"cocostuff image {im}: not a COCO-2014 name (COCO_{img_dir.name}_<12-digit id>.jpg)")
        found = next((d / f"{m.group(1)}.png" for d in map_dirs if (d / f"{m.group(1)}.png").is_file()), None)
        if found is None:
            raise DataError(f"cocostuff image {im}: no label map {m.group(1)}.png in {map_dirs[0]} or {map_dirs[1]}")
        maps.append(found)
    return images, maps


# -- reading the maps (once; cached) ----------------------------------------------------------------------

def read_map(path: Path) -> np.ndarray:
    """A label map -> its pixel values uint8 (H, W), checked: 0-181 and 255 only."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise DataError(f"cocostuff map {path}: mode {im.mode}, expected an 8-bit label map (pixel = "
                                f"class id - 1, 255 unlabeled)")
            a = np.asarray(im)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cocostuff map {path}: cannot decode ({type(e).__name__}: {e})") from None
    return a


def _scan(path: Path, mask_path: Path) -> np.ndarray:
    """One map: the ids present (bool (183,)); its thing mask written when absent."""
    a = read_map(path)
    seen = np.zeros(256, bool)
    seen[a.ravel()] = True  # 3x np.bincount's speed on a 640x480 map
    bad = np.nonzero(seen[N_IDS - 1:UNLABELED])[0]
    if len(bad):
        v = int(bad[0]) + N_IDS - 1
        raise DataError(f"cocostuff map {path}: pixel value {v} ({int((a == v).sum())} pixels): expected "
                        f"0-{N_IDS - 2} (class id - 1) or {UNLABELED} (unlabeled)")
    present = np.zeros(N_IDS, bool)
    present[1:] = seen[:N_IDS - 1]
    if not mask_path.is_file():
        _write_png(mask_path, ((a < LAST_THING) * 255).astype(np.uint8))
    return present


def _write_png(path: Path, a: np.ndarray) -> None:
    """Temp then rename, safe in threads (``atomic_path`` sets the process umask to read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        Image.fromarray(a).save(tmp, format="PNG", compress_level=1)  # half level 6's time; ~2 KB a mask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _cache_key(maps: Sequence[Path]) -> str:
    h = hashlib.sha1()
    folders: Dict[Path, Path] = {}
    for m in maps:
        st = m.stat()
        folder = folders.get(m.parent) or folders.setdefault(m.parent, m.parent.resolve())
        h.update(f"{folder / m.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def scan_maps(maps: Sequence[Path], workers: int = 0) -> Tuple[np.ndarray, List[str]]:
    """(ids present, bool (N, 183); thing-mask paths) of the maps; the first pass decodes every map (in
    threads: PIL decodes without the GIL), later ones read the cached result."""
    out = cache_dir() / "cocostuff" / _cache_key(maps)
    masks = [out / "masks" / f"{m.parent.name}-{m.stem}.png" for m in maps]
    table = out / "present.npy"
    if table.is_file() and all(p.is_file() for p in masks):
        present = np.load(table)
        if present.shape == (len(maps), N_IDS):
            return present, [str(p) for p in masks]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        present = np.stack(list(pool.map(_scan, maps, masks)))
    with atomic_path(table) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, present)
    return present, [str(p) for p in masks]


def _columns(names: Sequence[str], labels: np.ndarray, classes: Optional[Sequence[str]], where: str
             ) -> Tuple[List[str], np.ndarray]:
    """The labels in the training classes' order (a test split read against them)."""
    if classes is None or list(classes) == list(names):
        return list(names), labels
    index = {c: j for j, c in enumerate(classes)}
    unknown = [n for j, n in enumerate(names) if n not in index and labels[:, j].any()]
    if unknown:
        raise DataError(f"{where}: classes {unknown[:5]} are not among the training classes")
    out = np.zeros((len(labels), len(classes)), np.float32)
    for j, n in enumerate(names):
        if n in index:
            out[:, index[n]] = labels[:, j]
    return list(classes), out


def load_cocostuff_maps(path: str, split: str, classes: Optional[Sequence[str]] = None,
                        verify: str = "header") -> SampleSet:
    """The label-map layout (module doc) as a multi-label SampleSet over the 171 classes."""
    root, img_dir = _images_dir(Path(path), split)
    names = read_labels_txt(root / "labels.txt")
    images, maps = _pairs(root, img_dir)
    present, masks = scan_maps(maps)
    labels = present[:, list(KEPT_IDS)].astype(np.float32)
    kept = [names[i] for i in KEPT_IDS]
    where = f"cocostuff {img_dir}"
    names_out, labels = _columns(kept, labels, classes, where)
    check_multi_hot(labels, names_out, where, require_all=classes is None and split == "train")
    if verify != "none":
        check_pairs([str(p) for p in images], masks, verify)
    return SampleSet([str(p) for p in images], masks, labels, names_out, name=where)


def merged_stuff_json(stuff_path: Path) -> Tuple[dict, Path]:
    """stuff_<split>.json + instances_<split>.json beside it -> one COCO dict (class 183 dropped)."""
    split = split_name(stuff_path)
    inst_path = stuff_path.with_name(f"instances_{split}.json")
    if not inst_path.is_file():
        raise DataError(f"cocostuff {stuff_path}: no {inst_path.name} beside it (COCO's thing annotations, "
                        f"annotations_trainval2017.zip); the stuff JSON holds the stuff classes only")
    stuff, inst = read_annotations(stuff_path), read_annotations(inst_path)
    stuff_cats = [c for c in stuff["categories"] if c["id"] != OTHER_STUFF]
    clash = sorted({c["id"] for c in stuff_cats} & {c["id"] for c in inst["categories"]})
    if clash:
        raise DataError(f"cocostuff {stuff_path}: category ids {clash[:5]} are also in {inst_path.name} (expected "
                        f"stuff ids {LAST_THING + 1}-{N_IDS - 1} beside the things' 1-{LAST_THING - 1})")
    images: Dict[int, dict] = {}
    for src, data in ((inst_path, inst), (stuff_path, stuff)):
        for im in data["images"]:
            known = images.setdefault(im["id"], im)
            if known["file_name"] != im["file_name"]:
                raise DataError(f"cocostuff {src}: image id {im['id']} is {im['file_name']!r}, but "
                                f"{known['file_name']!r} in the other file")
    anns = list(inst["annotations"]) + [a for a in stuff["annotations"] if a.get("category_id") != OTHER_STUFF]
    merged = {"images": sorted(images.values(), key=lambda im: im["id"]), "annotations": anns,
              "categories": list(inst["categories"]) + stuff_cats}
    for c in merged["categories"]:
        c["name"] = str(c["name"]).strip().lower()
    return merged, inst_path


def load_cocostuff_json(path: str, root: str = "", classes: Optional[Sequence[str]] = None,
                        verify: str = "header") -> SampleSet:
    """The COCO-format pair (module doc) as a multi-label SampleSet; masks: the thing instances."""
    stuff_path = Path(path)
    data, inst_path = merged_stuff_json(stuff_path)
    thing_ids = {c["id"] for c in data["categories"] if c["id"] <= LAST_THING}
    return coco_samples(data, stuff_path, f"cocostuff {stuff_path} + {inst_path.name}", root, classes,
                        masks=True, mask_dir=default_mask_dir(inst_path), verify=verify,
                        is_object=lambda ann: ann.get("category_id") in thing_ids)


def _load(d, path: str, split: str, classes: Optional[Sequence[str]]) -> SampleSet:
    if Path(path).suffix.lower() == ".json":
        return load_cocostuff_json(path, d.root, classes, verify=d.verify)
    return load_cocostuff_maps(path, split, classes, verify=d.verify)


SOURCE = Source("cocostuff", "a COCO-Stuff directory as downloaded (labels.txt, dataset/images, dataset/annotations; "
                             "data.train: train2017, data.test: val2017), one of its dataset/images/<split> "
                             "folders, or a stuff_<split>.json (instances_<split>.json beside it)",
                _recognise, _load, keys=("root", "verify"), priority=25, near_miss=_near_miss)
