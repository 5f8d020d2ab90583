"""Feature splitting (Singh et al., CVPR 2020, "Don't Judge an Object by Its Context", Sec. 4.2).

A classifier's feature x (D,) is split in two halves, x = [x_o, x_s] (x_o the first ``split`` channels):
logit_j = W_o,j . x_o + W_s,j . x_s + b_j. On a training image where a biased category b occurs
*without* its context c (an "exclusive" image), x_s is replaced by its mean over recent training batches
(no gradient into x_s) and W_s of b learns nothing from the image, so only x_o and W_o learn to recognise
b from b itself; x_s is left free to carry the context. The full feature is used at test time. The loss
(``train.losses.FeatureSplitLoss``) picks, per image, the full or the split logits and up-weights b's
term on its exclusive images by alpha_b (their weighted loss).

This module computes, for every class, the split logit and its context term W_s,j . mean(x_s) (the loss
detaches that term for the biased b's); which images use them needs the labels and belongs to the loss.

As in the public re-implementation (princetonvisualai/ContextualBias, ``classifier.py``,
``train_featuresplit``): the split is of the whole feature at its half (1024 of 2048); on an exclusive
image every class's logit reads the mean x_s, not only b's; x_s's mean is over the last 10 training
batches, the current one included; W_s's rows of the b's get no gradient from the exclusive images;
the exclusive b's BCE term is weighted by alpha_b = sqrt(n_cooccur / n_exclusive) over the training
labels. Where this one differs:

- one forward, one loss and one optimizer step per batch (BCE summed over classes). The re-implementation
  takes two SGD steps per batch, one on the non-exclusive images and one on the exclusive ones alone,
  each a mean over its own images, which weighs an exclusive image B / B_exclusive times more than its
  share of the batch on top of alpha_b. ``model.feature_split_norm=groups`` (the default) keeps that
  weighting in one step (each group averaged over its own images, the two summed); ``batch`` averages
  every image over the batch (on a variant of the salient scene arm, one seed, batch moved the decoder's
  Exclusive AP by -0.6 and c's lift of b's logit by -0.05, groups by +1.1 and -0.33);
- x_s's running mean counts every training image (the model cannot tell the exclusive ones without the
  labels; they are P(b) x P(not c | b) of the images per pair, 2.5 % on the salient scene arm) and is the mean
  of the batch means (the re-implementation: of the non-exclusive images');
- W_s of a biased b gets no gradient from any exclusive image (the re-implementation: from the exclusive
  images of a batch in which b itself is exclusive somewhere);
- alpha_b has a floor, ``model.feature_split_alpha_min`` (3 by default; 1 = none, the re-implementation's
  ``calculate_alpha.py``);
- the feature split: the pooled ResNet feature (after its ReLU) or each of the decoder's label features,
  not an extra 2048 -> 2048 layer's output before its ReLU and dropout on a pre-trained ResNet-50;
- the split is trained from the first step (``model.init`` may start it from a trained baseline); the
  re-implementation fine-tunes its stage-1 baseline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn


@dataclass
class FeatureSplitOutput:
    """A training forward of a feature-split model: the full logits (B, C), the split ones (B, C) (x_s at
    its running mean: gradient only through x_o, W_o, W_s and the bias) and each class's context term
    W_s,j . mean(x_s) (C,), the part of the split logit that reaches W_s (the loss may detach it)."""

    logits: torch.Tensor
    split_logits: torch.Tensor
    context: torch.Tensor

    def chunk(self, n: int):
        """Split along the batch like ``Tensor.chunk`` (the epoch-wise original/intervened halves)."""
        return tuple(FeatureSplitOutput(a, b, self.context)
                     for a, b in zip(self.logits.chunk(n), self.split_logits.chunk(n)))


class FeatureSplit(nn.Module):
    """The x_s running mean of one linear classifier and its split logits.

    ``rows``: 1 for a classifier over one shared feature (a ResNet's pooled feature, (B, D)), or C for
    per-label features (the decoder's X, (B, C, D), label j read by its own head). ``fraction``: the share
    of the channels in x_o (Singh et al.: the first half, 1024 of 2048)."""

    def __init__(self, rows: int, dim: int, fraction: float = 0.5, history: int = 10):
        super().__init__()
        if not 0 < fraction < 1:
            raise ValueError(f"feature split: the share of x_o must be in (0, 1), got {fraction}")
        self.split = int(round(dim * fraction))
        if not 0 < self.split < dim:
            raise ValueError(f"feature split: {dim} channels cannot be split at a share of {fraction}")
        self.rows, self.dim = rows, dim
        self.register_buffer("history", torch.zeros(history, rows, dim - self.split))  # batch means of x_s
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # batches recorded

    def context_mean(self) -> torch.Tensor:
        """(rows, D - split): the mean of x_s over the recorded batches (zeros before the first)."""
        n = int(min(int(self.count), self.history.shape[0]))
        return self.history[:n].mean(0) if n else self.history[0]

    @torch.no_grad()
    def record(self, xs: torch.Tensor) -> None:
        """Add one batch's mean of x_s ((B, rows, D - split)) to the ring of the last ``history`` batches."""
        self.history[int(self.count) % self.history.shape[0]] = xs.mean(0).to(self.history.dtype)
        self.count += 1

    def forward(self, feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(split logits (B, C), context terms (C,)) of the classifier (weight (C, D), bias (C,)) on
        ``feats``: (B, D) when rows == 1, (B, C, D) for per-label features; split = x_o . W_o + context + b,
        context_j = W_s,j . mean(x_s). In training the batch's x_s is recorded first."""
        x = feats if feats.dim() == 3 else feats[:, None]  # (B, rows, D)
        if x.shape[1:] != (self.rows, self.dim):
            raise ValueError(f"feature split: features of shape {tuple(feats.shape)} for {self.rows} row(s) "
                             f"of {self.dim} channels")
        k = self.split
        if self.training:
            self.record(x[..., k:].detach())
        ctx = self.context_mean().to(x.dtype)  # (rows, D - k), a buffer: no gradient into x_s
        if self.rows == 1:
            context = (ctx @ weight[:, k:].t())[0]  # (C,)
            return x[:, 0, :k] @ weight[:, :k].t() + context + bias, context
        context = (ctx * weight[:, k:]).sum(-1)  # (C,): label j's own x_s mean against its own W_s row
        return (x[..., :k] * weight[:, :k]).sum(-1) + context + bias, context
