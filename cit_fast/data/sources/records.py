"""The one record type every source produces: a column-oriented set of samples.

Each sample i has an image, a mask (1 = object/content, 0 = context), a label, a stratum A (the
common-sense group its context is drawn within; the class when nothing better is known) and a
visible bias B (-1 when unknown). Images and masks are either in memory (uint8 arrays) or files
decoded on demand. Columns rather than objects: intervention plans work on whole label/stratum
arrays at once.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ...errors import DataError
from .members import image_file

ImageColumn = Union[np.ndarray, List[str]]


@contextmanager
def named_decode_errors(kind: str, path: str) -> Iterator[None]:
    """Inside: a missing or undecodable file becomes one DataError naming ``kind`` and ``path`` (PIL raises
    many kinds for a corrupt file); a DataError raised for a shard member already names it."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{kind} {path}: file not found") from None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{kind} {path}: cannot decode ({type(e).__name__}: {e})") from None


def open_image(path: str, kind: str = "image") -> Image.Image:
    """File (or shard member) -> a lazily decoded PIL image (only its header read: size and mode are
    known, the pixels come on ``convert``/``load``); a DataError naming ``kind`` and ``path`` if it
    cannot be opened."""
    with named_decode_errors(kind, path):
        return Image.open(image_file(path, kind))


def decode_image(path: str) -> np.ndarray:
    """File (or shard member) -> uint8 (H, W, 3) RGB; a clear DataError naming it if it cannot be decoded."""
    with named_decode_errors("image", path), Image.open(image_file(path)) as im:
        return np.asarray(im.convert("RGB"))


def decode_mask(path: str) -> np.ndarray:
    """File (or shard member) -> uint8 (H, W) in 0..255 (grey; 1-bit and palette PNGs are converted)."""
    with named_decode_errors("mask", path), Image.open(image_file(path, "mask")) as im:
        if im.mode == "1":
            return np.asarray(im, dtype=np.uint8) * 255
        return np.asarray(im.convert("L"))


@dataclass
class SampleSet:
    """N samples in columns. ``images``/``masks`` hold arrays (N,H,W,3)/(N,H,W) or lists of paths."""

    images: ImageColumn
    masks: Optional[ImageColumn]  # None: no masks known (plans other than `none` need them)
    labels: np.ndarray  # (N,) int64 class indices, or (N, C) multi-hot float32
    classes: List[str]
    strata: np.ndarray = field(default=None)  # (N,) int64 common-sense group A
    bias: np.ndarray = field(default=None)  # (N,) int64 visible bias B, -1 = unknown
    name: str = "data"  # shown in error messages

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.labels = np.asarray(self.labels)
        if self.strata is None:
            self.strata = self.labels.astype(np.int64) if self.labels.ndim == 1 else np.zeros(n, np.int64)
        if self.bias is None:
            self.bias = np.full(n, -1, np.int64)
        self.strata = np.asarray(self.strata, dtype=np.int64)
        self.bias = np.asarray(self.bias, dtype=np.int64)
        for col, value in (("images", self.images), ("masks", self.masks), ("strata", self.strata),
                           ("bias", self.bias)):
            if value is not None and len(value) != n:
                raise DataError(f"{self.name}: column {col!r} has {len(value)} entries, labels has {n}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray) and (self.masks is None or isinstance(self.masks, np.ndarray))

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def image(self, i: int) -> np.ndarray:
        """uint8 (H, W, 3)."""
        if isinstance(self.images, np.ndarray):
            return self.images[i]
        return decode_image(self.images[i])

    def mask(self, i: int) -> np.ndarray:
        """uint8 (H, W), 255 = object; an all-object mask if the set has none."""
        if self.masks is None:
            img = self.image(i)
            return np.full(img.shape[:2], 255, np.uint8)
        if isinstance(self.masks, np.ndarray):
            return self.masks[i]
        return decode_mask(self.masks[i])

    def subset(self, idx: Sequence[int]) -> "SampleSet":
        idx = np.asarray(idx, dtype=np.int64)

        def take(col):
            if col is None:
                return None
            if isinstance(col, np.ndarray):
                return col[idx]
            if hasattr(col, "take"):  # a shard column (sources/shards.py)
                return col.take(idx)
            return [col[i] for i in idx]

        return SampleSet(take(self.images), take(self.masks), self.labels[idx], list(self.classes),
                         self.strata[idx], self.bias[idx], self.name)


def as_uint8_mask(masks: np.ndarray, where: str) -> np.ndarray:
    """uint8 0..255 or float 0..1 (or bool) masks -> uint8 0..255."""
    if masks.dtype == np.uint8:
        return masks
    if masks.dtype == bool:
        return masks.astype(np.uint8) * 255
    if np.issubdtype(masks.dtype, np.floating):
        lo, hi = float(masks.min(initial=0.0)), float(masks.max(initial=0.0))
        if lo < 0 or hi > 1:
            raise DataError(f"{where}: float masks must lie in [0, 1], found values in [{lo:g}, {hi:g}]")
        return np.round(masks * 255).astype(np.uint8)
    raise DataError(f"{where}: masks must be uint8 (0..255), bool or float (0..1), got dtype {masks.dtype}")
