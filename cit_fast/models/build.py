"""From a ModelConfig to a model: which options each family takes, and which task a model serves.

Tasks: ``single`` (one image in, one label out), ``double`` (content and context in: the CIT
double-branch models), ``multilabel`` (one image in, multi-hot labels out). A registered function
may carry ``fn.task``; plain ResNets are ``single`` (and ``multilabel`` on multi-hot data).
"""
from __future__ import annotations

from typing import Any, Dict

import torch.nn as nn

from ..checkpoint import read_weights
from ..config import TASKS, ModelConfig
from ..utils import print0
from . import registry
from .weights import is_torchvision_resnet, load_weights



def model_task(name: str, multilabel_data: bool = False, task: str = "auto") -> str:
    """The task of registered model `name` (``task`` other than auto wins)."""
    if task not in TASKS:
        raise ValueError(f"model.task must be one of {', '.join(TASKS)}, got {task!r}")
    if task != "auto":
        return task
    fn = registry.get_model_fn(name)
    own = getattr(fn, "task", "single")
    if own == "single" and multilabel_data:
        return "multilabel"
    return own


def model_kwargs(name: str, mcfg: ModelConfig) -> Dict[str, Any]:
    """The constructor options of model `name` from a ModelConfig (only those its family takes; the
    defaults live in ModelConfig alone)."""
    family = getattr(registry.get_model_fn(name), "task", "single")
    if family == "double":
        if name.startswith(("objonly_", "bgonly_")):
            return {"init": mcfg.init_single}
        return {"shared_low": mcfg.shared_low, "freeze_low": mcfg.freeze_low, "init": mcfg.init_single}
    if family == "multilabel":
        kw = {"embed_dim": mcfg.embed_dim, "num_heads": mcfg.num_heads, "decoder_layers": mcfg.decoder_layers,
              "dropout": mcfg.dropout, "init": mcfg.init_single, "freeze_trunk": mcfg.freeze_trunk,
              "trunk_cache_mb": mcfg.trunk_cache_mb}
        if name.startswith("causal_"):
            kw.update(num_confounders=mcfg.num_confounders, confounder_source=mcfg.confounder_source,
                      merge=mcfg.merge, observed_confounders=mcfg.observed_confounders,
                      correlation=mcfg.correlation, branch1_loss=mcfg.branch1_loss,
                      confounder_net=mcfg.confounder_net)
        return kw
    return {}


def _single_branch_file(path: str) -> bool:
    """Whether a weight file holds a single-branch ResNet (torchvision's format or a cit_fast resnet*)."""
    state = read_weights(path, what="model.init")
    return is_torchvision_resnet(state) or ("fc.weight" in state and any(k.startswith(("stem.", "conv1.", "layers."))
                                                                         for k in state))


def build_model(mcfg: ModelConfig, num_classes: int) -> nn.Module:
    """``create_model(mcfg.name, num_classes, **options of its family)``, with its initial weights:
    ``model.init_single`` (the trunk of double-branch and multi-label models) and ``model.init`` (the
    whole model; for those models a single-branch file there is taken as ``init_single``)."""
    family = getattr(registry.get_model_fn(mcfg.name), "task", "single")
    init, init_single = mcfg.init, mcfg.init_single
    if init and family in ("double", "multilabel") and not init_single and _single_branch_file(init):
        print0(f"model.init {init}: a single-branch ResNet; {mcfg.name} starts its "
               f"{'branches' if family == 'double' else 'trunk'} from it (as model.init_single)")
        init, init_single = "", init
    kwargs = model_kwargs(mcfg.name, mcfg)
    if "init" in kwargs:
        kwargs["init"] = init_single
    model = registry.create_model(mcfg.name, num_classes=num_classes, **kwargs)
    if init:
        load_weights(model, init, what="model.init", model_name=mcfg.name)
    return model
