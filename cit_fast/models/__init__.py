"""Models behind one registry: ``create_model(name, num_classes=...)``."""
from . import causal_multilabel, double_branch, resnet_cifar, resnet_imagenet  # noqa: F401  (register the variants)
from .build import build_model, model_task
from .registry import create_model, list_models, register_model

__all__ = ["build_model", "create_model", "list_models", "model_task", "register_model"]
