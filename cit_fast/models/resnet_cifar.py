"""CIFAR ResNets of He et al. (2016), Section 4.2: 6n+2 layers, widths 16/32/64, option-A shortcuts.

ResNet-20/32/56 are n = 3/5/9. ``resnet8`` (n = 1) is a fast variant for smoke tests.
``feature_split`` (multi-label training): Singh et al.'s feature splitting of the pooled feature
(``feature_split.py``); a training forward then returns the full and split logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .feature_split import FeatureSplit, FeatureSplitOutput
from .registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes  # option A: identity shortcut, zero-padded channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, width: int = 16, in_chans: int = 3,
                 feature_split: bool = False):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_features = 4 * width
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.feature_split = FeatureSplit(1, self.num_features) if feature_split else None  # pooled = [x_o, x_s]
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 4*width, H/4, W/4) spatial features."""
        return self.layers(F.relu(self.bn1(self.conv1(x))))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor):
        """Logits (B, C); a ``FeatureSplitOutput`` in training with ``feature_split``."""
        if self.feature_split is None or not self.training:
            return self.forward_head(self.forward_features(x))
        pooled = self.forward_features(x).mean(dim=(2, 3))
        return FeatureSplitOutput(self.fc(pooled), *self.feature_split(pooled, self.fc.weight, self.fc.bias))


@register_model
def resnet8(num_classes: int = 10, feature_split: bool = False) -> CifarResNet:
    return CifarResNet(8, num_classes, feature_split=feature_split)


@register_model
def resnet20(num_classes: int = 10, feature_split: bool = False) -> CifarResNet:
    return CifarResNet(20, num_classes, feature_split=feature_split)


@register_model
def resnet32(num_classes: int = 10, feature_split: bool = False) -> CifarResNet:
    return CifarResNet(32, num_classes, feature_split=feature_split)


@register_model
def resnet56(num_classes: int = 10, feature_split: bool = False) -> CifarResNet:
    return CifarResNet(56, num_classes, feature_split=feature_split)
