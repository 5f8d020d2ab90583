"""torchvision ResNet-18/34/50 trunks behind the registry (random init: nothing is downloaded).

``forward_features`` returns the last stage's spatial map so heads (and the double-branch and
multi-label models) can reuse the trunk.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from .registry import register_model


class TorchvisionResNet(nn.Module):
    def __init__(self, arch: str, num_classes: int = 1000):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.num_features = net.fc.in_features
        self.fc = net.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_features, H/32, W/32)."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def resnet18(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet("resnet18", num_classes)


@register_model
def resnet34(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet("resnet34", num_classes)


@register_model
def resnet50(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet("resnet50", num_classes)
