"""The embedded benchmark data, generated procedurally so nothing is ever downloaded.

1. ``make_shapes``: a CIFAR-like 10-class dataset of small RGB images, each a procedurally drawn
   object (circle, ring, square, frame, triangle, cross, star, crescent, bar, L-shape) of random
   colour, size, rotation and position on a cluttered, textured background, with its exact soft
   object mask. Hard enough that a small ResNet does not reach 100%, easy enough to learn on a CPU.
2. ``make_cit_benchmark``: the CIT paper's synthetic CIFAR V1-V4 (Section V, Table III): every
   image gets a 4-pixel padded border (the context C) whose hue and brightness are set by common
   sense A (a class-determined value shared by several classes) and bias B (assigned per class
   arbitrarily in training, drawn afresh in test so that it no longer tells the class).

   | version  | A determines       | B determines       |
   |----------|--------------------|--------------------|
   | V1       | brightness & hue   | -                  |
   | V2       | hue                | brightness         |
   | V3       | brightness         | hue                |
   | V4       | -                  | brightness & hue   |
   | original | - (grey border)    | -                  |

   Sample masks cover the interior (the object content x), so the border is the context c that
   intervention plans swap: stratify_c pairs x with a border of the same A; stratify_b re-draws B.

   The images are the embedded shapes (24 px) by default, or real CIFAR images (``images=``, 32 px,
   as the paper): K classes get K / 2 hues and 2 brightness values, so CIFAR-10 has hue(5) and
   CIFAR-100 hue(50), each with brig.(2) (Table III). On real images the border is the flat colour
   the paper pads with; the embedded shapes keep their faint border noise (their results are fixed).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ...utils import atomic_path
from ..sources.records import DataError, SampleSet

SHAPE_CLASSES = ("circle", "ring", "square", "frame", "triangle", "cross", "star", "crescent", "bar", "ell")
N_HUES = 5  # Table III, CIFAR-10: hue(5) (CIFAR-100: hue(50), i.e. num_classes / N_BRIGHTNESS)
N_BRIGHTNESS = 2  # Table III: brig.(2)
BRIGHTNESS_VALUES = (0.45, 0.95)  # HSV value of the border colour for B/A = 0, 1


def _shape_inside(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of shape `cls` in local coordinates u, v (object spans about [-1, 1])."""
    r = np.hypot(u, v)
    a = np.maximum(np.abs(u), np.abs(v))
    if cls == 0:  # circle
        return r < 0.8
    if cls == 1:  # ring
        return (r > 0.45) & (r < 0.85)
    if cls == 2:  # square
        return a < 0.68
    if cls == 3:  # frame
        return (a > 0.42) & (a < 0.78)
    if cls == 4:  # triangle (equilateral, pointing up before rotation)
        return (v > -0.45) & (np.sqrt(3) * u - v < 0.9) & (-np.sqrt(3) * u - v < 0.9)
    if cls == 5:  # cross
        return ((np.abs(u) < 0.24) & (np.abs(v) < 0.85)) | ((np.abs(v) < 0.24) & (np.abs(u) < 0.85))
    if cls == 6:  # five-pointed star
        theta = np.arctan2(v, u)
        return r < 0.38 + 0.5 * (0.5 + 0.5 * np.cos(5 * theta))
    if cls == 7:  # crescent
        return (r < 0.82) & (np.hypot(u - 0.4, v) > 0.62)
    if cls == 8:  # bar (thin ellipse)
        return (u / 0.92) ** 2 + (v / 0.3) ** 2 < 1
    if cls == 9:  # L-shape
        return ((np.abs(u + 0.45) < 0.24) & (np.abs(v) < 0.85)) | ((np.abs(v - 0.61) < 0.24) & (np.abs(u) < 0.7))
    raise ValueError(f"unknown shape class {cls}")


def random_colors(rng: np.random.Generator, n: int, sat=(0.35, 1.0), val=(0.35, 1.0)) -> np.ndarray:
    """(n, 3) float32 RGB in [0, 1]: uniform hues, saturation and value drawn in ``sat`` and ``val``."""
    h = rng.random(n)
    s = rng.uniform(*sat, n)
    v = rng.uniform(*val, n)
    return np.array([colorsys.hsv_to_rgb(*x) for x in zip(h, s, v)], np.float32).reshape(n, 3)


def smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """(n, size, size) low-frequency noise in [0, 1]: a random grid upsampled bilinearly."""
    import torch
    import torch.nn.functional as F

    grid = torch.from_numpy(rng.random((n, 1, cells, cells), dtype=np.float32))
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def make_shapes(n_per_class: int, size: int = 24, seed: int = 0, supersample: int = 2
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Procedural object dataset: images uint8 (N,size,size,3), object masks uint8 (N,size,size), labels."""
    rng = np.random.default_rng([seed, 0x5A4E])
    n_cls = len(SHAPE_CLASSES)
    n = n_cls * n_per_class
    labels = np.repeat(np.arange(n_cls), n_per_class)
    ss = size * supersample
    # pixel centres in [-1, 1]
    coords = (np.arange(ss, dtype=np.float32) + 0.5) / ss * 2 - 1
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    scale = rng.uniform(0.55, 0.85, n).astype(np.float32)  # object radius / half image
    rot = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    shift = rng.uniform(-0.22, 0.22, (n, 2)).astype(np.float32)
    aspect = rng.uniform(0.8, 1.25, n).astype(np.float32)
    masks_ss = np.empty((n, ss, ss), bool)
    for i in range(n):
        x = (xs - shift[i, 0]) / scale[i]
        y = (ys - shift[i, 1]) / scale[i]
        c, s = np.cos(rot[i]), np.sin(rot[i])
        u = (c * x + s * y) * aspect[i]
        v = (-s * x + c * y) / aspect[i]
        masks_ss[i] = _shape_inside(int(labels[i]), u, v)
    # soft mask: the fraction of sub-pixels inside the object
    masks = masks_ss.reshape(n, size, supersample, size, supersample).mean(axis=(2, 4)).astype(np.float32)

    # background: two random colours mixed by smooth noise, plus clutter blobs
    c1, c2 = random_colors(rng, n, val=(0.2, 0.9)), random_colors(rng, n, val=(0.2, 0.9))
    mix = smooth_noise(rng, n, size, 4)[..., None]
    bg = c1[:, None, None] * mix + c2[:, None, None] * (1 - mix)
    pix = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    py, px = np.meshgrid(pix, pix, indexing="ij")
    for _ in range(2):  # clutter: small soft ellipses of random colour
        cx, cy = rng.uniform(-1, 1, (2, n, 1, 1)).astype(np.float32)
        rx, ry = rng.uniform(0.06, 0.18, (2, n, 1, 1)).astype(np.float32)
        blob = np.clip(1.5 - ((px - cx) / rx) ** 2 - ((py - cy) / ry) ** 2, 0, 1)[..., None]
        blob *= (rng.random((n, 1, 1, 1)) < 0.5)
        bg = bg * (1 - blob) + random_colors(rng, n)[:, None, None] * blob
    # object: a random colour with a little shading texture
    obj_col = random_colors(rng, n)
    shade = 0.75 + 0.5 * smooth_noise(rng, n, size, 3)[..., None]
    obj = np.clip(obj_col[:, None, None] * shade, 0, 1)
    m = masks[..., None]
    img = m * obj + (1 - m) * bg
    img = img + rng.normal(0, 0.04, img.shape).astype(np.float32)
    images = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return images, np.round(masks * 255).astype(np.uint8), labels.astype(np.int64)


@dataclass(frozen=True)
class CITAssignment:
    """Per class: the common-sense value A, the training bias B and how they set the border colour."""

    version: str
    a_of_class: np.ndarray  # (K,) int
    b_of_class: np.ndarray  # (K,) int; all 0 where B has no effect (V1, original)
    hue_from: str  # "a", "b" or "" (grey)
    brightness_from: str
    n_hues: int = N_HUES  # num_classes / N_BRIGHTNESS: 5 for CIFAR-10, 50 for CIFAR-100

    def color(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(N, 3) float RGB border colour for common-sense values a and bias values b."""
        a, b = np.asarray(a), np.asarray(b)
        if not self.hue_from:
            return np.full((len(a), 3), 0.5, np.float32)
        src = {"a": a, "b": b}
        if self.hue_from == self.brightness_from:  # one variable sets both: value v -> (hue, bright)
            v = src[self.hue_from]
            hue_idx, bright_idx = v % self.n_hues, v // self.n_hues
        else:
            hue_idx, bright_idx = src[self.hue_from], src[self.brightness_from]
        # one HSV conversion per distinct (hue, brightness) pair: a CIFAR split has 50000 samples
        pairs, inverse = np.unique(np.stack([hue_idx, bright_idx], 1).reshape(-1, 2), axis=0, return_inverse=True)
        table = np.array([colorsys.hsv_to_rgb(h / self.n_hues, 0.85, BRIGHTNESS_VALUES[int(br)]) for h, br in pairs],
                         np.float32).reshape(len(pairs), 3)
        return table[inverse.reshape(-1)].reshape(len(a), 3)


def cit_assignment(version: str, num_classes: int = 10, seed: int = 0) -> CITAssignment:
    """Table III for a K-class dataset (K = 10: hue(5), K = 100: hue(50); brig.(2) for both): which
    classes share A and which B each class gets in training."""
    if num_classes < 2 or num_classes % N_BRIGHTNESS:
        raise ValueError(f"the CIT benchmark needs an even number of classes (hue(K/2) x brig.(2)), got {num_classes}")
    n_hues = num_classes // N_BRIGHTNESS
    perm = np.random.default_rng([seed, 0xC17]).permutation(num_classes)
    none = np.zeros(num_classes, np.int64)  # B null: one value that sets nothing
    if version == "original":
        return CITAssignment(version, np.arange(num_classes), none, "", "", n_hues)
    if version == "V1":  # A: brightness & hue, one value per class
        return CITAssignment(version, perm.copy(), none, "a", "a", n_hues)
    if version == "V2":  # A: hue (pairs of classes), B: brightness
        return CITAssignment(version, perm // N_BRIGHTNESS, perm % N_BRIGHTNESS, "a", "b", n_hues)
    if version == "V3":  # A: brightness (two groups of K/2), B: hue
        return CITAssignment(version, perm // n_hues, perm % n_hues, "b", "a", n_hues)
    if version == "V4":  # B: brightness & hue, one value per class; A null (one group)
        return CITAssignment(version, np.zeros(num_classes, np.int64), perm.copy(), "b", "b", n_hues)
    raise ValueError(f"synthetic version must be one of original, V1, V2, V3, V4; got {version!r}")


def _test_bias(assign: CITAssignment, labels: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """B for test samples: drawn from the B values of the class's A group (random), or from those
    values minus the class's own training value (misleading)."""
    if assign.version in ("original", "V1"):
        return assign.b_of_class[labels]
    out = np.empty(len(labels), np.int64)
    for i, y in enumerate(labels):
        group = assign.a_of_class == assign.a_of_class[y]
        values = np.unique(assign.b_of_class[group])
        if mode == "misleading":
            values = values[values != assign.b_of_class[y]]
        out[i] = rng.choice(values)
    return out


def pad_with_context(images: np.ndarray, colors: np.ndarray, pad: int, rng: np.random.Generator,
                     noise: float = 0.02) -> Tuple[np.ndarray, np.ndarray]:
    """Pad (N,H,W,3) uint8 images with a `pad`-pixel border of per-sample colour; mask = interior."""
    n, h, w, _ = images.shape
    H, W = h + 2 * pad, w + 2 * pad
    if noise:
        border = colors[:, None, None, :] + rng.normal(0, noise, (n, H, W, 3)).astype(np.float32)
        out = np.clip(np.round(border * 255), 0, 255).astype(np.uint8)
    else:  # a flat border, without an (N, H, W, 3) float temporary
        out = np.empty((n, H, W, 3), np.uint8)
        out[:] = np.clip(np.round(colors * 255), 0, 255).astype(np.uint8)[:, None, None, :]
    out[:, pad:pad + h, pad:pad + w] = images
    mask = np.zeros((n, H, W), np.uint8)
    mask[:, pad:pad + h, pad:pad + w] = 255
    return out, mask


@dataclass(frozen=True)
class SourceImages:
    """Real images to build the benchmark from: per split (images uint8 (N, H, W, 3), labels (N,))."""

    name: str  # e.g. "cifar10", shown in sample-set names
    classes: Sequence[str]
    splits: Dict[str, Tuple[np.ndarray, np.ndarray]]


IMAGE_DATASETS = ("cifar10", "cifar100")


def load_source_images(spec: str) -> SourceImages:
    """``cifar10:DIR`` or ``cifar100:DIR`` (a CIFAR directory as downloaded, see sources/cifar.py)."""
    from ..sources.cifar import cifar_images

    name, sep, path = spec.partition(":")
    if not sep or name not in IMAGE_DATASETS or not path:
        raise DataError(f"--images {spec}: expected {' or '.join(d + ':DIR' for d in IMAGE_DATASETS)} "
                        f"(a CIFAR directory as downloaded, e.g. cifar10:data/cifar-10-batches-py)")
    train = cifar_images(path, "train")
    if train["dataset"] != name:
        raise DataError(f"--images {spec}: {path} holds {train['dataset']}, not {name}; "
                        f"write --images {train['dataset']}:{path}")
    test = cifar_images(path, "test")
    return SourceImages(name, list(train["classes"]),
                        {"train": (train["images"], train["labels"]), "test": (test["images"], test["labels"])})


def _first_per_class(labels: np.ndarray, per_class: Optional[int]) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in file order (all if None/0)."""
    if not per_class:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        keep[np.nonzero(labels == c)[0][:per_class]] = True
    return np.nonzero(keep)[0]


def make_cit_benchmark(version: str, train_per_class: Optional[int] = 400, test_per_class: Optional[int] = 100,
                       seed: int = 0, test_bias: str = "random", size: int = 24, pad: int = 4,
                       images: Optional[SourceImages] = None) -> Dict[str, SampleSet]:
    """{'train': SampleSet, 'test': SampleSet} of the CIT synthetic benchmark `version`.

    images: real images (``load_source_images``) instead of the embedded shapes; the per-class
    counts then take the first samples of each class (None or 0: all of them) and ``size`` is unused.
    """
    if test_bias not in ("random", "misleading"):
        raise ValueError(f"test_bias must be 'random' or 'misleading', got {test_bias!r}")
    classes = list(SHAPE_CLASSES) if images is None else list(images.classes)
    assign = cit_assignment(version, len(classes), seed)
    what = "synthetic" if images is None else f"synthetic {images.name}"
    out = {}
    for split, per_class, split_seed in (("train", train_per_class, 2 * seed), ("test", test_per_class, 2 * seed + 1)):
        if images is None:
            x, _, labels = make_shapes(per_class, size=size, seed=split_seed)
            noise = 0.02
        else:
            x, labels = images.splits[split]
            idx = _first_per_class(labels, per_class)
            x, labels = x[idx], np.asarray(labels, np.int64)[idx]
            noise = 0.0  # the paper pads with one colour per image
        rng = np.random.default_rng([seed, split == "test", 0xB1A5])
        a = assign.a_of_class[labels]
        b = assign.b_of_class[labels] if split == "train" else _test_bias(assign, labels, test_bias, rng)
        padded, mask = pad_with_context(x, assign.color(a, b), pad, rng, noise=noise)
        out[split] = SampleSet(padded, mask, labels, classes, strata=a, bias=b, name=f"{what} {version} {split}")
    return out


def save_arrays(samples: SampleSet, path: str) -> None:
    """Write a SampleSet held in memory as an `arrays` .npz (atomically)."""
    if not samples.in_memory:
        raise ValueError("save_arrays needs a SampleSet held in memory")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=samples.images, masks=samples.masks, labels=samples.labels,
                                strata=samples.strata, bias=samples.bias, classes=np.array(samples.classes))


def save_preview(samples: SampleSet, path, per_class: int = 10, zoom: int = 3) -> None:
    """A PNG grid, one row per class, of the first `per_class` samples of each class."""
    from PIL import Image

    rows = []
    for c in range(samples.num_classes):
        idx = np.nonzero(samples.labels == c)[0][:per_class]
        rows.append(np.concatenate([samples.images[i] for i in idx], axis=1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    img = Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
