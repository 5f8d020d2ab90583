"""Model registry: one registered function per variant, built by name (timm style)."""
from __future__ import annotations

from typing import Callable, Dict, List

import torch.nn as nn

from ..errors import ConfigError

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> List[str]:
    return sorted(_MODELS)


def get_model_fn(name: str) -> Callable[..., nn.Module]:
    """The registered function of model ``name``; a ConfigError listing the models otherwise."""
    if name not in _MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    return get_model_fn(name)(**kwargs)
