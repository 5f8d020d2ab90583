"""Model outputs over a pipeline, gathered from every rank, in sample order, each sample once.

Uneven shards repeat a few samples (the plan pads them by wrapping around, as torch's
DistributedSampler does); the sample index every batch carries removes the repeats.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..data.pipelines.batch import ModelBatch


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, concatenated (CPU)."""
    t = t.cpu()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, t)
        t = torch.cat(parts)
    return t


@torch.no_grad()
def collect_outputs(model: torch.nn.Module, batches: Iterable[ModelBatch],
                    outputs: Callable[[ModelBatch], Dict[str, torch.Tensor]]) -> Dict[str, np.ndarray]:
    """{name: (N, ...) array} of ``outputs(batch)`` (each value (B, ...)) over all ranks, by sample index.
    The model is in eval mode meanwhile."""
    was = model.training
    model.eval()
    parts: Dict[str, List[torch.Tensor]] = {}
    index: List[torch.Tensor] = []
    try:
        for batch in batches:
            for name, value in outputs(batch).items():
                parts.setdefault(name, []).append(value.detach().float().cpu() if value.is_floating_point()
                                                  else value.detach().cpu())
            index.append(batch.index.cpu())
    finally:
        model.train(was)
    if not index:
        raise ValueError("evaluation: no batches")
    i_np = gather_rows(torch.cat(index)).numpy()
    _, first = np.unique(i_np, return_index=True)  # drop the padding duplicates of uneven shards
    order = first[np.argsort(i_np[first], kind="stable")]
    return {name: gather_rows(torch.cat(values)).numpy()[order] for name, values in parts.items()}


def collect(model: torch.nn.Module, batches: Iterable[ModelBatch], forward: Optional[Callable] = None
            ) -> Tuple[np.ndarray, np.ndarray]:
    """(outputs (N, C) float32, labels) over all ranks, in sample-index order, each sample once.
    forward(batch) -> logits; default: the model on the batch's inputs."""
    forward = forward or (lambda batch: model(*batch.inputs()))
    out = collect_outputs(model, batches, lambda b: {"scores": forward(b).float(), "labels": b.label})
    return out["scores"], out["labels"]
