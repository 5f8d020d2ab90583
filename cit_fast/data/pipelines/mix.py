"""Batch-level Mixup and CutMix (CIT Table I, bottom rows), composable with the intervention.

They run after ``compose`` on whatever device the batch is on (the GPU in production), as pure
tensor ops on the composed inputs, and turn integer labels into soft targets. Every random draw
is the project's counter-based draws (``plans/draws.py``), keyed by (seed, epoch, rank, step): a
resumed run mixes exactly as an uninterrupted one, no numpy release can move a draw, and two ranks
or two seeds never share one (each of the four is a separate link of a key chain, ``mix_key``;
numpy's ``default_rng(seed + 7 * rank)`` of before gave rank 1 of seed 0 rank 0 of seed 7's draws).
For double-branch batches the content and the context are mixed with the same partner and the
same coefficient (and box), so the two branches still see one consistent sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..choices import MIX_MODES
from ..plans import draws
from .batch import ModelBatch

MIX_STREAM = 0x313  # the stream of draws.key(seed, epoch, .) the batch mixes draw from


def mix_key(seed: int, epoch: int, rank: int, step: int) -> int:
    """The key of one batch's mix draws: stream MIX_STREAM of (seed, epoch), then the rank's sub-stream,
    then the step's (``draws.child``): distinct (seed, epoch, rank, step) never share a key by
    construction (only a 64-bit hash collision could)."""
    return draws.child(draws.child(draws.key(seed, epoch, MIX_STREAM), rank), step)


@dataclass(frozen=True)
class MixDraw:
    """One batch's draws: whether it is mixed, the coefficient, the partners and (CutMix) the box centre."""

    mixed: bool
    lam: float
    perm: np.ndarray  # (n,) int64: sample i is mixed with sample perm[i]
    centre: tuple  # (cy, cx) in [0, h) x [0, w)


def mix_draw(key: int, n: int, alpha: float, prob: float, h: int = 1, w: int = 1) -> MixDraw:
    """The draws of the batch keyed ``key``: scalars from sub-stream 0 (apply < prob, then lam ~
    Beta(alpha, alpha), then the box centre), the permutation from sub-stream 1."""
    s = draws.Stream(draws.child(key, 0))
    if alpha <= 0 or s.random() >= prob:
        return MixDraw(False, 1.0, np.arange(n), (0, 0))
    lam = s.beta(alpha, alpha)
    centre = (s.integers(0, h), s.integers(0, w))
    return MixDraw(True, lam, draws.permutation(draws.child(key, 1), n), centre)


def soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) int -> (B, K) one-hot float; (B, K) multi-hot/soft labels pass through."""
    if labels.dim() == 2:
        return labels.float()
    return torch.nn.functional.one_hot(labels, num_classes).float()


def cutmix_box(h: int, w: int, lam: float, centre):
    """A box covering about (1 - lam) of the image (Yun et al. 2019) around ``centre``, clipped to the image."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = centre
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return y0, y1, x0, x1


def mix_batch(batch: ModelBatch, mode: str, alpha: float, prob: float, num_classes: int,
              seed: int, epoch: int, step: int, rank: int = 0) -> ModelBatch:
    """A new batch with mixed images and ``target`` (B, K): soft one-hot targets for single labels,
    mixed multi-hot targets for multi-label data (learned with the configured BCE / ASL, not
    cross-entropy); ``label`` is kept, and ``mix_lambda`` / ``mix_perm`` record the draw when the
    batch was mixed. The draws are ``mix_draw(mix_key(seed, epoch, rank, step), ...)``."""
    if mode not in MIX_MODES:
        raise ValueError(f"mix mode must be one of {', '.join(MIX_MODES)}, got {mode!r}")
    y = soft_targets(batch.label, num_classes)
    if mode == "none":
        return batch.replace(target=y)
    images = batch.images()
    h, w = next(iter(images.values())).shape[-2:]
    d = mix_draw(mix_key(seed, epoch, rank, step), len(batch), alpha, prob, h, w)
    if not d.mixed:
        return batch.replace(target=y)
    lam = d.lam
    perm = torch.from_numpy(d.perm).to(batch.label.device)
    if mode == "mixup":
        mixed = {k: lam * x + (1.0 - lam) * x[perm] for k, x in images.items()}
    else:
        y0, y1, x0, x1 = cutmix_box(h, w, lam, d.centre)
        mixed = {}
        for k, x in images.items():
            m = x.clone()
            m[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
            mixed[k] = m
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the area actually pasted
    return batch.replace(**mixed, target=lam * y + (1.0 - lam) * y[perm], mix_lambda=torch.tensor(lam), mix_perm=perm)


@dataclass(frozen=True)
class MixOp:
    """Mixup / CutMix as a batch op of a training pipeline (``PipelineSpec.batch_ops``): the draw of
    each batch is a pure function of (seed, epoch, rank, step), so a resumed run mixes as an
    uninterrupted one and every rank mixes its own batches differently."""

    mode: str
    alpha: float
    prob: float
    num_classes: int
    seed: int  # the run's seed
    rank: int = 0

    def __call__(self, batch: ModelBatch, epoch: int, step: int) -> ModelBatch:
        return mix_batch(batch, self.mode, self.alpha, self.prob, self.num_classes, self.seed, epoch, step,
                         self.rank)

