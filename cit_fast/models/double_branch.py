"""The CIT double-branch ResNet (Fig. 4b): a content branch and a context branch, joined before the FC.

    content (B,3,H,W) -> low blocks -> high blocks (content) -> avg-pool -\
                                                                         concat (B, 2F) -> FC -> logits
    context (B,3,H,W) -> low blocks -> high blocks (context) -> avg-pool -/

A trunk is cut into stages: torchvision ResNets into [stem+layer1, layer2, layer3, layer4] ("the
input layer is included in res-block 1"), CIFAR ResNets into [stem+stage1, stage2, stage3]. The top
two stages are the "high-level blocks" each branch owns; the stages below are the low-level blocks,
shared by both branches (``shared_low=True``, one set of weights run on each input) or duplicated.

The paper pre-trains a single-branch ResNet, initialises the corresponding blocks of both branches
from it, and fine-tunes only the two high-level blocks and the FC (Sec. IV, "Implementation
details"): ``init=<checkpoint>`` and ``freeze_low=True``. Frozen blocks also keep their batch-norm
statistics (eval mode) so that fine-tuning leaves them exactly as pre-trained.

``ObjectOnly`` / ``ContextOnly`` are the single-branch ablations of Table I ("Only Obj*", "Only
Bg*"): a standard ResNet that takes the same (content, context) batches and looks at one of them.
"""
from __future__ import annotations

import copy
from typing import Callable, List

import torch
import torch.nn as nn

from ..utils import print0
from .registry import create_model, register_model
from .resnet_cifar import CifarResNet
from .resnet_imagenet import TorchvisionResNet
from .weights import load_weights, single_branch_classes


def split_stages(net: nn.Module) -> List[nn.Module]:
    """A single-branch trunk as its stages, input layer inside the first; modules shared, not copied."""
    if isinstance(net, TorchvisionResNet):
        return [nn.Sequential(net.stem, net.layer1), net.layer2, net.layer3, net.layer4]
    if isinstance(net, CifarResNet):
        blocks = list(net.layers)
        n = len(blocks) // 3
        return [nn.Sequential(net.conv1, net.bn1, nn.ReLU(inplace=False), *blocks[:n]),
                nn.Sequential(*blocks[n:2 * n]), nn.Sequential(*blocks[2 * n:])]
    raise TypeError(f"double-branch models need a CIFAR or torchvision ResNet trunk, got {type(net).__name__}")


def load_single_branch(base: str, path: str, what: str = "model.init_single") -> nn.Module:
    """The single-branch ``base`` model of weight file ``path`` (a cit_fast checkpoint or a torchvision
    ResNet state dict), with the file's own classifier head."""
    net = create_model(base, num_classes=single_branch_classes(path, what))
    return load_weights(net, path, what=what, quiet=True, model_name=f"a single-branch {base}")


class DoubleBranchResNet(nn.Module):
    """Content and context branches over one ResNet trunk's stages; their pooled features joined -> FC."""

    def __init__(self, base: str, num_classes: int, shared_low: bool = True, freeze_low: bool = False,
                 init: str = "", num_high: int = 2):
        super().__init__()
        self.base = base
        trunk = load_single_branch(base, init) if init else create_model(base, num_classes=num_classes)
        stages = split_stages(trunk)
        if not 1 <= num_high < len(stages):
            raise ValueError(f"num_high must be in [1, {len(stages) - 1}] for {base}, got {num_high}")
        low, high = stages[:-num_high], stages[-num_high:]
        self.num_features = trunk.num_features
        self.shared_low = shared_low
        self.low_content = nn.Sequential(*copy.deepcopy(low))
        self.low_context = self.low_content if shared_low else nn.Sequential(*copy.deepcopy(low))
        self.high_content = nn.Sequential(*copy.deepcopy(high))
        self.high_context = nn.Sequential(*copy.deepcopy(high))
        self.fc = nn.Linear(2 * self.num_features, num_classes)
        if init and trunk.fc.out_features == num_classes:
            # both halves get half the single-branch FC: fed the same image twice, the double-branch
            # model starts out computing exactly the single-branch logits
            with torch.no_grad():
                self.fc.weight.copy_(torch.cat([trunk.fc.weight, trunk.fc.weight], 1) / 2)
                self.fc.bias.copy_(trunk.fc.bias)
        elif init:
            print0(f"model.init_single {init}: both branches start from it; classifier head re-initialised "
                   f"({trunk.fc.out_features} -> {num_classes} classes)")
        self.freeze_low = freeze_low
        if freeze_low:
            for m in (self.low_content, self.low_context):
                m.requires_grad_(False)
            self._set_frozen_eval()

    def _set_frozen_eval(self) -> None:
        if self.freeze_low:
            self.low_content.eval()
            self.low_context.eval()

    def train(self, mode: bool = True) -> "DoubleBranchResNet":
        super().train(mode)
        self._set_frozen_eval()  # frozen blocks keep their pre-trained BN statistics
        return self

    def forward_branches(self, content: torch.Tensor, context: torch.Tensor) -> tuple:
        """Spatial features of both branches: ((B, F, h, w), (B, F, h, w)).

        Shared low blocks run once over [content; context]: their batch norm then normalises
        training batches with the statistics of the mixture its running averages track, so training
        and evaluation agree. (Run separately, the running averages would end up dominated by
        whichever input came last, and in eval mode the content would be normalised with context
        statistics: a model that trains well but evaluates at chance.)
        """
        if self.shared_low:
            low_c, low_x = self.low_content(torch.cat([content, context])).split([len(content), len(context)])
        else:
            low_c, low_x = self.low_content(content), self.low_context(context)
        return self.high_content(low_c), self.high_context(low_x)

    def forward_features(self, content: torch.Tensor, context: torch.Tensor) -> tuple:
        """(B, 3, H, W) x 2 -> the spatial maps of both branches ((B, F, h, w), (B, F, h, w))."""
        return self.forward_branches(content, context)

    def forward_head(self, feats: tuple) -> torch.Tensor:
        """Both branches' maps -> pooled content features joined with pooled context features (B, 2F) -> FC."""
        fc, fx = feats
        return self.fc(torch.cat([fc.mean(dim=(2, 3)), fx.mean(dim=(2, 3))], 1))

    def forward(self, content: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(content, context))


class SingleInputOfTwo(nn.Module):
    """A standard (single-branch) ResNet fed one of the two inputs of a double-branch batch."""

    def __init__(self, base: str, num_classes: int, which: str, init: str = ""):
        super().__init__()
        if which not in ("content", "context"):
            raise ValueError(f"which must be 'content' or 'context', got {which!r}")
        self.which = which
        self.net = load_single_branch(base, init) if init else create_model(base, num_classes=num_classes)
        self.num_features = self.net.num_features

    def forward_features(self, content: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(content if self.which == "content" else context)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(feats)

    def forward(self, content: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(content, context))


_BASES = ("resnet8", "resnet20", "resnet32", "resnet56", "resnet18", "resnet34", "resnet50")


def _double(base: str) -> Callable[..., nn.Module]:
    default_classes = 1000 if base in ("resnet18", "resnet34", "resnet50") else 10

    def fn(num_classes: int = default_classes, shared_low: bool = True, freeze_low: bool = False,
           init_single: str = "") -> DoubleBranchResNet:
        return DoubleBranchResNet(base, num_classes, shared_low=shared_low, freeze_low=freeze_low, init=init_single)

    fn.__doc__ = f"CIT double-branch {base} (Fig. 4b)."
    return fn


def _single_of_two(base: str, which: str) -> Callable[..., nn.Module]:
    default_classes = 1000 if base in ("resnet18", "resnet34", "resnet50") else 10

    def fn(num_classes: int = default_classes, init_single: str = "") -> SingleInputOfTwo:
        return SingleInputOfTwo(base, num_classes, which, init=init_single)

    fn.__doc__ = f"Table I ablation: a standard {base} trained on {which} images only."
    return fn


for _b in _BASES:
    register_model(_double(_b), task="double", name=f"double_{_b}")
    register_model(_single_of_two(_b, "content"), task="double", name=f"objonly_{_b}")
    register_model(_single_of_two(_b, "context"), task="double", name=f"bgonly_{_b}")


def blank_like(x: torch.Tensor, mean, std) -> torch.Tensor:
    """A batch of all-zero pixels after normalisation: what a masked-out branch input looks like."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((0 - m) / s).expand_as(x).contiguous()
