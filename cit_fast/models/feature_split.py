"""Feature splitting (Singh et al., CVPR 2020, "Don't Judge an Object by Its Context", Sec. 4.2).

A classifier's feature x (D,) is split in two halves, x = [x_o, x_s] (x_o the first ``split`` channels):
logit_j = W_o,j . x_o + W_s,j . x_s + b_j. For the images where a biased category b occurs *without* its
context c, b's logit is computed with x_s replaced by its mean over recent training images (no gradient
into x_s), so only x_o and W_o learn to recognise b from b itself; x_s is left free to carry the context,
and the full logit is used at test time. The loss (``train.losses.feature_split_loss``) picks, per image
and biased b, the full or the split logit and weights the exclusive images (their weighted loss).

This module computes both logits for every class; which samples use the split one needs the labels and
belongs to the loss. The mean of x_s is kept as in the public re-implementation
(princetonvisualai/ContextualBias, ``train_featuresplit``): the mean over the last 10 training batches,
the current one included. One difference: that code leaves out the images with an exclusive b, which
the model cannot tell without labels; here every training image counts (the exclusive images are
P(b) x P(not c | b) of them, ~1 % on the salient scene arm).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class FeatureSplitOutput:
    """A training forward of a feature-split model: the full logits (B, C) and the split ones (B, C)
    (x_s at its running mean: gradient only through x_o, W_o, W_s and the bias)."""

    logits: torch.Tensor
    split_logits: torch.Tensor

    def chunk(self, n: int):
        """Split along the batch like ``Tensor.chunk`` (the epoch-wise original/intervened halves)."""
        return tuple(FeatureSplitOutput(a, b) for a, b in zip(self.logits.chunk(n), self.split_logits.chunk(n)))


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

    def forward(self, feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Split logits (B, C) of the classifier (weight (C, D), bias (C,)) on ``feats``: (B, D) when
        rows == 1, (B, C, D) for per-label features. In training the batch's x_s is recorded first."""
        x = feats if feats.dim() == 3 else feats[:, None]  # (B, rows, D)
        if x.shape[1:] != (self.rows, self.dim):
            raise ValueError(f"feature split: features of shape {tuple(feats.shape)} for {self.rows} row(s) "
                             f"of {self.dim} channels")
        k = self.split
        if self.training:
            self.record(x[..., k:].detach())
        ctx = self.context_mean().to(x.dtype)  # (rows, D - k), a buffer: no gradient into x_s
        if self.rows == 1:
            return x[:, 0, :k] @ weight[:, :k].t() + (ctx @ weight[:, k:].t())[0] + bias
        return (x[..., :k] * weight[:, :k]).sum(-1) + (ctx * weight[:, k:]).sum(-1) + bias
