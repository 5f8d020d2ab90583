"""Diagnostics: Grad-CAM pictures of a run's test images (``models.cam``: where each branch looks),
and per-class accuracy changes between two runs (baseline vs CIT)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data.pipelines.contract import compose
from ..errors import UsageError
from ..models.cam import grad_cams


def overlay(image_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image + (H, W) map in [0, 1] -> (H, W, 3) uint8 heat-map overlay."""
    heat = np.stack([cam, np.clip(1.5 - np.abs(cam * 4 - 2), 0, 1) * 0.8, 1 - cam], axis=-1)  # blue -> red
    out = (1 - alpha) * image_uint8.astype(np.float32) / 255 + alpha * heat
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def per_class_accuracy(model: torch.nn.Module, pipeline) -> np.ndarray:
    """Top-1 accuracy (%) of every class over the pipeline's samples."""
    model.eval()
    correct: Dict[int, int] = {}
    total: Dict[int, int] = {}
    with torch.no_grad():
        for batch in pipeline:
            pred = model(*batch.inputs()).argmax(1)
            for y, p in zip(batch.label.tolist(), pred.tolist()):
                total[y] = total.get(y, 0) + 1
                correct[y] = correct.get(y, 0) + int(p == y)
    k = max(total) + 1 if total else 0
    return np.array([100.0 * correct.get(c, 0) / total[c] if total.get(c) else np.nan for c in range(k)])


def spread_indices(samples, n: int = 8) -> List[int]:
    """Up to ``n`` test indices over as many classes as possible: the first image of each class, with
    the classes taken evenly across the class list, then second images, and so on."""
    labels = samples.labels
    per_class = labels.argmax(1) if labels.ndim == 2 else labels  # multi-label: an image's first label
    classes = np.unique(per_class)
    order = classes[np.round(np.linspace(0, len(classes) - 1, min(n, len(classes)))).astype(int)] \
        if len(classes) > n else classes
    queues = {c: list(np.nonzero(per_class == c)[0]) for c in order}
    out: List[int] = []
    while len(out) < min(n, len(labels)) and any(queues.values()):
        for c in order:
            if queues[c] and len(out) < n:
                out.append(int(queues[c].pop(0)))
    return out


def _to_uint8(x: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised (B, 3, H, W) model inputs -> (B, H, W, 3) uint8 pictures."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x.detach().float().cpu() * s + m).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def explain_images(run, indices: Optional[Sequence[int]] = None, classes: Optional[Sequence[int]] = None
                   ) -> np.ndarray:
    """A PNG-ready grid of a run's test images and their Grad-CAM for the given (default: predicted)
    class. Single-input models: rows image / overlay. Double-branch models: rows content input / its
    map / context input / its map. Returns (rows*H, N*W, 3) uint8.

    run: a ``cit_fast.eval.Run``; indices: test sample indices (default: a spread over the classes).
    """
    indices = list(indices) if indices is not None else spread_indices(run.test_set)
    n = len(run.test_set)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise UsageError(f"--indices: {bad[:5]} out of range; the test set has {n} images (0..{n - 1})")
    pipe = run.pipeline(run.test_set.subset(indices), batch_size=len(indices))
    raw = next(iter(pipe.raw_batches()))
    batch = compose(raw, pipe.spec)
    inputs = tuple(t.to(run.device) for t in batch.inputs())
    with torch.no_grad():
        pred = run.model(*inputs).argmax(1)
    cls = torch.as_tensor(classes, dtype=torch.long) if classes is not None else pred
    cams = [c.cpu().numpy() for c in grad_cams(run.model, inputs, cls)]
    spec = pipe.spec
    pictures = [_to_uint8(x, spec.mean, spec.std) for x in inputs] if run.task == "double" else [raw["obj"].numpy()]
    if len(cams) < len(pictures):  # a single-branch ablation fed one of the two inputs (objonly_, bgonly_)
        pictures = [pictures[1 if getattr(run.model, "which", "content") == "context" else 0]]
    rows = []
    for pic, cam in zip(pictures, cams):
        rows.append(np.concatenate(list(pic), axis=1))
        rows.append(np.concatenate([overlay(p, c) for p, c in zip(pic, cam)], axis=1))
    return np.concatenate(rows, axis=0)
