"""Object masks of an array source, kept in a sidecar file beside the data (``cit-fast masks`` writes it).

CIFAR batches and ``.npz`` files hold images as arrays; their masks go into one ``.npz`` per split:

- a CIFAR directory ``DIR``: ``DIR/masks_train.npz`` and ``DIR/masks_test.npz``;
- an arrays file ``data/x/train.npz``: ``data/x/train.masks.npz`` beside it.

A sidecar holds ``masks`` uint8 (N, H, W) (255 = object, 0 = context) and ``images_crc``, the CRC-32
of the images it was computed on, so masks of other (re-generated, re-ordered) images are refused
instead of silently misaligned. When present, a sidecar's masks are the split's masks (over any
``masks`` array inside an ``.npz``: the sidecar is what ``cit-fast masks --overwrite`` wrote).
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from ...utils import atomic_path
from .records import DataError


def images_crc(images: np.ndarray) -> int:
    """CRC-32 of the images' bytes (about 1 s per GB): ties a sidecar to the images it masks."""
    return zlib.crc32(np.ascontiguousarray(images).data) & 0xFFFFFFFF


def sidecar_for_arrays(path: str | Path) -> Path:
    """``data/x/train.npz`` -> ``data/x/train.masks.npz``."""
    p = Path(path)
    return p.with_name(p.name[:-4] + ".masks.npz" if p.name.endswith(".npz") else p.name + ".masks.npz")


def sidecar_for_cifar(directory: str | Path, split: str) -> Path:
    """``DIR/masks_train.npz`` or ``DIR/masks_test.npz``."""
    return Path(directory) / f"masks_{split}.npz"


def read_sidecar(path: Path, images: np.ndarray) -> Optional[np.ndarray]:
    """The masks in sidecar ``path`` for ``images`` (N, H, W, 3), or None if there is no sidecar; a
    DataError naming the file if it is unreadable or was computed on other images."""
    if not path.is_file():
        return None
    where = f"masks sidecar {path}"
    try:
        with np.load(path, allow_pickle=False) as z:
            if "masks" not in z.files:
                raise DataError(f"{where}: missing array 'masks' (has {', '.join(z.files) or 'nothing'})")
            masks = z["masks"]
            crc = int(z["images_crc"]) if "images_crc" in z.files else None
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where}: not a readable .npz ({type(e).__name__}: {e}); delete it and rerun "
                        f"`cit-fast masks`") from None
    n, h, w = images.shape[:3]
    if masks.shape != (n, h, w) or masks.dtype != np.uint8:
        raise DataError(f"{where}: masks {masks.dtype} {list(masks.shape)} do not fit the images ({n}x{h}x{w}, "
                        f"uint8 expected); rerun `cit-fast masks --overwrite`")
    if crc is not None and crc != images_crc(images):
        raise DataError(f"{where}: computed on other images than these (CRC differs); rerun "
                        f"`cit-fast masks --overwrite` or delete it")
    return masks


def write_sidecar(path: Path, masks: np.ndarray, images: np.ndarray) -> Path:
    """Write ``masks`` for ``images`` to sidecar ``path`` (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, masks=np.asarray(masks, np.uint8), images_crc=np.uint32(images_crc(images)))
    return Path(path)
