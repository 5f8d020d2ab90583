"""Models behind one registry: ``create_model(name, num_classes=...)``."""
from . import resnet_cifar, resnet_imagenet  # noqa: F401  (register the variants)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
