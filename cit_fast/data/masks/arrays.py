"""``cit-fast masks`` for array sources: a CIFAR directory or an ``.npz`` file.

Their images are arrays, so their masks go into a sidecar beside the data (``sources/mask_sidecar``):

- ``cit-fast masks DIR`` (a CIFAR directory): ``DIR/masks_train.npz`` and ``DIR/masks_test.npz``,
  montage ``DIR/masks_montage.png``;
- ``cit-fast masks data/x/train.npz``: ``data/x/train.masks.npz``, montage
  ``data/x/train.masks_montage.png``.

Training reads the sidecar with the data (data.train / data.test as before). A split whose sidecar
exists, or an ``.npz`` that holds ``masks`` itself, is kept unless ``overwrite``. The report (written,
coverage, degenerate-mask warning, montage) is the folder command's.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..sources.cifar import class_names, detect_cifar, is_cifar_dir, read_split
from ..sources.mask_sidecar import sidecar_for_arrays, sidecar_for_cifar, write_sidecar
from ..sources.records import DataError
from .quality import coverage, spread, write_montage
from .outputs import MONTAGE_TILES, MaskReport
from .saliency import Masker, SaliencyMasker


@dataclass
class ArrayTarget:
    """One split's images and where its masks go."""

    name: str  # shown in the montage captions: "train", "test" or the file's stem
    images: np.ndarray  # uint8 (N, H, W, 3)
    class_of: List[str]  # per image: its class name (a masker that uses the class gets it)
    sidecar: Path
    has_masks: bool  # a sidecar exists, or the .npz holds masks


def is_array_source(src: str | Path) -> bool:
    """Whether ``src`` is an ``.npz`` file or a CIFAR directory (not a folder of images)."""
    p = Path(src)
    return (p.suffix.lower() == ".npz" and not p.is_dir()) or is_cifar_dir(p)


def array_targets(src: str | Path) -> List[ArrayTarget]:
    """The splits of an array source, read without any existing sidecar (so a stale one can be replaced)."""
    p = Path(src)
    if p.suffix.lower() == ".npz":
        if not p.is_file():
            raise DataError(f"masks: arrays file {src}: not found")
        try:
            with np.load(p, allow_pickle=False) as z:
                if "images" not in z.files:
                    raise DataError(f"masks: arrays file {src}: missing array 'images' "
                                    f"(has {', '.join(z.files) or 'nothing'})")
                images = z["images"]
                labels = z["labels"] if "labels" in z.files else None
                names = [str(c) for c in z["classes"]] if "classes" in z.files else None
                inside = "masks" in z.files
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"masks: arrays file {src}: not a readable .npz ({type(e).__name__}: {e})") from None
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise DataError(f"masks: arrays file {src}: 'images' must be uint8 [N,H,W,3] or [N,H,W], "
                            f"got {images.dtype} {list(images.shape)}")
        if images.ndim == 3:
            images = np.repeat(images[..., None], 3, axis=-1)  # as the arrays source reads it
        side = sidecar_for_arrays(p)
        return [ArrayTarget(p.stem, images, _class_names(labels, names, len(images)), side,
                            inside or side.is_file())]
    lay = detect_cifar(p)
    names = class_names(lay)
    out = []
    for split in ("train", "test"):
        images, labels, _ = read_split(lay, split)
        side = sidecar_for_cifar(lay.root, split)
        out.append(ArrayTarget(split, images, [names[i] if 0 <= i < len(names) else str(i) for i in labels],
                               side, side.is_file()))
    return out


def _class_names(labels: Optional[np.ndarray], names: Optional[Sequence[str]], n: int) -> List[str]:
    if labels is None or labels.ndim != 1 or len(labels) != n:  # multi-hot or none: no one class per image
        return ["image"] * n
    return [names[i] if names and 0 <= i < len(names) else str(int(i)) for i in labels]


def montage_for(src: str | Path) -> Path:
    p = Path(src)
    if p.suffix.lower() == ".npz":
        return p.with_name(p.name[:-4] + ".masks_montage.png")
    return p / "masks_montage.png"


def generate_array_masks(src: str | Path, masker: Optional[Masker] = None, *, overwrite: bool = False,
                         progress: Optional[bool] = None, montage: Optional[str | Path] = "") -> MaskReport:
    """Masks for every split of the array source ``src`` that has none (``overwrite``: all of them),
    each split's written to its sidecar at once (atomically) when the split is done."""
    from tqdm import tqdm

    masker = masker if masker is not None else SaliencyMasker()
    uses_class = getattr(masker, "uses_class", False)
    targets = array_targets(src)
    root = Path(src)
    report = MaskReport(masks_root=root.parent if root.suffix.lower() == ".npz" else root)
    todo = [t for t in targets if overwrite or not t.has_masks]
    report.skipped = sum(len(t.images) for t in targets if t not in todo)
    keys = [f"{t.name}/{i}" for t in todo for i in range(len(t.images))]
    shown = set(spread([f"{t.class_of[i]}/{t.name}{i}" for t in todo for i in range(len(t.images))],
                       MONTAGE_TILES)) if montage is not None else set()
    show = sys.stderr.isatty() if progress is None else progress
    tiles = []
    bar = tqdm(total=len(keys), desc="masks", unit="img", disable=not show)
    k = 0
    report.sidecars = []
    for t in todo:
        n, h, w = t.images.shape[:3]
        masks = np.empty((n, h, w), np.uint8)
        for i in range(n):
            img = t.images[i]
            m = masker(img, t.class_of[i]) if uses_class else masker(img)
            if m.shape != (h, w) or m.dtype != np.uint8:
                raise DataError(f"masks: the mask maker returned {m.dtype} {m.shape} for {t.name} image {i} "
                                f"({w}x{h}); expected uint8 of the image's size")
            masks[i] = m
            cov = coverage(m)
            report.coverages.append(cov)
            if not m.any():
                report.empty.append(f"{t.name}/{i}")
            elif m.all():
                report.full.append(f"{t.name}/{i}")
            if k in shown:
                tiles.append((img, m, f"{t.class_of[i]} {t.name}/{i} {100 * cov:.0f}%"))
            k += 1
            bar.update(1)
        write_sidecar(t.sidecar, masks, t.images)
        report.written += n
        report.sidecars.append(t.sidecar)
    bar.close()
    if tiles:
        report.montage = write_montage(tiles, Path(montage) if montage else montage_for(src))
    return report
