"""Model registry: one registered constructor per variant, built by name (timm style).

A constructor declares what it is at registration: ``@register_model(task="double")`` (``single``
by default) and its options as named keyword parameters; ``build_model`` passes it the ModelConfig
fields of those names and nothing else.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch.nn as nn

from ..config import TASKS
from ..errors import ConfigError

MODEL_TASKS = tuple(t for t in TASKS if t != "auto")  # what a model serves: model.task's values but auto


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its constructor, the task it serves and the options it takes."""

    name: str
    fn: Callable[..., nn.Module]
    task: str  # single (one image -> one label; multilabel on multi-hot data), double, multilabel
    options: Tuple[str, ...]  # the constructor's keyword parameters besides num_classes


_MODELS: Dict[str, ModelEntry] = {}


def register_model(fn: Optional[Callable[..., nn.Module]] = None, *, task: str = "single", name: str = ""):
    """Register a model constructor under ``name`` (default: its function name).

    ``@register_model`` or ``@register_model(task=...)`` on a function, or ``register_model(fn,
    task=..., name=...)`` for generated variants. The constructor takes ``num_classes`` and names
    every option it accepts (no ``**kwargs``: an option it does not name could not reach it).
    """
    if task not in MODEL_TASKS:
        raise ValueError(f"register_model: task must be one of {', '.join(MODEL_TASKS)}, got {task!r}")

    def add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} registered twice")
        params = inspect.signature(f).parameters
        if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()):
            raise TypeError(f"model {key!r}: its constructor must name its options (no *args / **kwargs)")
        if "num_classes" not in params:
            raise TypeError(f"model {key!r}: its constructor must take num_classes")
        _MODELS[key] = ModelEntry(key, f, task, tuple(p for p in params if p != "num_classes"))
        return f

    return add if fn is None else add(fn)


def list_models() -> List[str]:
    return sorted(_MODELS)


def model_entry(name: str) -> ModelEntry:
    """The registration of model ``name``; a ConfigError listing the models otherwise."""
    if name not in _MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    return model_entry(name).fn(**kwargs)
