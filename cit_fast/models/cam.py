"""Grad-CAM (Selvaraju et al. 2017) of any registered model.

Every registered model splits ``forward_features`` (the last spatial map(s)) from ``forward_head``:
single-branch ResNets and the multi-label models return one map (B, K, h, w); the CIT double-branch
models return two, the content branch's and the context branch's, so Grad-CAM shows where each
branch looks: on the object in the content input, on the scene in the context input.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F


def grad_cams(model: torch.nn.Module, inputs: Sequence[torch.Tensor], classes: torch.Tensor) -> List[torch.Tensor]:
    """The model's inputs (each (B, 3, H, W)), (B,) class indices -> one (B, H, W) map in [0, 1] per
    spatial map of ``forward_features`` (1 = most important), upsampled to the input size.

    Weights are the spatially averaged gradients of the class score w.r.t. each map; the map is
    ReLU(sum_k w_k A_k).
    """
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise TypeError(f"grad_cam needs a model with forward_features/forward_head, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        out = model.forward_features(*inputs)
        maps = tuple(m.detach().requires_grad_(True) for m in (out if isinstance(out, tuple) else (out,)))
        logits = model.forward_head(maps if isinstance(out, tuple) else maps[0])
        score = logits.float().gather(1, classes.view(-1, 1).to(logits.device)).sum()
        grads = torch.autograd.grad(score, maps)
    model.train(was_training)
    size = inputs[0].shape[-2:]
    cams = []
    for fmap, grad in zip(maps, grads):
        weights = grad.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
        cam = F.relu((weights * fmap.detach()).sum(dim=1, keepdim=True))  # (B, 1, h, w)
        cam = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        lo = cam.flatten(1).min(1).values[:, None, None]
        hi = cam.flatten(1).max(1).values[:, None, None]
        cams.append((cam - lo) / (hi - lo + 1e-8))
    return cams


def grad_cam(model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """A single-input model: (B, 3, H, W) images, (B,) class indices -> (B, H, W) maps in [0, 1]."""
    return grad_cams(model, (images,), classes)[0]
