"""From a ModelConfig to a model: which options each family takes, and which task a model serves.

Tasks: ``single`` (one image in, one label out), ``double`` (content and context in: the CIT
double-branch models), ``multilabel`` (one image in, multi-hot labels out). A registered function
may carry ``fn.task``; plain ResNets are ``single`` (and ``multilabel`` on multi-hot data).
"""
from __future__ import annotations

from typing import Any, Dict

import torch.nn as nn

from . import registry

TASKS = ("auto", "single", "double", "multilabel")


def model_task(name: str, multilabel_data: bool = False, task: str = "auto") -> str:
    """The task of registered model `name` (``task`` other than auto wins)."""
    if task not in TASKS:
        raise ValueError(f"model.task must be one of {', '.join(TASKS)}, got {task!r}")
    if task != "auto":
        return task
    fn = registry._MODELS.get(name)
    if fn is None:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(registry.list_models())}")
    own = getattr(fn, "task", "single")
    if own == "single" and multilabel_data:
        return "multilabel"
    return own


def model_kwargs(name: str, mcfg: Any) -> Dict[str, Any]:
    """The constructor options of model `name` from a ModelConfig (only those its family takes)."""
    fn = registry._MODELS.get(name)
    family = getattr(fn, "task", "single")
    if family == "double":
        if name.startswith(("objonly_", "bgonly_")):
            return {"init": getattr(mcfg, "init_single", "")}
        return {"shared_low": getattr(mcfg, "shared_low", True), "freeze_low": getattr(mcfg, "freeze_low", False),
                "init": getattr(mcfg, "init_single", "")}
    if family == "multilabel":
        kw = {"embed_dim": getattr(mcfg, "embed_dim", 128), "num_heads": getattr(mcfg, "num_heads", 4),
              "decoder_layers": getattr(mcfg, "decoder_layers", 1), "dropout": getattr(mcfg, "dropout", 0.1),
              "init": getattr(mcfg, "init_single", "")}
        if name.startswith("causal_"):
            kw.update(num_confounders=getattr(mcfg, "num_confounders", 16),
                      confounder_source=getattr(mcfg, "confounder_source", "kmeans"),
                      merge=getattr(mcfg, "merge", "proposed"),
                      observed_confounders=getattr(mcfg, "observed_confounders", False))
        return kw
    return {}


def build_model(mcfg: Any, num_classes: int) -> nn.Module:
    """``create_model(mcfg.name, num_classes, **options of its family)``."""
    return registry.create_model(mcfg.name, num_classes=num_classes, **model_kwargs(mcfg.name, mcfg))
