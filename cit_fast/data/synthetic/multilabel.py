"""A co-occurrence-biased multi-label benchmark, generated (nothing is downloaded).

Scenes are ``size x size`` textured backgrounds (one of a few scene styles) holding 1-3 objects from
``synthetic.make_shapes`` (their exact masks cut them out), one object per cell of a 2 x 2 grid.
Like the 20 biased COCO-Stuff pairs of Singh et al. (CVPR 2020), chosen pairs (b, c) are biased:

- training: b never appears without c (whenever b is drawn, c is added), while c also appears alone;
  b is drawn smaller than the other objects (``b_scale``), so its own pixels are the harder cue and a
  model is tempted to read b off its companion c;
- test: free scenes, plus for every pair ``pair_test`` scenes with b and without c (*Exclusive*)
  and ``pair_test`` scenes with both (*Co-occur*).

Masks are the union of the scene's object masks (1 = object), so the same data also feeds the
intervention composite. Labels are (N, C) multi-hot float32.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..sources.records import SampleSet
from .benchmark import SHAPE_CLASSES, make_shapes, random_colors, smooth_noise

DEFAULT_PAIRS: Tuple[Tuple[str, str], ...] = (("circle", "ring"), ("square", "frame"), ("star", "cross"))
N_STYLES = 4  # scene styles: background palettes


def resize_patch(img: np.ndarray, mask: np.ndarray, side: int) -> Tuple[np.ndarray, np.ndarray]:
    """Object patch (s,s,3) float and mask (s,s) float -> (side,side), antialiased."""
    import torch
    import torch.nn.functional as F

    if img.shape[0] == side:
        return img, mask
    x = torch.from_numpy(np.concatenate([img, mask[..., None]], -1)).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0]
    y = y.permute(1, 2, 0).numpy()
    return y[..., :3], y[..., 3]


def _backgrounds(rng: np.random.Generator, n: int, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(n, size, size, 3) float backgrounds in N_STYLES palettes, and each one's style."""
    style = rng.integers(0, N_STYLES, n)
    hues = (np.arange(N_STYLES) + 0.5) / N_STYLES
    import colorsys

    base = np.array([colorsys.hsv_to_rgb(h, 0.45, 0.55) for h in hues], np.float32)  # (S, 3)
    c1 = base[style] + rng.normal(0, 0.06, (n, 3)).astype(np.float32)
    c2 = base[style] * 0.6 + random_colors(rng, n, sat=(0.1, 0.4), val=(0.2, 0.6)) * 0.4
    mix = smooth_noise(rng, n, size, 5)[..., None]
    bg = c1[:, None, None] * mix + c2[:, None, None] * (1 - mix)
    return np.clip(bg, 0, 1), style


def _draw_sets_train(rng: np.random.Generator, n: int, num_classes: int, pairs: Sequence[Tuple[int, int]],
                     max_objects: int) -> List[List[int]]:
    """Random object sets in which every pair's b comes with its c (c is added, or b dropped if full)."""
    sets = []
    for _ in range(n):
        k = int(rng.integers(1, max_objects + 1))
        s = [int(v) for v in rng.choice(num_classes, size=k, replace=False)]
        for b, c in pairs:
            if b in s and c not in s:
                if len(s) < max_objects:
                    s.append(c)
                else:
                    s.remove(b)
        if not s:  # every object was a dropped b: one free object instead
            s = [int(rng.choice([v for v in range(num_classes) if v not in dict(pairs)]))]
        sets.append(sorted(s))
    return sets


def _draw_sets_test(rng: np.random.Generator, n_free: int, pair_test: int, num_classes: int,
                    pairs: Sequence[Tuple[int, int]], max_objects: int) -> List[List[int]]:
    sets = []
    for _ in range(n_free):
        k = int(rng.integers(1, max_objects + 1))
        sets.append(sorted(int(v) for v in rng.choice(num_classes, size=k, replace=False)))
    for b, c in pairs:
        for with_c in (False, True):
            for _ in range(pair_test):
                k = int(rng.integers(1, max_objects + 1))
                pool = [v for v in range(num_classes) if v not in (b, c)]
                fixed = [b, c] if with_c else [b]
                extra = rng.choice(pool, size=max(0, k - len(fixed)), replace=False)
                sets.append(sorted(fixed + [int(v) for v in extra]))
    return sets


def _render(sets: List[List[int]], size: int, rng: np.random.Generator, obj_images: np.ndarray,
            obj_masks: np.ndarray, obj_labels: np.ndarray, small: set, b_scale: float
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(sets)
    cell = size // 2
    imgs, style = _backgrounds(rng, n, size)
    masks = np.zeros((n, size, size), np.float32)
    by_class = [np.nonzero(obj_labels == c)[0] for c in range(int(obj_labels.max()) + 1)]
    for i, s in enumerate(sets):
        cells = rng.permutation(4)[:len(s)]
        for cls, cell_id in zip(s, cells):
            j = int(rng.choice(by_class[cls]))
            patch = obj_images[j].astype(np.float32) / 255
            pm = obj_masks[j].astype(np.float32) / 255
            side = max(6, int(round(cell * (b_scale if cls in small else 1.0))))
            patch, pm = resize_patch(patch, pm, side)
            oy = (cell_id // 2) * cell + int(rng.integers(0, cell - side + 1))
            ox = (cell_id % 2) * cell + int(rng.integers(0, cell - side + 1))
            region = imgs[i, oy:oy + side, ox:ox + side]
            imgs[i, oy:oy + side, ox:ox + side] = pm[..., None] * patch + (1 - pm[..., None]) * region
            masks[i, oy:oy + side, ox:ox + side] = np.maximum(masks[i, oy:oy + side, ox:ox + side], pm)
    imgs = imgs + rng.normal(0, 0.03, imgs.shape).astype(np.float32)
    images = np.clip(np.round(imgs * 255), 0, 255).astype(np.uint8)
    return images, np.round(masks * 255).astype(np.uint8), style


def pair_indices(pairs: Sequence[Tuple[str, str]]) -> List[Tuple[int, int]]:
    """Class-name pairs (b, c) as indices of SHAPE_CLASSES; an unknown name is one error naming the pair."""
    classes = list(SHAPE_CLASSES)
    idx = []
    for b, c in pairs:
        for name in (b, c):
            if name not in classes:
                raise ValueError(f"biased pair ({b}, {c}): {name!r} is not a shape class ({', '.join(classes)})")
        idx.append((classes.index(b), classes.index(c)))
    return idx


def make_biased_multilabel(n_train: int = 3000, n_test_free: int = 600, pair_test: int = 150, size: int = 48,
                           pairs: Sequence[Tuple[str, str]] = DEFAULT_PAIRS, b_scale: float = 0.6,
                           max_objects: int = 3, seed: int = 0) -> Dict[str, object]:
    """{'train': SampleSet, 'test': SampleSet, 'pairs': [(b, c) indices], 'pair_names': [...]}."""
    classes = list(SHAPE_CLASSES)
    idx = pair_indices(pairs)
    bs = [b for b, _ in idx]
    if len(set(bs)) != len(bs) or set(bs) & {c for _, c in idx}:
        raise ValueError("biased pairs: every b must be distinct and no b may be another pair's c")
    if not 1 <= max_objects <= 4:
        raise ValueError(f"max_objects must be in [1, 4] (a 2 x 2 grid), got {max_objects}")
    if size % 2 or size < 16:
        raise ValueError(f"size must be even and at least 16, got {size}")
    out: Dict[str, object] = {"pairs": idx, "pair_names": [tuple(p) for p in pairs]}
    small = set(bs)
    for split, s_seed in (("train", 2 * seed), ("test", 2 * seed + 1)):
        rng = np.random.default_rng([seed, split == "test", 0x3B1A])
        obj_images, obj_masks, obj_labels = make_shapes(60, size=size // 2, seed=1000 + s_seed)
        if split == "train":
            sets = _draw_sets_train(rng, n_train, len(classes), idx, max_objects)
        else:
            sets = _draw_sets_test(rng, n_test_free, pair_test, len(classes), idx, max_objects)
        images, masks, style = _render(sets, size, rng, obj_images, obj_masks, obj_labels, small, b_scale)
        labels = np.zeros((len(sets), len(classes)), np.float32)
        for i, s in enumerate(sets):
            labels[i, s] = 1
        out[split] = SampleSet(images, masks, labels, classes, strata=style, name=f"biased multi-label {split}")
    return out
