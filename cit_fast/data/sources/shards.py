"""Tar shards in the WebDataset layout plus our index: a data set read by sample index at scale.

A shard directory OUT holds ``shard-000000.tar``, ``shard-000001.tar``, ... and ``index.npz``.
Sample i is the members ``KEY.<ext>`` (the image: the source file's own bytes, or PNG for arrays),
``KEY.mask.<ext>`` (its object mask), ``KEY.cls`` (the label; multi-label: ``KEY.labels.json``, the
positive classes), and, where the source knows them, ``KEY.stratum`` and ``KEY.bias``; KEY is i
written with nine digits, so any WebDataset reader sees the usual layout. The index holds, for every
sample, its shard and the byte offset and size of its image's and mask's data, a CRC-32 of each, its
label, stratum and bias, and the class names: a sample is one mmap slice away, in any order, so the
intervention plan (partners drawn from the whole stratum), decode reuse, crops, exact mid-epoch
resume and a resume on another world size are the same as on the source folder. (A sequential
shuffle-buffer reader cannot draw a partner from the whole stratum.)

Masks computed later for a shard set are a column of their own: ``OUT/masks/shard-*.tar`` with the
same keys and ``OUT/masks/index.npz`` (``write_mask_column``); image shards are never rewritten.

Writing is resumable: each finished shard is renamed into place and then recorded in
``OUT/.parts/``; a rerun keeps those and continues after the last one.
"""
from __future__ import annotations

import io
import json
import os
import re
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import DataError, UsageError
from ...utils import atomic_path, atomic_write_bytes
from .members import ShardMember, member_bytes, read_bytes, unsafe_member_name
from .records import SampleSet
from .registry import Source

INDEX = "index.npz"
PARTS = ".parts"
MASKS = "masks"  # the masks column of a shard set computed after it was written
FORMAT = "cit-fast-shards"
VERSION = 1
KEY_DIGITS = 9
_EXT = re.compile(r"^[a-z0-9]{1,8}$")


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def sample_key(i: int) -> str:
    return f"{i:0{KEY_DIGITS}d}"


def is_shard_dir(path) -> bool:
    """A directory written by ``write_shards`` (its index present)."""
    p = Path(path)
    return p.is_dir() and (p / INDEX).is_file()


def parse_size(text: str) -> int:
    """'1GB', '256MB', '64k', '1000000' -> bytes (powers of 1024 for K/M/G/T)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise UsageError(f"--shard-size {text}: expected a size such as 1GB, 512MB or 64KB")
    value = float(m.group(1)) * 1024 ** "_kmgt".index(m.group(2) or "_")
    if value < 1:
        raise UsageError(f"--shard-size {text}: expected a positive size")
    return int(value)


# -- the index -------------------------------------------------------------------------------------
@dataclass
class ShardIndex:
    """Columns over the samples (``shard``, ``image``/``mask`` (N,2) offset and size, ``*_crc``, ``*_ext``
    codes into ``exts``, ``labels``, ``strata``, ``bias``) and the set's metadata."""

    root: Path
    shards: List[dict]  # {"name", "bytes", "first", "count"} in order
    classes: List[str]
    exts: List[str]
    columns: Dict[str, np.ndarray]
    source: str = ""

    @property
    def n(self) -> int:
        return len(self.columns["labels"])

    @property
    def has_masks(self) -> bool:
        return "mask" in self.columns

    def meta(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "samples": self.n, "classes": self.classes,
                "exts": self.exts, "shards": self.shards, "source": self.source, "has_masks": self.has_masks}

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(self.meta()).encode(), np.uint8), **self.columns)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "ShardIndex":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                cols = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise DataError(f"shard index {path}: not found") from None
        except Exception as e:
            raise DataError(f"shard index {path}: cannot read ({type(e).__name__}: {e})") from None
        try:
            meta = json.loads(bytes(cols.pop("meta")).decode())
        except Exception:
            raise DataError(f"shard index {path}: no readable 'meta' entry; not written by `cit-fast shard`") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(f"shard index {path}: format {meta.get('format')} v{meta.get('version')}, expected "
                            f"{FORMAT} v{VERSION}")
        idx = cls(path.parent, list(meta["shards"]), list(meta["classes"]), list(meta["exts"]), cols,
                  meta.get("source", ""))
        idx.check(path)
        return idx

    def check(self, path: Path) -> None:
        """Shape of every column, safe extensions and shard names, shard files present at full length."""
        n = self.n
        for k, v in self.columns.items():
            if len(v) != n:
                raise DataError(f"shard index {path}: column {k!r} has {len(v)} entries, labels has {n}")
        bad = [e for e in self.exts if not _EXT.match(e)]
        if bad:
            raise DataError(f"shard index {path}: member extension {bad[0]!r} refused (expected letters and digits)")
        for s in self.shards:
            name = s["name"]
            if unsafe_member_name(name) or "/" in name:
                raise DataError(f"shard index {path}: shard {name!r} is not a file name in {path.parent}: refused")
            f = self.root / name
            if not f.is_file():
                raise DataError(f"shard {f}: file not found (listed in {path})")
            size = f.stat().st_size
            if size < s["bytes"]:
                k = self._first_past(int(self.shards.index(s)), size)
                raise DataError(f"shard {f}: truncated ({size} of {s['bytes']} bytes): member {k} lies past its "
                                f"end; rewrite it with `cit-fast shard`")

    def _first_past(self, k: int, size: int) -> str:
        rows = np.nonzero(self.columns["shard"] == k)[0]
        for col, tag in (("image", ""), ("mask", "mask.")):
            if col not in self.columns:
                continue
            loc = self.columns[col]
            past = rows[loc[rows].sum(1) > size]
            if len(past):
                i = int(past[0])
                return f"{sample_key(i)}.{tag}{self.exts[int(self.columns[col + '_ext'][i])]}"
        return "(the end-of-archive blocks)"

    def path(self, k: int) -> str:
        return str(self.root / self.shards[k]["name"])

    def column(self, col: str) -> "ShardColumn":
        paths = [self.path(k) for k in range(len(self.shards))]
        tag = "mask." if col == "mask" else ""
        return ShardColumn(paths, self.columns["shard"], self.columns[col], self.columns[col + "_ext"],
                           self.exts, tag, np.arange(self.n, dtype=np.int64))


class ShardColumn(Sequence):
    """An image or mask column read from shards: item i is the ``ShardMember`` of sample i, made on demand
    (a list of 1.28M members would cost far more memory than these arrays)."""

    def __init__(self, paths, shard, loc, ext, exts, tag, keys):
        self.paths, self.shard, self.loc, self.ext, self.exts, self.tag, self.keys = \
            paths, shard, loc, ext, exts, tag, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        i = int(i)
        off, size = self.loc[i]
        return ShardMember(self.paths[self.shard[i]], f"{sample_key(int(self.keys[i]))}.{self.tag}"
                           f"{self.exts[self.ext[i]]}", int(off), int(size))

    def take(self, idx) -> "ShardColumn":
        idx = np.asarray(idx, dtype=np.int64)
        return ShardColumn(self.paths, self.shard[idx], self.loc[idx], self.ext[idx], self.exts, self.tag,
                           self.keys[idx])


# -- reading -----------------------------------------------------------------------------------------
def load_shards(path, classes: Optional[Sequence[str]] = None) -> SampleSet:
    """A shard directory -> SampleSet whose images and masks are shard members (``ShardColumn``).

    ``classes`` (the training classes) reads a test split: its labels are mapped onto them by name.
    Masks come from the index, or from the masks column ``OUT/masks/`` once it is complete.
    """
    root = Path(path)
    if not root.is_dir():
        what = "not found" if not root.exists() else "not a shard directory"
        raise DataError(f"shards {path}: {what}; with data.source=shards both data.train and data.test are "
                        f"`cit-fast shard` directories (shard the test split too: cit-fast shard SRC OUT --split test)")
    if not (root / INDEX).is_file():
        hint = " (an unfinished `cit-fast shard` run: rerun it to finish)" if (root / PARTS).is_dir() else ""
        raise DataError(f"shards {path}: no {INDEX}{hint}")
    idx = ShardIndex.load(root / INDEX)
    masks = idx.column("mask") if idx.has_masks else None
    if masks is None and (root / MASKS / INDEX).is_file():
        col = ShardIndex.load(root / MASKS / INDEX)
        if col.n != idx.n:
            raise DataError(f"shard masks {root / MASKS / INDEX}: {col.n} samples, the shards hold {idx.n}")
        masks = col.column("mask")
    labels = idx.columns["labels"]
    names = list(idx.classes)
    if classes is not None and list(classes) != names:
        known = {c: k for k, c in enumerate(classes)}
        unknown = [c for c in names if c not in known]
        if unknown:
            raise DataError(f"shards {path}: classes {unknown[:5]} are not among the training classes")
        remap = np.array([known[c] for c in names], np.int64)
        if labels.ndim == 1:
            labels = remap[labels]
        else:
            out = np.zeros((len(labels), len(classes)), labels.dtype)
            out[:, remap] = labels
            labels = out
        names = list(classes)
    return SampleSet(idx.column("image"), masks, labels, names, idx.columns["strata"], idx.columns["bias"],
                     name=str(root))


# -- writing -----------------------------------------------------------------------------------------
def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _encoded(col, i: int, kind: str) -> Tuple[bytes, str]:
    """(bytes, extension) of sample i's image or mask: a file's own bytes, an array as PNG."""
    if isinstance(col, np.ndarray):
        return _png(col[i]), "png"
    ref = col[i]
    name = ref.name if isinstance(ref, ShardMember) else str(ref)
    ext = Path(name).suffix.lower().lstrip(".")
    if not _EXT.match(ext or "-"):
        ext = "img"
    return bytes(read_bytes(ref, kind)), ext


def _label_member(labels: np.ndarray, i: int) -> Tuple[str, bytes]:
    y = labels[i]
    if labels.ndim == 1:
        return "cls", str(int(y)).encode()
    if np.isin(y, (0, 1)).all():
        return "labels.json", json.dumps(np.nonzero(y)[0].tolist()).encode()
    return "labels.json", json.dumps([float(v) for v in y]).encode()


class TarOut:
    """One shard being written: members appended with deterministic headers, offsets recorded."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "wb")
        self.tar = tarfile.open(fileobj=self.f, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> Tuple[int, int]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        self.tar.addfile(info, io.BytesIO(data))
        end = self.tar.offset
        return end - (-(-len(data) // 512) * 512), len(data)

    @property
    def size(self) -> int:
        return self.tar.offset

    def close(self) -> int:
        self.tar.close()
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return self.path.stat().st_size


@dataclass
class ShardJob:
    """What a ``write_shards`` run did."""

    out: Path
    samples: int = 0
    shards: int = 0
    kept: int = 0  # shards finished by an earlier run
    written: int = 0
    bytes: int = 0
    complete: bool = False
    notes: List[str] = field(default_factory=list)

    def lines(self) -> List[str]:
        return [f"{self.out}: {self.samples} samples in {self.shards} shards ({self.bytes / 2 ** 20:.1f} MiB; "
                f"{self.written} written now, {self.kept} kept from an earlier run)"] + self.notes


def _job_meta(samples: SampleSet, source: str) -> dict:
    return {"source": source, "samples": len(samples), "classes": list(samples.classes),
            "masks": samples.masks is not None, "multilabel": bool(samples.multilabel)}


def _exts_code(exts: List[str], e: str) -> int:
    if e not in exts:
        exts.append(e)
    return exts.index(e)


def write_shards(samples: SampleSet, out, *, shard_bytes: int = 1 << 30, samples_per_shard: int = 0,
                 source: str = "", progress: Optional[bool] = None, stop_after_shards: int = 0) -> ShardJob:
    """Write ``samples`` as tar shards + index into ``out`` (see the module docstring).

    A shard closes at ``samples_per_shard`` samples, or before a sample would take it past
    ``shard_bytes``. Finished shards of an interrupted run on the same source are kept.
    stop_after_shards: stop after writing that many shards in this call (tests of the resume).
    """
    from tqdm import tqdm

    out = Path(out)
    parts = out / PARTS
    meta = _job_meta(samples, source)
    if (out / INDEX).is_file():
        old = ShardIndex.load(out / INDEX)
        if old.source == source and old.n == len(samples):
            job = ShardJob(out, old.n, len(old.shards), kept=len(old.shards), complete=True,
                           bytes=sum(s["bytes"] for s in old.shards))
            job.notes.append("already complete: nothing to do (a new OUT or --overwrite rewrites it)")
            return job
        raise UsageError(f"shard: {out} already holds a shard set of {old.source or 'another source'} "
                         f"({old.n} samples); name a new OUT or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise UsageError(f"shard: OUT {out} is a file, expected a directory")
    if out.is_dir() and any(out.iterdir()) and not parts.is_dir():
        raise UsageError(f"shard: OUT {out} exists and holds other files (no shard run of ours); "
                         f"name a new directory")
    parts.mkdir(parents=True, exist_ok=True)
    job_file = parts / "job.json"
    if job_file.is_file():
        old = json.loads(job_file.read_text())
        if old != meta:
            raise UsageError(f"shard: {out} holds an unfinished run of {old.get('source')} ({old.get('samples')} "
                             f"samples); resume it with the same SRC, or name a new OUT / pass --overwrite")
    else:
        atomic_write_bytes(job_file, json.dumps(meta).encode())
    for stale in out.glob(".shard-*.tmp"):  # a run killed while writing a shard
        stale.unlink()

    # finished shards of an earlier run: contiguous from shard 0
    done: List[dict] = []
    while (parts / f"{len(done):06d}.npz").is_file():
        k = len(done)
        with np.load(parts / f"{k:06d}.npz", allow_pickle=False) as z:
            rec = {key: z[key] for key in z.files}
        info = json.loads(bytes(rec.pop("meta")).decode())
        f = out / info["name"]
        if not f.is_file() or f.stat().st_size != info["bytes"]:
            break  # rewritten below
        done.append(dict(info=info, cols=rec))
    job = ShardJob(out, len(samples), kept=len(done))
    start = done[-1]["info"]["first"] + done[-1]["info"]["count"] if done else 0

    n = len(samples)
    exts: List[str] = list(done[-1]["info"]["exts"]) if done else []
    # a stratum member where the source knows more than the class (multi-label sets: any group at all)
    with_strata = not np.array_equal(samples.strata, samples.labels) if samples.labels.ndim == 1 \
        else bool(samples.strata.any())
    with_bias = bool((samples.bias >= 0).any())
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=n, initial=start, desc="shard", unit="img", disable=not show)
    i, k = start, len(done)
    written = 0
    try:
        while i < n:
            if stop_after_shards and written >= stop_after_shards:
                return job
            name = shard_name(k)
            rows: Dict[str, list] = {c: [] for c in ("image", "image_crc", "image_ext", "mask", "mask_crc", "mask_ext")}
            first = i
            with atomic_path(out / name) as tmp:
                t = TarOut(tmp)
                while i < n:
                    key = sample_key(i)
                    img, ext = _encoded(samples.images, i, "image")
                    msk = _encoded(samples.masks, i, "mask") if samples.masks is not None else None
                    size = len(img) + (len(msk[0]) if msk else 0) + 4 * 512
                    count = i - first
                    if count and ((samples_per_shard and count >= samples_per_shard) or
                                  (not samples_per_shard and t.size + size > shard_bytes)):
                        break
                    rows["image"].append(t.add(f"{key}.{ext}", img))
                    rows["image_crc"].append(zlib.crc32(img))
                    rows["image_ext"].append(_exts_code(exts, ext))
                    if msk:
                        rows["mask"].append(t.add(f"{key}.mask.{msk[1]}", msk[0]))
                        rows["mask_crc"].append(zlib.crc32(msk[0]))
                        rows["mask_ext"].append(_exts_code(exts, msk[1]))
                    lab, data = _label_member(samples.labels, i)
                    t.add(f"{key}.{lab}", data)
                    if with_strata:
                        t.add(f"{key}.stratum", str(int(samples.strata[i])).encode())
                    if with_bias:
                        t.add(f"{key}.bias", str(int(samples.bias[i])).encode())
                    i += 1
                    bar.update(1)
                size = t.close()
            info = {"name": name, "bytes": size, "first": first, "count": i - first, "exts": exts}
            cols = {"image": np.asarray(rows["image"], np.int64).reshape(-1, 2),
                    "image_crc": np.asarray(rows["image_crc"], np.uint32),
                    "image_ext": np.asarray(rows["image_ext"], np.uint8)}
            if samples.masks is not None:
                cols.update(mask=np.asarray(rows["mask"], np.int64).reshape(-1, 2),
                            mask_crc=np.asarray(rows["mask_crc"], np.uint32),
                            mask_ext=np.asarray(rows["mask_ext"], np.uint8))
            buf = io.BytesIO()
            np.savez(buf, meta=np.frombuffer(json.dumps(info).encode(), np.uint8), **cols)
            atomic_write_bytes(parts / f"{k:06d}.npz", buf.getvalue())
            done.append(dict(info=info, cols=cols))
            k += 1
            written += 1
            job.written += 1
    finally:
        bar.close()
    # every shard is there: the index, then the parts go
    exts = list(done[-1]["info"]["exts"]) if done else []
    shard_col = np.concatenate([np.full(d["info"]["count"], j, np.int32) for j, d in enumerate(done)]) \
        if done else np.zeros(0, np.int32)
    cols = {"shard": shard_col, "labels": samples.labels, "strata": samples.strata, "bias": samples.bias}
    for c in ("image", "image_crc", "image_ext") + (("mask", "mask_crc", "mask_ext") if samples.masks is not None else ()):
        cols[c] = np.concatenate([d["cols"][c] for d in done]) if done else np.zeros((0, 2) if c in ("image", "mask") else 0)
    shards = [{k2: d["info"][k2] for k2 in ("name", "bytes", "first", "count")} for d in done]
    index = ShardIndex(out, shards, list(samples.classes), exts, cols, source)
    index.save(out / INDEX)
    for f in parts.iterdir():
        f.unlink()
    parts.rmdir()
    job.shards, job.bytes, job.complete = len(done), sum(s["bytes"] for s in shards), True
    return job


# -- verification ------------------------------------------------------------------------------------
def verify_shards(path, progress: Optional[bool] = None) -> List[str]:
    """Re-read every member against the index: each tar's headers (safe names, the offsets and sizes the
    index gives) and the CRC-32 of every image and mask. Lines of what was checked; a DataError naming
    the shard and member at the first mismatch."""
    from tqdm import tqdm

    root = Path(path)
    idx = ShardIndex.load(root / INDEX)
    lines = []
    for sub, index in ((root, idx),) + (((root / MASKS, ShardIndex.load(root / MASKS / INDEX)),)
                                        if (root / MASKS / INDEX).is_file() else ()):
        expect: Dict[str, Dict[str, Tuple[int, int]]] = {}
        for col in ("image", "mask"):
            if col not in index.columns:
                continue
            c = index.column(col)
            for i in range(index.n):
                ref = c[i]
                expect.setdefault(ref.shard, {})[ref.name] = (ref.offset, ref.size)
        show = sys.stderr.isatty() if progress is None else progress
        members = 0
        for k in tqdm(range(len(index.shards)), desc="verify", unit="shard", disable=not show):
            shard = index.path(k)
            want = expect.get(shard, {})
            for name, off, size in scan_tar(shard):
                if name in want:
                    if want[name] != (off, size):
                        raise DataError(f"shard {shard}: member {name} at bytes {off}+{size}, the index says "
                                        f"{want[name][0]}+{want[name][1]}")
                    del want[name]
                members += 1
            if want:
                raise DataError(f"shard {shard}: member {next(iter(want))} listed in the index is not in the tar")
        for col in ("image", "mask"):
            if col not in index.columns:
                continue
            c, crc = index.column(col), index.columns[col + "_crc"]
            for i in range(index.n):
                ref = c[i]
                if zlib.crc32(member_bytes(ref, col)) != int(crc[i]):
                    raise DataError(f"shard {ref.shard}: member {ref.name}: CRC-32 differs from the index "
                                    f"(corrupt data)")
        lines.append(f"verified {sub}: {len(index.shards)} shards, {members} members, {index.n} samples "
                     f"(headers, offsets, CRC-32 of every image{' and mask' if index.has_masks else ''})")
    return lines


def scan_tar(shard: str) -> Iterator[Tuple[str, int, int]]:
    """(name, data offset, size) of every member, read as a stream (never extracted); a member named
    with '..' or an absolute path is refused, a truncated or corrupt tar is one DataError."""
    try:
        with tarfile.open(shard, mode="r:") as tar:
            for info in tar:
                if unsafe_member_name(info.name):
                    raise DataError(f"shard {shard}: member {info.name!r} is named with '..' or an absolute path: "
                                    f"refused (shards are read in place, never extracted)")
                if info.isfile():
                    yield info.name, info.offset_data, info.size
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"shard {shard}: not a readable tar ({type(e).__name__}: {e})") from None


SOURCE = Source("shards", "a `cit-fast shard` output directory (index.npz)",
                lambda p: p.is_dir() and ((p / INDEX).is_file() or (p / PARTS).is_dir()),
                lambda d, path, split, classes: load_shards(path, classes), priority=20)
