"""Losses: cross-entropy (single label), BCE and ASL (multi-label).

Multi-label losses are summed over classes and averaged over the batch, so BCE and ASL share a scale
(ASL's reference implementation returns the sum over the batch too; we average it).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..config import LOSSES
from ..errors import ConfigError



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
