"""From a ModelConfig to a model: the options its constructor takes, and the task it serves.

Tasks: ``single`` (one image in, one label out), ``double`` (content and context in: the CIT
double-branch models), ``multilabel`` (one image in, multi-hot labels out). Each model declares its
task and its options (keyword parameters named like ModelConfig fields) at registration.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

import torch.nn as nn

from ..checkpoint import read_weights
from ..config import TASKS, ModelConfig
from ..utils import print0
from . import registry
from .weights import is_torchvision_resnet, load_weights

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))


def model_task(name: str, multilabel_data: bool = False, task: str = "auto") -> str:
    """The task of registered model `name` (``task`` other than auto wins)."""
    if task not in TASKS:
        raise ValueError(f"model.task must be one of {', '.join(TASKS)}, got {task!r}")
    if task != "auto":
        return task
    own = registry.model_entry(name).task
    if own == "single" and multilabel_data:
        return "multilabel"
    return own


def model_kwargs(name: str, mcfg: ModelConfig) -> Dict[str, Any]:
    """The options of model `name` from a ModelConfig: the fields its constructor names (the defaults
    live in ModelConfig alone)."""
    return {k: getattr(mcfg, k) for k in registry.model_entry(name).options if k in _CONFIG_FIELDS}


def _single_branch_file(path: str) -> bool:
    """Whether a weight file holds a single-branch ResNet (torchvision's format or a cit_fast resnet*)."""
    state = read_weights(path, what="model.init")
    return is_torchvision_resnet(state) or ("fc.weight" in state and any(k.startswith(("stem.", "conv1.", "layers."))
                                                                         for k in state))


def build_model(mcfg: ModelConfig, num_classes: int) -> nn.Module:
    """``create_model(mcfg.name, num_classes, **the options it names)``, with its initial weights:
    ``model.init_single`` (the trunk of double-branch and multi-label models) and ``model.init`` (the
    whole model; for those models a single-branch file there is taken as ``init_single``)."""
    entry = registry.model_entry(mcfg.name)
    init, init_single = mcfg.init, mcfg.init_single
    if init and "init_single" in entry.options and not init_single and _single_branch_file(init):
        print0(f"model.init {init}: a single-branch ResNet; {mcfg.name} starts its "
               f"{'branches' if entry.task == 'double' else 'trunk'} from it (as model.init_single)")
        init, init_single = "", init
    kwargs = model_kwargs(mcfg.name, mcfg)
    if "init_single" in kwargs:
        kwargs["init_single"] = init_single
    model = registry.create_model(mcfg.name, num_classes=num_classes, **kwargs)
    if init:
        load_weights(model, init, what="model.init", model_name=mcfg.name)
    return model
