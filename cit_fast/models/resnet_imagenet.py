"""torchvision ResNet-18/34/50 trunks behind the registry (random init: nothing is downloaded).

``forward_features`` returns the last stage's spatial map so heads (and the double-branch and
multi-label models) can reuse the trunk. ``feature_split`` (multi-label training): Singh et al.'s
feature splitting of the pooled feature (``feature_split.py``); a training forward then returns the
full and split logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from .feature_split import FeatureSplit, FeatureSplitOutput
from .registry import register_model


class TorchvisionResNet(nn.Module):
    def __init__(self, arch: str, num_classes: int = 1000, feature_split: bool = False):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = net.fc.in_features
        self.fc = net.fc
        self.feature_split = FeatureSplit(1, self.num_features) if feature_split else None  # pooled = [x_o, x_s]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_features, H/32, W/32)."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor):
        """Logits (B, C); a ``FeatureSplitOutput`` in training with ``feature_split``."""
        if self.feature_split is None or not self.training:
            return self.forward_head(self.forward_features(x))
        pooled = self.forward_features(x).mean(dim=(2, 3))
        return FeatureSplitOutput(self.fc(pooled), *self.feature_split(pooled, self.fc.weight, self.fc.bias))


@register_model
def resnet18(num_classes: int = 1000, feature_split: bool = False) -> TorchvisionResNet:
    return TorchvisionResNet("resnet18", num_classes, feature_split=feature_split)


@register_model
def resnet34(num_classes: int = 1000, feature_split: bool = False) -> TorchvisionResNet:
    return TorchvisionResNet("resnet34", num_classes, feature_split=feature_split)


@register_model
def resnet50(num_classes: int = 1000, feature_split: bool = False) -> TorchvisionResNet:
    return TorchvisionResNet("resnet50", num_classes, feature_split=feature_split)
