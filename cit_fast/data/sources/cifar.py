"""The ``cifar`` source: CIFAR-10 and CIFAR-100 directories exactly as downloaded from
https://www.cs.toronto.edu/~kriz/cifar.html (unpacked, unchanged).

=====================  ===================================================  ============================
layout                 files                                                class names
=====================  ===================================================  ============================
CIFAR-10 python        ``data_batch_1`` .. ``data_batch_5``, ``test_batch``  ``batches.meta`` (label_names)
CIFAR-10 binary        ``data_batch_1.bin`` .. ``_5.bin``, ``test_batch.bin``  ``batches.meta.txt``
CIFAR-100 python       ``train``, ``test``                                   ``meta`` (fine / coarse names)
CIFAR-100 binary       ``train.bin``, ``test.bin``                           ``fine_label_names.txt`` ...
=====================  ===================================================  ============================

``data.train=DIR`` reads the training split of DIR and ``data.test=DIR`` its test split. Images are
32x32 RGB (stored as 3072 bytes per image, the red plane, then green, then blue). The python batches
are pickles: they are read with ``safe_pickle`` (no code in them can run). CIFAR-100's 20 coarse
classes can be the common-sense strata A (``strata="coarse"``). Object masks come from a sidecar
``DIR/masks_<split>.npz`` (``mask_sidecar``), written by ``cit-fast masks DIR``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .files import check_labels
from .mask_sidecar import read_sidecar, sidecar_for_cifar
from .records import DataError, SampleSet
from .registry import Source
from .safe_pickle import safe_load

SPLITS = ("train", "test")
STRATA = ("class", "coarse")  # A = the class, or CIFAR-100's 20 superclasses (config.STRATA)
SIDE = 32
PIXELS = SIDE * SIDE * 3


@dataclass(frozen=True)
class CifarLayout:
    kind: str  # cifar10-python | cifar10-binary | cifar100-python | cifar100-binary
    root: Path

    @property
    def dataset(self) -> str:
        return self.kind.split("-")[0]

    def split_files(self, split: str) -> List[Path]:
        r = self.root
        if self.kind == "cifar10-python":
            return [r / f"data_batch_{i}" for i in range(1, 6)] if split == "train" else [r / "test_batch"]
        if self.kind == "cifar10-binary":
            return [r / f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else [r / "test_batch.bin"]
        if self.kind == "cifar100-python":
            return [r / split]
        return [r / f"{split}.bin"]

    @property
    def meta_file(self) -> Path:
        return self.root / {"cifar10-python": "batches.meta", "cifar10-binary": "batches.meta.txt",
                            "cifar100-python": "meta", "cifar100-binary": "fine_label_names.txt"}[self.kind]


# a file whose presence tells the layout (any one split's file is enough to recognise it)
_MARKERS = (("cifar10-python", ("data_batch_1", "test_batch", "batches.meta")),
            ("cifar10-binary", ("data_batch_1.bin", "test_batch.bin", "batches.meta.txt")),
            ("cifar100-binary", ("train.bin", "test.bin", "fine_label_names.txt")),
            ("cifar100-python", ("train", "test", "meta")))


def _kind_of(d: Path) -> Optional[str]:
    for kind, names in _MARKERS:
        if kind == "cifar100-python":  # plain 'train'/'test' files: both, or one beside 'meta'
            train, test = (d / "train").is_file(), (d / "test").is_file()
            if (train and test) or ((d / "meta").is_file() and (train or test)):
                return kind
            continue
        if any((d / n).is_file() for n in names):
            return kind
    return None


def is_cifar_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding one of the CIFAR layouts (for data.source=auto)."""
    p = Path(path)
    return p.is_dir() and _kind_of(p) is not None


def detect_cifar(path: str | Path) -> CifarLayout:
    """The CIFAR layout of directory ``path``; a DataError naming it (and a CIFAR directory inside it,
    when the user gave the parent) otherwise."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"cifar {path}: not found")
    if not p.is_dir():
        raise DataError(f"cifar {path}: not a directory (expected the unpacked cifar-10-batches-py, "
                        f"cifar-10-batches-bin or cifar-100-python directory)")
    kind = _kind_of(p)
    if kind is None:
        inside = sorted(str(d) for d in p.iterdir() if d.is_dir() and _kind_of(d) is not None)
        hint = (f"; did you mean {inside[0]}?" if len(inside) == 1 else
                f"; did you mean one of {', '.join(inside[:4])}?" if inside else "")
        raise DataError(f"cifar {path}: no CIFAR files (expected data_batch_1..5 + test_batch + batches.meta, "
                        f"their .bin versions + batches.meta.txt, or CIFAR-100's train + test + meta){hint}")
    return CifarLayout(kind, p)


def class_names(lay: CifarLayout, which: str = "fine") -> List[str]:
    """Class names from the layout's meta file (``which="coarse"``: CIFAR-100's superclasses)."""
    meta = lay.root / "coarse_label_names.txt" if (which == "coarse" and lay.kind == "cifar100-binary") \
        else lay.meta_file
    if not meta.is_file():
        raise DataError(f"cifar {lay.root}: missing {meta.name} (the class names of this {lay.kind} directory)")
    if meta.suffix == ".txt":
        names = [ln.strip() for ln in meta.read_text(errors="replace").splitlines() if ln.strip()]
    else:
        d = safe_load(meta, "cifar meta")
        key = {"cifar10-python": b"label_names"}.get(lay.kind, b"coarse_label_names" if which == "coarse"
                                                     else b"fine_label_names")
        if not isinstance(d, dict) or key not in d:
            raise DataError(f"cifar meta {meta}: expected a dict with {key.decode()!r}, got "
                            f"{type(d).__name__}{' with ' + ', '.join(map(_s, d)) if isinstance(d, dict) else ''}")
        names = [_s(n) for n in d[key]]
    expected = {"cifar10": 10, "cifar100": 20 if which == "coarse" else 100}[lay.dataset]
    if len(names) != expected:
        raise DataError(f"cifar meta {meta}: {len(names)} class names, expected {expected} for {lay.dataset}")
    return names


def _s(x) -> str:
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def _read_python_batch(path: Path, label_keys: Sequence[bytes]) -> Tuple[np.ndarray, List[np.ndarray]]:
    where = f"cifar batch {path}"
    d = safe_load(path, "cifar batch")
    if not isinstance(d, dict):
        raise DataError(f"{where}: expected a dict, got {type(d).__name__}")
    d = {(k.encode() if isinstance(k, str) else k): v for k, v in d.items()}  # python-3 pickles: str keys
    for key in (b"data", *label_keys):
        if key not in d:
            raise DataError(f"{where}: missing {key.decode()!r} (has {', '.join(map(_s, d)) or 'nothing'})")
    data = d[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be uint8 [N, {PIXELS}], got {shape}")
    labels = []
    for key in label_keys:
        lab = np.asarray(d[key])
        if lab.ndim != 1 or len(lab) != len(data) or not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"{where}: {key.decode()!r} must be {len(data)} integers, "
                            f"got {lab.dtype} {list(lab.shape)}")
        labels.append(lab.astype(np.int64))
    return data, labels


def _read_binary_batch(path: Path, n_labels: int) -> Tuple[np.ndarray, List[np.ndarray]]:
    if not path.is_file():
        raise DataError(f"cifar batch {path}: file not found")
    raw = np.fromfile(path, np.uint8)
    rec = n_labels + PIXELS
    if raw.size == 0 or raw.size % rec:
        raise DataError(f"cifar batch {path}: {raw.size} bytes is not a whole number of {rec}-byte records "
                        f"(truncated or not a CIFAR binary batch); re-download it")
    raw = raw.reshape(-1, rec)
    return raw[:, n_labels:], [raw[:, i].astype(np.int64) for i in range(n_labels)]


def read_split(lay: CifarLayout, split: str) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(images uint8 (N, 32, 32, 3), fine labels (N,), coarse labels (N,) or None) of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = lay.split_files(split)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"cifar {lay.root}: missing {', '.join(missing)} ({lay.kind}, {split} split)")
    datas, fine, coarse = [], [], []
    for f in files:
        if lay.kind == "cifar10-python":
            data, (lab,) = _read_python_batch(f, (b"labels",))
        elif lay.kind == "cifar100-python":
            data, (lab, co) = _read_python_batch(f, (b"fine_labels", b"coarse_labels"))
            coarse.append(co)
        elif lay.kind == "cifar10-binary":
            data, (lab,) = _read_binary_batch(f, 1)
        else:  # cifar100-binary: <coarse byte><fine byte><pixels>
            data, (co, lab) = _read_binary_batch(f, 2)
            coarse.append(co)
        datas.append(data)
        fine.append(lab)
    data = np.concatenate(datas) if len(datas) > 1 else datas[0]
    images = np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return images, np.concatenate(fine), (np.concatenate(coarse) if coarse else None)


def load_cifar(path: str, split: str, classes: Optional[Sequence[str]] = None, strata: str = "class") -> SampleSet:
    """One split of a CIFAR directory as a SampleSet (fine labels for CIFAR-100).

    classes: the training classes, when reading a test split (must be this directory's classes).
    strata: "class" (A = the class) or "coarse" (A = CIFAR-100's superclass of each image).
    """
    if strata not in STRATA:
        raise DataError(f"data.strata: expected one of {', '.join(repr(s) for s in STRATA)}, got {strata!r}")
    lay = detect_cifar(path)
    names = class_names(lay)
    if classes is not None and list(classes) != names:
        raise DataError(f"cifar {path}: its classes ({lay.dataset}: {', '.join(names[:4])}, ...) are not the "
                        f"training classes ({', '.join(list(classes)[:4])}, ...)")
    if strata == "coarse" and lay.dataset != "cifar100":
        raise DataError(f"data.strata=coarse: {path} is {lay.dataset}, which has no coarse labels (CIFAR-100 only)")
    images, labels, coarse = read_split(lay, split)
    where = f"cifar {path} ({split})"
    check_labels(labels, len(names), where, require_all=split == "train")
    if strata == "coarse":
        check_labels(coarse, 20, f"{where}, coarse labels", require_all=False)
    masks = read_sidecar(sidecar_for_cifar(lay.root, split), images)
    return SampleSet(images, masks, labels, names, strata=coarse if strata == "coarse" else None,
                     name=f"cifar {path} ({split})")


def cifar_images(path: str, split: str) -> Dict[str, object]:
    """{'images', 'labels', 'classes', 'dataset'} of one split, for the synthetic benchmark."""
    lay = detect_cifar(path)
    images, labels, _ = read_split(lay, split)
    names = class_names(lay)
    check_labels(labels, len(names), f"cifar {path} ({split})", require_all=split == "train")
    return {"images": images, "labels": labels, "classes": names, "dataset": lay.dataset}


# ---------------------------------------------------------------------------------------------
# writing the same layouts (the tests and bench/table4_cifar.py make CIFAR-format files from other images)

def python2_pickle(obj) -> bytes:
    """``obj`` as Python 2's cPickle wrote the CIFAR batches: protocol 2, every str and bytes a
    BINSTRING (so a reader with encoding="bytes" gets bytes keys), numpy under numpy.core."""
    import io
    import pickle
    import struct

    class Py2Pickler(pickle._Pickler):  # the pure-python pickler: its dispatch table can be changed
        dispatch = pickle._Pickler.dispatch.copy()

        def save_str8(self, s):
            b = s.encode("latin-1") if isinstance(s, str) else bytes(s)
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b if len(b) < 256
                       else pickle.BINSTRING + struct.pack("<i", len(b)) + b)
            self.memoize(s)

        dispatch[str] = save_str8
        dispatch[bytes] = save_str8

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _planes(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): the red plane, the green plane, the blue plane."""
    images = np.asarray(images, np.uint8)
    if images.ndim != 4 or images.shape[1:] != (SIDE, SIDE, 3):
        raise ValueError(f"CIFAR images are (N, 32, 32, 3) uint8, got {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), PIXELS))


def write_cifar(root: str | Path, kind: str, splits: Dict[str, Tuple[np.ndarray, np.ndarray]],
                classes: Sequence[str], coarse: Optional[np.ndarray] = None,
                coarse_classes: Sequence[str] = ()) -> Path:
    """Write ``{'train': (images, labels), 'test': (images, labels)}`` in CIFAR layout ``kind``
    (cifar10-python, cifar10-binary, cifar100-python, cifar100-binary). The training split goes
    into five batches for CIFAR-10. ``coarse``: class -> superclass (CIFAR-100 only). Atomic per file."""
    from ...utils import atomic_path

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    def put(name: str, data) -> None:
        with atomic_path(root / name) as tmp:
            Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)

    lay = CifarLayout(kind, root)
    for split, (images, labels) in splits.items():
        planes, labels = _planes(images), np.asarray(labels, np.int64)
        files = lay.split_files(split)
        parts = np.array_split(np.arange(len(labels)), len(files))
        for f, idx in zip(files, parts):
            fine = labels[idx]
            if kind == "cifar10-python":
                put(f.name, python2_pickle({"batch_label": f"{split} batch", "labels": [int(x) for x in fine],
                                         "data": planes[idx], "filenames": [f"img_{i}.png" for i in idx]}))
            elif kind == "cifar100-python":
                put(f.name, python2_pickle({"filenames": [f"img_{i}.png" for i in idx], "batch_label": split,
                                         "fine_labels": [int(x) for x in fine],
                                         "coarse_labels": [int(coarse[x]) for x in fine], "data": planes[idx]}))
            elif kind == "cifar10-binary":
                put(f.name, np.concatenate([fine.astype(np.uint8)[:, None], planes[idx]], 1).tobytes())
            else:
                put(f.name, np.concatenate([coarse[fine].astype(np.uint8)[:, None], fine.astype(np.uint8)[:, None],
                                            planes[idx]], 1).tobytes())
    names = list(classes)
    if kind == "cifar10-python":
        put("batches.meta", python2_pickle({"num_cases_per_batch": 10000, "label_names": names, "num_vis": PIXELS}))
    elif kind == "cifar100-python":
        put("meta", python2_pickle({"fine_label_names": names, "coarse_label_names": list(coarse_classes)}))
    elif kind == "cifar10-binary":
        put("batches.meta.txt", "\n".join(names) + "\n\n")
    else:
        put("fine_label_names.txt", "\n".join(names) + "\n")
        put("coarse_label_names.txt", "\n".join(coarse_classes) + "\n")
    return root


def _cifar_parent(p: Path, key: str) -> Optional[str]:
    """The directory a CIFAR archive was unpacked into, named instead of the CIFAR directory itself."""
    if not p.is_dir():
        return None
    inside = sorted(str(c) for c in p.iterdir() if is_cifar_dir(c))
    if not inside:
        return None
    return (f"{key} {p}: holds the CIFAR director{'y' if len(inside) == 1 else 'ies'} {', '.join(inside)}; "
            f"name that directory ({key}={inside[0]})")


SOURCE = Source("cifar", "a CIFAR-10/100 directory as downloaded (data.train: its training split, data.test: "
                         "its test split)", is_cifar_dir,
                lambda d, path, split, classes: load_cifar(path, split, classes, strata=d.strata),
                keys=("strata",), priority=10, near_miss=_cifar_parent)
