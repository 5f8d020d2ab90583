"""Evaluation during training: top-1 / top-5 accuracy over a pipeline, reduced over ranks (and mAP
for multi-hot labels), with the scores of the evaluation wing (``cit_fast.eval``)."""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.distributed as dist

from ..data.pipelines.contract import Pipeline
from ..eval.collect import collect
from ..eval.scores import mean_ap, multilabel_hits, topk_correct


@torch.no_grad()
def evaluate(model: torch.nn.Module, pipeline: Pipeline,
             forward: Callable[..., torch.Tensor] | None = None) -> Dict[str, float]:
    """{'top1': %, 'top5': %, 'n': samples} over the pipeline's samples (all ranks together)."""
    forward = forward or model
    if pipeline.samples.multilabel:  # mAP needs every score: gathered once over the ranks
        scores, targets = collect(model, pipeline, lambda b: forward(*b.inputs()))
        return {**multilabel_hits(scores, targets), "mAP": mean_ap(scores, targets)[0], "n": int(len(scores))}
    was_training = model.training
    model.eval()
    device = pipeline.spec.device
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # correct top-1, correct top-5, total
    try:
        for batch in pipeline:
            hits = topk_correct(forward(*batch.inputs()).float(), batch.label, (1, 5))
            stats += torch.stack([hits[1], hits[5], torch.tensor(len(batch), device=hits[1].device)]).to(stats)
    finally:
        model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    correct1, correct5, n = stats.tolist()  # host sync: once per evaluation
    return {"top1": 100.0 * correct1 / max(n, 1), "top5": 100.0 * correct5 / max(n, 1), "n": int(n)}
