"""Batch-level Mixup and CutMix (CIT Table I, bottom rows), composable with the intervention.

They run after ``compose`` on whatever device the batch is on (the GPU in production), as pure
tensor ops on the composed inputs, and turn integer labels into soft targets. Every random draw
comes from a generator seeded by (seed, epoch, step), so a resumed run mixes exactly as an
uninterrupted one. For double-branch batches the content and the context are mixed with the same
partner and the same coefficient (and box), so the two branches still see one consistent sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...config import MIX_MODES
from .batch import ModelBatch


def soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) int -> (B, K) one-hot float; (B, K) multi-hot/soft labels pass through."""
    if labels.dim() == 2:
        return labels.float()
    return torch.nn.functional.one_hot(labels, num_classes).float()


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator):
    """A box covering about (1 - lam) of the image (Yun et al. 2019), clipped to the image."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    return y0, y1, x0, x1


def mix_batch(batch: ModelBatch, mode: str, alpha: float, prob: float, num_classes: int,
              seed: int, epoch: int, step: int) -> ModelBatch:
    """A new batch with mixed images and ``target`` (B, K): soft one-hot targets for single labels,
    mixed multi-hot targets for multi-label data (learned with the configured BCE / ASL, not
    cross-entropy); ``label`` is kept, and ``mix_lambda`` / ``mix_perm`` record the draw when the
    batch was mixed."""
    if mode not in MIX_MODES:
        raise ValueError(f"mix mode must be one of {', '.join(MIX_MODES)}, got {mode!r}")
    y = soft_targets(batch.label, num_classes)
    rng = np.random.default_rng([seed, epoch, step, 0x313])
    if mode == "none" or alpha <= 0 or rng.random() >= prob:
        return batch.replace(target=y)
    n = len(batch)
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(n)).to(batch.label.device)
    images = batch.images()
    if mode == "mixup":
        mixed = {k: lam * x + (1.0 - lam) * x[perm] for k, x in images.items()}
    else:
        h, w = next(iter(images.values())).shape[-2:]
        y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
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
    each batch is a pure function of (seed, epoch, step), so a resumed run mixes as an uninterrupted one."""

    mode: str
    alpha: float
    prob: float
    num_classes: int
    seed: int  # the run's seed and the rank: every rank mixes its own batches differently

    def __call__(self, batch: ModelBatch, epoch: int, step: int) -> ModelBatch:
        return mix_batch(batch, self.mode, self.alpha, self.prob, self.num_classes, self.seed, epoch, step)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (B, K), averaged over the batch."""
    return -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()
