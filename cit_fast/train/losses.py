"""Losses: cross-entropy (single label; soft targets after Mixup / CutMix), BCE and ASL (multi-label),
and Singh et al.'s feature-split loss.

Multi-label losses are summed over classes and averaged over the batch, so BCE and ASL share a scale
(ASL's reference implementation returns the sum over the batch too; we average it).
"""
from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..config import FEATURE_SPLIT_NORMS, LOSSES, ModelConfig
from ..errors import ConfigError, UsageError
from ..eval.scores import parse_pairs
from ..models.feature_split import FeatureSplitOutput
from ..models.registry import model_entry
from ..utils import print0



def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (B, K) (Mixup / CutMix of single labels), averaged over the batch."""
    return -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, C) logits and multi-hot targets -> scalar."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum") / logits.shape[0]


def asl_loss(logits: torch.Tensor, targets: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
             clip: float = 0.05, eps: float = 1e-8) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., ICCV 2021, Eq. 2-4): focusing per sign and probability shifting.

    L+ = (1-p)^gamma_pos log(p);  L- = p_m^gamma_neg log(1-p_m) with p_m = max(p - clip, 0).
    With gamma_neg = gamma_pos = clip = 0 it is BCE.
    """
    x = logits.float()
    y = targets.float()
    p = torch.sigmoid(x)
    p_m = (p - clip).clamp(min=0) if clip > 0 else p
    # log(p) and log(1 - p_m), computed stably from the logits where no shift applies
    log_p = F.logsigmoid(x)
    log_1m = torch.log((1 - p_m).clamp(min=eps)) if clip > 0 else F.logsigmoid(-x)
    loss_pos = y * log_p
    loss_neg = (1 - y) * log_1m
    if gamma_pos or gamma_neg:
        with torch.no_grad():  # the focusing weights are not differentiated (as the reference does)
            w = torch.pow(1 - p, gamma_pos) * y + torch.pow(p_m, gamma_neg) * (1 - y)
        loss = (loss_pos + loss_neg) * w
    else:
        loss = loss_pos + loss_neg
    return -loss.sum() / x.shape[0]


def build_loss(name: str, multilabel: bool, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
               clip: float = 0.05) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The criterion(logits, targets) for loss `name` ("auto": ce, or bce for multi-label data)."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
    if name == "auto":
        name = "bce" if multilabel else "ce"
    if multilabel and name == "ce":
        raise ConfigError("optim.loss=ce needs single-label data; the data has multi-hot labels: use bce or asl")
    if not multilabel and name in ("bce", "asl"):
        raise ConfigError(f"optim.loss={name} needs multi-hot labels; the data is single-label: use ce")
    if name == "ce":
        return lambda logits, y: F.cross_entropy(logits.float(), y)
    if name == "bce":
        return bce_loss
    return lambda logits, y: asl_loss(logits, y, gamma_neg, gamma_pos, clip)


def feature_split_weights(labels: np.ndarray, pairs: Sequence[Tuple[int, int]],
                          alpha_min: float = 3.0) -> List[float]:
    """Singh et al.'s loss weight of b on the images where b occurs without c, per pair (b, c):
    max(sqrt(n_cooccur / n_exclusive), alpha_min) over the training labels (alpha_min without exclusive images)."""
    t = np.asarray(labels) > 0.5
    out = []
    for b, c in pairs:
        n_co, n_ex = int((t[:, b] & t[:, c]).sum()), int((t[:, b] & ~t[:, c]).sum())
        out.append(max(math.sqrt(n_co / n_ex), alpha_min) if n_ex else float(alpha_min))
    return out


class FeatureSplitLoss:
    """Singh et al.'s feature-split loss (``models.feature_split`` says where it follows their code and
    where not): BCE summed over classes and averaged over the batch, where an image in which some pair's b
    occurs without its c (an exclusive image) is scored by the split logits of every class (x_s at its
    running mean) with the context term of the biased b's detached (W_s of b learns nothing there), and
    b's term on its exclusive images is weighted by the pair's alpha_b; every other image is plain BCE on
    the full logits. ``norm``: ``batch`` averages every image's loss over the batch; ``groups`` averages the
    exclusive and the other images each over their own count and sums the two (the re-implementation's
    two SGD steps per batch, each a mean over its own images, as one step). A plain tensor of logits (no
    split: evaluation) gets plain BCE."""

    def __init__(self, pairs: Sequence[Tuple[int, int]], weights: Sequence[float], norm: str = "batch"):
        if len(pairs) != len(weights) or not pairs:
            raise ValueError(f"feature split loss: {len(pairs)} pairs and {len(weights)} weights")
        if norm not in FEATURE_SPLIT_NORMS:
            raise ValueError(f"feature split loss: norm must be one of {', '.join(FEATURE_SPLIT_NORMS)}, got {norm!r}")
        self.pairs, self.weights = [tuple(map(int, p)) for p in pairs], [float(w) for w in weights]
        self.norm = norm
        self.biased = sorted({b for b, _ in self.pairs})  # the classes whose W_s rows the split protects

    def masks(self, targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(exclusive images (B,) bool: they use the split logits, weight (B, C): alpha_b where b is
        exclusive, 1 elsewhere)."""
        t = targets > 0.5  # soft (mixed) targets: a label counts as present above one half
        excl = torch.zeros(t.shape[0], dtype=torch.bool, device=t.device)
        weight = torch.ones_like(targets, dtype=torch.float32)
        for (b, c), w in zip(self.pairs, self.weights):
            e = t[:, b] & ~t[:, c]
            excl |= e
            weight[e, b] = w
        return excl, weight

    def __call__(self, out, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(out, FeatureSplitOutput):
            return bce_loss(out, targets)
        y = targets.float()
        excl, weight = self.masks(targets)
        split = out.split_logits.float()
        cols = torch.tensor(self.biased, device=split.device)
        ctx = out.context.float()[cols]  # (n_b,): W_s,b . mean(x_s), detached below for the b's
        split = split.index_add(1, cols, (ctx.detach() - ctx).expand(split.shape[0], -1))
        logits = torch.where(excl[:, None], split, out.logits.float())  # (B, C)
        per_image = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * weight).sum(1)  # (B,)
        if self.norm == "batch":
            return per_image.sum() / y.shape[0]
        # groups: the exclusive and the other images each averaged over their own count, summed: one step
        # that moves as the re-implementation's two SGD steps per batch (other images, then exclusive ones)
        n_ex = excl.sum()
        n_non = excl.numel() - n_ex
        return (per_image * ~excl).sum() / n_non.clamp(min=1) + (per_image * excl).sum() / n_ex.clamp(min=1)


def feature_split_loss(mcfg: ModelConfig, loss: str, train_set, task: str) -> FeatureSplitLoss:
    """The criterion of ``model.feature_split``: the pairs of ``model.biased_pairs`` resolved against the
    training classes, their weights from the training labels; one clear error where it cannot apply."""
    if "feature_split" not in model_entry(mcfg.name).options:
        raise ConfigError(f"model.feature_split: model {mcfg.name} has no feature split (decoder_* and resnet* do)")
    if task != "multilabel" or not train_set.multilabel:
        raise ConfigError(f"model.feature_split: needs multi-hot labels and a multi-label model; the task is {task}")
    if loss not in ("auto", "bce"):
        raise ConfigError(f"optim.loss={loss}: model.feature_split's weighted loss is BCE (use optim.loss=bce)")
    try:
        pairs = parse_pairs(mcfg.biased_pairs, train_set.classes, "model.biased_pairs")
    except UsageError as e:
        raise ConfigError(str(e) if str(e).startswith("model.biased_pairs") else f"model.biased_pairs: {e}") from None
    if not pairs:
        raise ConfigError(f"model.biased_pairs: no pair in {mcfg.biased_pairs!r} (expected b:c,...)")
    weights = feature_split_weights(train_set.labels, pairs, mcfg.feature_split_alpha_min)
    t = np.asarray(train_set.labels) > 0.5
    print0("feature split: " + ", ".join(
        f"{train_set.classes[b]}:{train_set.classes[c]} ({int((t[:, b] & ~t[:, c]).sum())} exclusive / "
        f"{int((t[:, b] & t[:, c]).sum())} co-occur, weight {w:.2f})" for (b, c), w in zip(pairs, weights)))
    return FeatureSplitLoss(pairs, weights, mcfg.feature_split_norm)
