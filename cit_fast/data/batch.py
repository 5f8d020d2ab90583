"""What a composed batch holds, and what a model takes from it.

A composed batch (``pipeline.compose``) is a dict of tensors whose keys depend on the pipeline's
output kind: ``image`` (single-branch models) or ``content`` and ``context`` (double-branch
models), with ``label`` and ``index`` always, ``original`` / ``original_context`` under epoch-wise
augmentation (Eq. 12) and ``target`` (soft labels) after Mixup / CutMix. ``model_inputs`` is the
one place that knows which of them a model's forward takes.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

Batch = Dict[str, torch.Tensor]


def model_inputs(batch: Batch) -> Tuple[torch.Tensor, ...]:
    """The positional inputs a model takes from a composed batch."""
    if "content" in batch:
        return batch["content"], batch["context"]
    return (batch["image"],)
