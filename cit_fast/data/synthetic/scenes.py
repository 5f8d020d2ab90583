"""A scene-confounded multi-label benchmark, generated (nothing is downloaded).

A visible scene style S (one of ``n_scenes`` palettes with their own stripe texture, covering the
background: well over half of every image) is the **common cause** of the biased pairs. Each pair
(b, c) has a home scene h (pair k lives in scene k):

    P(b | S = h) = 0.5      P(b | S != h) = eps
    P(c | S = h) = q        P(c | S != h) = 0.05        b and c independent given S

and the other classes are Bernoulli(0.15), independent of S and of each other. b is drawn smaller
(``b_scale``, 0.75 by default) so its own pixels are the harder cue. Up to 9 objects sit on a 3 x 3
grid, one per cell: no label is ever dropped to make room (the cap couples no labels; a scene with
more labels than cells would have its free classes redrawn, an event these rates make practically
impossible and that is counted in ``overflow``).

The *arm* sets the exclusive fraction f = P(not c | b) in training, half of the exclusive images in
the home scene (c absent there, q < 1) and half elsewhere (eps > 0):

- ``control``  f = 0: q = 1, eps = 0 (b never outside h, never without c). Positivity fails in every
               stratum, so no backdoor adjustment can tell b's pixels from c's: must show no effect.
- ``3``, ``15``, ``28``: f ~ 3 %, 15 %, 28 %.
- ``placebo``: the rule of ``synthetic.multilabel``: b => c is added, with S independent of every
               label; P(b), P(c) and P(b, c) match the control arm's. No common cause in the image.
- ``salient``: the positive control, built the way COCO-Stuff's contextual bias arises (Singh et al.,
               CVPR 2020): a small b (``b_scale`` 0.9 of a cell) beside a large, salient c (full size,
               drawn in up to ``c_copies`` 3 cells, as stuff covers an image), with S independent of the
               labels: P(b) = 0.25, P(c | b) = 0.9 (f = 10 %) and P(c | not b) = 0.05 in training. In
               test c is independent of b (P(c) = 0.5), as in every arm. The decoder-only baseline of
               bench/multilabel_scenes.py reads b partly off c here (its recipe, 2 seeds: Co-occur - Exclusive
               AP +11.2 and +10.8 points, c lifting b's logit by +1.1; the 5-seed sweep is in
               bench/RESULTS.md), and feature splitting raised Exclusive by +5.7 AP: an effect can be seen.
               The rates and rendering are ``SALIENT``; the arm's first version (b at half size and half
               opacity, P(b) 0.125, one c) left b invisible to that baseline's trunk and showed no bias.

Label counts are exact, not sampled: in every scene, each pair's four (b, c) cells get their expected
counts (largest-remainder rounding) and are shuffled independently of the other pairs', so the
measured exclusive fraction is the target up to rounding and b is independent of c given S in the
counts. The test set has S uniform, b from P(b | S) as in training, c ~ Bernoulli(0.5) independent
of S and b (same exact-count construction): Exclusive (b without c) and Co-occur (b with c) positives,
and c-only home-scene images as hard negatives, ``n_test / (4 n_scenes)`` of each per pair.

``make_scene_singles`` draws the pre-training data of the confounder network: one object per scene
over the same palettes (other object instances than the benchmark's), single-label.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..sources.records import SampleSet
from .benchmark import SHAPE_CLASSES, make_shapes, smooth_noise
from .multilabel import pair_indices, resize_patch

SCENE_PAIRS: Tuple[Tuple[str, str], ...] = (("circle", "frame"), ("triangle", "bar"), ("star", "crescent"),
                                            ("cross", "ring"))
ARMS = ("control", "3", "15", "28", "placebo", "salient")
GRID = 3  # objects on a GRID x GRID grid, one per cell
P_B_HOME, P_C_AWAY, P_OTHER, P_C_TEST = 0.5, 0.05, 0.15, 0.5
# the positive control's rates and rendering (chosen so the decoder-only baseline of bench/multilabel_scenes.py
# is measurably biased: Co-occur - Exclusive AP >= 10 points, c lifting b's logit; see the module doc)
SALIENT = {"p_b": 0.25, "exclusive": 0.10, "p_c_without_b": 0.05, "b_scale": 0.9, "b_alpha": 1.0, "c_copies": 3}


@dataclass(frozen=True)
class SceneArm:
    """One arm of the sweep: the target exclusive fraction and the rates that give it."""

    name: str
    exclusive: float  # target P(not c | b) in training
    q: float  # P(c | S = h)
    eps: float  # P(b | S != h)
    n_scenes: int = 4  # scenes, equally frequent
    placebo: bool = False  # b => c added, S independent of the labels
    salient: bool = False  # P(c | b) = 1 - exclusive, S independent of the labels; b small and faint
    b_scale: float = 0.75  # b's side as a fraction of a grid cell (its rendering default)
    b_alpha: float = 1.0  # b's opacity over the scene (its rendering default)
    c_copies: int = 1  # c drawn in up to this many cells (as many as the image's free cells allow)
    b_rate: float = 0.0  # salient: P(b) in training and test (0: from q and eps as in the other arms)
    c_rate: float = 0.0  # salient: P(c) in training (0: from q and eps)

    @property
    def scene_free(self) -> bool:
        """Whether S is independent of every label (no common cause in the image)."""
        return self.placebo or self.salient

    @property
    def p_b(self) -> float:
        """P(b) in training (for the placebo: the control arm's, in every scene)."""
        if self.b_rate:
            return self.b_rate
        home = 1.0 / self.n_scenes
        return home * P_B_HOME + (0.0 if self.placebo else (1 - home) * self.eps)

    @property
    def p_c(self) -> float:
        """P(c) in training (for the placebo: the control arm's)."""
        if self.c_rate:
            return self.c_rate
        home = 1.0 / self.n_scenes
        return home * (1.0 if self.placebo else self.q) + (1 - home) * P_C_AWAY


def scene_arm(name: str, n_scenes: int = 4) -> SceneArm:
    """The rates of arm ``name`` (one of ARMS) for ``n_scenes`` equally frequent scenes.

    With home = 1 / n_scenes and f the target, half of f's images come from other scenes:
    (1 - home) eps (1 - 0.05) = f P(b) / 2 and home 0.5 (1 - q) = f P(b) / 2, P(b) = home 0.5 + (1 - home) eps.
    The placebo takes the control's P(b) and P(c) (b => c: P(b, c) = P(b) as in the control)."""
    if name not in ARMS:
        raise ValueError(f"scene arm must be one of {', '.join(ARMS)}, got {name!r}")
    if name == "placebo":
        return SceneArm(name, 0.0, q=1.0, eps=0.0, n_scenes=n_scenes, placebo=True)
    if name == "salient":  # P(b) 0.25, P(c | b) 0.9, P(c | not b) 0.05 (P(c) 0.2625); c in up to 3 cells
        return SceneArm(name, SALIENT["exclusive"], q=1.0, eps=0.0, n_scenes=n_scenes, salient=True,
                        b_scale=SALIENT["b_scale"], b_alpha=SALIENT["b_alpha"], c_copies=SALIENT["c_copies"],
                        b_rate=SALIENT["p_b"], c_rate=SALIENT["p_b"] * (1 - SALIENT["exclusive"])
                        + (1 - SALIENT["p_b"]) * SALIENT["p_c_without_b"])
    home = 1.0 / n_scenes
    f = 0.0 if name == "control" else int(name) / 100
    eps = f * home * P_B_HOME / 2 / ((1 - home) * (1 - P_C_AWAY - f / 2))
    p_b = home * P_B_HOME + (1 - home) * eps
    q = 1 - f * p_b / 2 / (home * P_B_HOME)
    return SceneArm(name, f, q=float(q), eps=float(eps), n_scenes=n_scenes)


def _cell_table(arm: SceneArm, scene: int, home: int, test: bool) -> np.ndarray:
    """(2, 2) probabilities of (b, c) in ``scene`` for a pair whose home is ``home``: [b][c]."""
    if arm.scene_free:  # the same table in every scene: S independent of the labels
        p_b, f = arm.p_b, arm.exclusive
        if test:
            return np.outer([1 - p_b, p_b], [1 - P_C_TEST, P_C_TEST])
        r = (arm.p_c - p_b * (1 - f)) / (1 - p_b)  # P(c | not b), with P(c | b) = 1 - f (placebo: f = 0)
        return np.array([[(1 - p_b) * (1 - r), (1 - p_b) * r], [p_b * f, p_b * (1 - f)]])
    p_b = P_B_HOME if scene == home else arm.eps
    p_c = P_C_TEST if test else (arm.q if scene == home else P_C_AWAY)
    return np.outer([1 - p_b, p_b], [1 - p_c, p_c])


def _exact_counts(p: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to n, proportional to p (largest remainder)."""
    raw = p.reshape(-1) * n
    out = np.floor(raw).astype(np.int64)
    rest = n - int(out.sum())
    out[np.argsort(-(raw - out), kind="stable")[:rest]] += 1
    return out.reshape(p.shape)


def scene_labels(arm: str, n: int, split: str = "train", pairs: Sequence[Tuple[str, str]] = SCENE_PAIRS,
                 n_scenes: int = 4, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, int]:
    """The labels of ``make_scene_multilabel``'s ``split`` without rendering: (labels (n, C) float32,
    scene (n,) int64, overflow count)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    test = split == "test"
    rng = np.random.default_rng([seed, test, 0x1ABE1, ARMS.index(arm)])
    return _draw_labels(rng, scene_arm(arm, n_scenes), n, n_scenes, len(SHAPE_CLASSES), _pair_indices(pairs), test)


def _draw_labels(rng: np.random.Generator, arm: SceneArm, n: int, n_scenes: int, num_classes: int,
                 pairs: Sequence[Tuple[int, int]], test: bool) -> Tuple[np.ndarray, np.ndarray, int]:
    """(labels (n, C) float32, scene (n,) int64, overflow count)."""
    scene = np.repeat(np.arange(n_scenes), [n // n_scenes + (s < n % n_scenes) for s in range(n_scenes)])
    scene = rng.permutation(scene)
    labels = np.zeros((n, num_classes), np.float32)
    for s in range(n_scenes):
        rows = np.nonzero(scene == s)[0]
        for k, (b, c) in enumerate(pairs):
            counts = _exact_counts(_cell_table(arm, s, k % n_scenes, test), len(rows))  # [b][c]
            cells = np.repeat(np.arange(4), counts.reshape(-1))  # 0 = (0, 0), 1 = (0, 1), 2 = (1, 0), 3 = (1, 1)
            cells = rng.permutation(cells)
            labels[rows, b] = cells >= 2
            labels[rows, c] = cells % 2 == 1
    paired = {v for p in pairs for v in p}
    free = [v for v in range(num_classes) if v not in paired]
    overflow = 0
    for i in range(n):
        while True:
            labels[i, free] = rng.random(len(free)) < P_OTHER
            if labels[i].sum() <= GRID * GRID:
                break
            overflow += 1
    return labels, scene.astype(np.int64), overflow


def _palettes(n_scenes: int) -> np.ndarray:
    hues = np.arange(n_scenes) / n_scenes
    return np.array([[colorsys.hsv_to_rgb(h, 0.55, 0.6), colorsys.hsv_to_rgb((h + 0.08) % 1, 0.35, 0.35)]
                     for h in hues], np.float32)  # (S, 2, 3): two colours per scene


def scene_backgrounds(rng: np.random.Generator, scene: np.ndarray, size: int, n_scenes: int) -> np.ndarray:
    """(n, size, size, 3) float backgrounds: scene s has its palette (two colours) and stripes at angle
    pi s / n_scenes, mixed with smooth noise; per-image jitter of colour, stripe phase and period."""
    n = len(scene)
    pal = _palettes(n_scenes)[scene] + rng.normal(0, 0.04, (n, 2, 3)).astype(np.float32)  # (n, 2, 3)
    theta = np.pi * scene / n_scenes + rng.normal(0, 0.08, n)
    period = rng.uniform(5, 8, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    pix = np.arange(size, dtype=np.float32) + 0.5
    yy, xx = np.meshgrid(pix, pix, indexing="ij")
    t = (xx[None] * np.cos(theta)[:, None, None] + yy[None] * np.sin(theta)[:, None, None])
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * t / period[:, None, None] + phase[:, None, None])  # (n, H, W)
    mix = np.clip(0.65 * stripes + 0.35 * smooth_noise(rng, n, size, 4), 0, 1)[..., None]
    bg = pal[:, None, None, 0] * mix + pal[:, None, None, 1] * (1 - mix)
    return np.clip(bg, 0, 1).astype(np.float32)


def _object_bank(n_per_class: int, seed: int, cell: int, b_scale: float) -> Dict[str, object]:
    """Object instances at full size (cell) and at b's size, images float (N, s, s, 3) and masks."""
    imgs, masks, labels = make_shapes(n_per_class, size=cell, seed=seed)
    small = max(6, int(round(cell * b_scale)))
    im, ms = imgs.astype(np.float32) / 255, masks.astype(np.float32) / 255
    rs = [resize_patch(im[j], ms[j], small) for j in range(len(im))]
    return {"full": (im, ms), "small": (np.stack([r[0] for r in rs]), np.stack([r[1] for r in rs])),
            "by_class": [np.nonzero(labels == c)[0] for c in range(len(SHAPE_CLASSES))]}


def _render(rng: np.random.Generator, labels: np.ndarray, scene: np.ndarray, size: int, n_scenes: int,
            bank: Dict[str, object], small_classes: set, grid: int = GRID, small_alpha: float = 1.0,
            copied: Sequence[int] = (), copies: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, size, size, 3) and union object masks (n, size, size); objects on a grid x grid grid.
    The small classes' objects are blended at opacity ``small_alpha`` over the scene (the masks stay whole);
    the ``copied`` classes are drawn in up to ``copies`` cells each, as many as the free cells allow (other
    instances; with copies = 1 the draws are those of one object per class)."""
    n = len(labels)
    cell = size // grid
    imgs = scene_backgrounds(rng, scene, size, n_scenes)
    masks = np.zeros((n, size, size), np.float32)
    for i in range(n):
        present = list(np.nonzero(labels[i])[0])
        cells = rng.permutation(grid * grid)
        if copies > 1:  # the copies take the cells left after one per present class
            extra = [cls for cls in present if cls in copied for _ in range(copies - 1)]
            present += extra[:grid * grid - len(present)]
        for cls, cell_id in zip(present, cells[:len(present)]):
            j = int(rng.choice(bank["by_class"][cls]))
            src_i, src_m = bank["small" if cls in small_classes else "full"]
            patch, pm = src_i[j], src_m[j]
            side = patch.shape[0]
            oy = (cell_id // grid) * cell + int(rng.integers(0, cell - side + 1))
            ox = (cell_id % grid) * cell + int(rng.integers(0, cell - side + 1))
            region = imgs[i, oy:oy + side, ox:ox + side]
            a = pm[..., None] * (small_alpha if cls in small_classes else 1.0)
            imgs[i, oy:oy + side, ox:ox + side] = a * patch + (1 - a) * region
            masks[i, oy:oy + side, ox:ox + side] = np.maximum(masks[i, oy:oy + side, ox:ox + side], pm)
    imgs = imgs + rng.normal(0, 0.03, imgs.shape).astype(np.float32)
    return np.clip(np.round(imgs * 255), 0, 255).astype(np.uint8), np.round(masks * 255).astype(np.uint8)


def _pair_indices(pairs: Sequence[Tuple[str, str]]) -> List[Tuple[int, int]]:
    idx = pair_indices(pairs)
    flat = [v for p in idx for v in p]
    if len(set(flat)) != len(flat):
        raise ValueError("scene pairs: every class may appear in one pair only")
    return idx


def make_scene_multilabel(arm: str = "15", n_train: int = 7600, n_test: int = 8000, size: int = 48,
                          pairs: Sequence[Tuple[str, str]] = SCENE_PAIRS, n_scenes: int = 4,
                          b_scale: Optional[float] = None, seed: int = 0,
                          b_alpha: Optional[float] = None, c_copies: Optional[int] = None) -> Dict[str, object]:
    """{'train', 'test': SampleSet (strata = scene S), 'pairs': [(b, c) indices], 'pair_names',
    'home': [scene of each pair], 'arm': SceneArm, 'overflow': {split: scenes whose free classes were redrawn}}.

    ``b_scale`` / ``b_alpha`` (b's size as a fraction of a cell, its opacity): the arm's own by default
    (0.75 / 1 but for ``salient``, 0.5 / 0.5). The same ``seed`` gives the same object instances, scenes and
    rendering randomness in every arm; the arms of one b_scale and b_alpha differ only in their labels."""
    if len(pairs) > n_scenes:
        raise ValueError(f"{len(pairs)} pairs need at least as many scenes (one home each), got n_scenes={n_scenes}")
    if size % GRID or size // GRID < 8:
        raise ValueError(f"size must be a multiple of {GRID} with cells of at least 8 pixels, got {size}")
    spec = scene_arm(arm, n_scenes)
    b_scale = spec.b_scale if b_scale is None else b_scale
    b_alpha = spec.b_alpha if b_alpha is None else b_alpha
    c_copies = spec.c_copies if c_copies is None else c_copies
    if not 0.5 <= b_scale <= 1:
        raise ValueError(f"b_scale must be in [0.5, 1], got {b_scale}")
    if not 0 < b_alpha <= 1:
        raise ValueError(f"b_alpha must be in (0, 1], got {b_alpha}")
    if not 1 <= c_copies <= GRID * GRID:
        raise ValueError(f"c_copies must be in [1, {GRID * GRID}], got {c_copies}")
    idx = _pair_indices(pairs)
    out: Dict[str, object] = {"pairs": idx, "pair_names": [tuple(p) for p in pairs], "arm": spec,
                              "home": list(range(len(idx))), "overflow": {}}
    small = {b for b, _ in idx}
    for split, n in (("train", n_train), ("test", n_test)):
        test = split == "test"
        rng = np.random.default_rng([seed, test, 0x5CE7E])
        bank = _object_bank(40, 2000 + 2 * seed + test, size // GRID, b_scale)
        labels, scene, overflow = scene_labels(arm, n, split, pairs, n_scenes, seed)
        images, masks = _render(rng, labels, scene, size, n_scenes, bank, small, small_alpha=b_alpha,
                                copied=[c for _, c in idx], copies=c_copies)
        out[split] = SampleSet(images, masks, labels, list(SHAPE_CLASSES), strata=scene,
                               name=f"scene multi-label {arm} {split}")
        out["overflow"][split] = overflow
    return out


def make_scene_singles(n: int = 6000, size: int = 48, n_scenes: int = 4, b_scale: float = 0.75,
                       seed: int = 7, grid: int = GRID, label: str = "object") -> SampleSet:
    """Single-object scenes over the same palettes (class uniform, S uniform and independent of it, half
    the objects at b's size), single-label: what the trunk and the confounder network are pre-trained on.
    Object instances differ from every benchmark seed's (make_shapes seed 3000 + seed). Objects have the
    benchmark's sizes (a cell of ``size // grid`` pixels); ``size=16, grid=1`` gives one grid cell of a
    benchmark scene, a 9x cheaper image to pre-train on.

    ``label``: ``object`` (10 classes) or ``object_scene`` (the 40 (object, scene) pairs, class
    ``object * n_scenes + scene``): a classifier of the latter must keep the scene in its features, as
    ImageNet or Places features keep the context of their images; one trained on objects alone learns to
    ignore the scene (measured: k-means of its spatial features recover S with NMI ~0.03)."""
    if label not in ("object", "object_scene"):
        raise ValueError(f"label must be object or object_scene, got {label!r}")
    if size % grid or size // grid < 8:
        raise ValueError(f"size must be a multiple of grid={grid} with cells of at least 8 pixels, got {size}")
    rng = np.random.default_rng([seed, 0x5146])
    num_classes = len(SHAPE_CLASSES)
    cls = rng.permutation(np.arange(n) % num_classes)
    scene = rng.permutation(np.arange(n) % n_scenes).astype(np.int64)
    bank = _object_bank(300, 3000 + seed, size // grid, b_scale)  # many instances: learn shapes, not instances
    labels = np.zeros((n, num_classes), np.float32)
    labels[np.arange(n), cls] = 1
    small = rng.random(n) < 0.5
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for flag in (False, True):  # render the two sizes separately (the size set is per class in _render)
        rows = np.nonzero(small == flag)[0]
        im, ms = _render(rng, labels[rows], scene[rows], size, n_scenes, bank,
                         set(range(num_classes)) if flag else set(), grid)
        images[rows], masks[rows] = im, ms
    if label == "object_scene":
        names = [f"{c}@scene{k}" for c in SHAPE_CLASSES for k in range(n_scenes)]
        return SampleSet(images, masks, (cls * n_scenes + scene).astype(np.int64), names, strata=scene,
                         name="single-object scenes (object, scene)")
    return SampleSet(images, masks, cls.astype(np.int64), list(SHAPE_CLASSES), strata=scene,
                     name="single-object scenes")


def label_statistics(labels: np.ndarray, scene: np.ndarray, pairs: Sequence[Tuple[int, int]],
                     n_scenes: Optional[int] = None) -> List[Dict[str, object]]:
    """Per pair: P(b), P(c), P(b, c), the exclusive fraction P(not c | b), the number of exclusive b
    images, and P(b | S = s), P(c | S = s) per scene (the benchmark's sanity checks)."""
    t = np.asarray(labels) > 0
    n_scenes = n_scenes or int(scene.max()) + 1
    rows = []
    for b, c in pairs:
        nb = int(t[:, b].sum())
        excl = int((t[:, b] & ~t[:, c]).sum())
        rows.append({"b": b, "c": c, "p_b": float(t[:, b].mean()), "p_c": float(t[:, c].mean()),
                     "p_bc": float((t[:, b] & t[:, c]).mean()), "n_b": nb, "n_exclusive": excl,
                     "n_cooccur": int((t[:, b] & t[:, c]).sum()),
                     "exclusive": excl / nb if nb else float("nan"),
                     "p_b_scene": [float(t[scene == s, b].mean()) for s in range(n_scenes)],
                     "p_c_scene": [float(t[scene == s, c].mean()) for s in range(n_scenes)]})
    return rows
