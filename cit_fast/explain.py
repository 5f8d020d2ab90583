"""Diagnostics: Grad-CAM maps (Selvaraju et al. 2017) for any registered model that splits
``forward_features`` (the last spatial map) from ``forward_head``, and per-class accuracy changes
between two runs (baseline vs CIT).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F


def grad_cam(model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images, (B,) class indices -> (B, H, W) maps in [0, 1] (1 = most important).

    Weights are the spatially averaged gradients of the class score w.r.t. the last feature map
    (``forward_features``); the map is ReLU(sum_k w_k A_k), upsampled to the image size.
    """
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise TypeError(f"grad_cam needs a model with forward_features/forward_head, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        feats = model.forward_features(images).detach().requires_grad_(True)  # (B, K, h, w)
        logits = model.forward_head(feats)
        score = logits.float().gather(1, classes.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, feats)
    model.train(was_training)
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
    cam = F.relu((weights * feats.detach()).sum(dim=1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = cam.flatten(1).min(1).values[:, None, None]
    hi = cam.flatten(1).max(1).values[:, None, None]
    return (cam - lo) / (hi - lo + 1e-8)


def overlay(image_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image + (H, W) map in [0, 1] -> (H, W, 3) uint8 heat-map overlay."""
    heat = np.stack([cam, np.clip(1.5 - np.abs(cam * 4 - 2), 0, 1) * 0.8, 1 - cam], axis=-1)  # blue -> red
    out = (1 - alpha) * image_uint8.astype(np.float32) / 255 + alpha * heat
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def per_class_accuracy(model: torch.nn.Module, pipeline) -> np.ndarray:
    """Top-1 accuracy (%) of every class over the pipeline's samples."""
    from .train.evaluate import model_inputs

    model.eval()
    correct: Dict[int, int] = {}
    total: Dict[int, int] = {}
    with torch.no_grad():
        for batch in pipeline:
            pred = model(*model_inputs(batch)).argmax(1)
            for y, p in zip(batch["label"].tolist(), pred.tolist()):
                total[y] = total.get(y, 0) + 1
                correct[y] = correct.get(y, 0) + int(p == y)
    k = max(total) + 1 if total else 0
    return np.array([100.0 * correct.get(c, 0) / total[c] if total.get(c) else np.nan for c in range(k)])


def load_run_model(checkpoint, overrides=()):
    """(model, cfg, test SampleSet) of a cit_fast checkpoint (its saved config + overrides)."""
    from pathlib import Path

    from .data.build import build_datasets
    from .models.build import build_model
    from .checkpoint import load_checkpoint
    from .config import from_dict

    state = load_checkpoint(Path(checkpoint))
    if "config" not in state:
        raise ValueError(f"checkpoint {checkpoint}: has no config; cannot rebuild its data and model")
    cfg = from_dict(state["config"], overrides)
    cfg.model.init_single = ""  # the checkpoint holds every weight; the init file may be long gone
    train_set, test_set = build_datasets(cfg.data)
    model = build_model(cfg.model, cfg.model.num_classes or train_set.num_classes)  # the saved options too
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, test_set


def explain_images(checkpoint, indices, classes=None, overrides=()) -> np.ndarray:
    """A PNG-ready grid: for each test index, the image and its Grad-CAM overlay for the given (or
    predicted) class. Returns (2*H, N*W, 3) uint8."""
    from .data.build import build_pipeline
    from .data.pipeline import compose

    model, cfg, test_set = load_run_model(checkpoint, overrides)
    pipe = build_pipeline(test_set.subset(indices), cfg, train=False, batch_size=len(indices))
    raw = next(iter(pipe.raw_batches()))
    x = compose(raw, pipe.spec)["image"]
    with torch.no_grad():
        pred = model(x).argmax(1)
    cls = torch.as_tensor(classes, dtype=torch.long) if classes is not None else pred
    cam = grad_cam(model, x, cls).numpy()
    imgs = raw["obj"].numpy()
    top = np.concatenate(list(imgs), axis=1)
    bottom = np.concatenate([overlay(i, c) for i, c in zip(imgs, cam)], axis=1)
    return np.concatenate([top, bottom], axis=0)
