"""Evaluation: top-1 / top-5 accuracy over a pipeline, reduced over ranks (and mAP for multi-hot labels)."""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.distributed as dist

from ..data.pipeline import Batch, Pipeline


def model_inputs(batch: Batch) -> tuple:
    """The positional inputs a model takes from a composed batch."""
    if "content" in batch:
        return batch["content"], batch["context"]
    return (batch["image"],)


@torch.no_grad()
def evaluate(model: torch.nn.Module, pipeline: Pipeline,
             forward: Callable[..., torch.Tensor] | None = None) -> Dict[str, float]:
    """{'top1': %, 'top5': %, 'n': samples} over the pipeline's samples (all ranks together)."""
    was_training = model.training
    model.eval()
    forward = forward or model
    device = pipeline.spec.device
    correct1 = torch.zeros((), dtype=torch.float64, device=device)
    correct5 = torch.zeros((), dtype=torch.float64, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    if pipeline.samples.multilabel:
        return _evaluate_multilabel(model, pipeline, forward, was_training)
    for batch in pipeline:
        logits = forward(*model_inputs(batch)).float()
        y = batch["label"]
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit = topk == y[:, None]
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(dim=1).sum()
        total += len(y)
    if dist.is_available() and dist.is_initialized():
        stats = torch.stack([correct1, correct5, total])
        dist.all_reduce(stats)
        correct1, correct5, total = stats
    model.train(was_training)
    n = float(total)  # host sync: once per evaluation
    return {"top1": 100.0 * float(correct1) / max(n, 1), "top5": 100.0 * float(correct5) / max(n, 1), "n": int(n)}


def _evaluate_multilabel(model, pipeline: Pipeline, forward, was_training: bool) -> Dict[str, float]:
    """Multi-hot labels: mAP (%), and top-1 / top-5 as "the top-k scores hold a true label" (%)."""
    from .metrics_eval import collect, mean_ap, multilabel_hits

    try:
        scores, targets = collect(model, pipeline, lambda b: forward(*model_inputs(b)))  # all ranks
    finally:
        model.train(was_training)
    return {**multilabel_hits(scores, targets), "mAP": mean_ap(scores, targets)[0], "n": int(len(scores))}
