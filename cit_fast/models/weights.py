"""Initial weights from local files: cit_fast checkpoints and torchvision ResNet state dicts.

The paper's recipe fine-tunes a pre-trained ResNet. Nothing is downloaded at run time: copy
torchvision's weight file onto the machine (README, "ImageNet weights") and name it in
``model.init`` (the whole model) or ``model.init_single`` (the trunk of a double-branch or
multi-label model). Accepted formats:

- a torchvision ResNet-18/34/50 state dict (V1 or V2 weights: same architecture, same names):
  ``conv1.*``, ``bn1.*`` become the project's ``stem.0.*``, ``stem.1.*``; ``layer1-4`` and ``fc`` keep
  their names;
- a cit_fast checkpoint (``"model"``), a DeepSpeed checkpoint directory, or a bare project state dict.

When only the classifier head differs in shape (ImageNet's 1000 classes vs the user's), the head
keeps its fresh initialisation and one log line says so. Any other mismatch is one error that names
a few of the offending keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from ..checkpoint import read_weights
from ..errors import CheckpointError
from ..utils import print0

HEAD_PREFIXES = ("fc.",)
_TORCHVISION_STEM = {"conv1.": "stem.0.", "bn1.": "stem.1."}


def is_torchvision_resnet(state: Dict[str, torch.Tensor]) -> bool:
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state and "stem.0.weight" not in state


def from_torchvision(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision ResNet names -> the project's (TorchvisionResNet wraps conv1/bn1 into ``stem``)."""
    out = {}
    for k, v in state.items():
        for old, new in _TORCHVISION_STEM.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def _shown(keys: Sequence[str], n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def fit_state_dict(state: Dict[str, torch.Tensor], model: nn.Module, where: str,
                   head_prefixes: Sequence[str] = HEAD_PREFIXES, model_name: str = ""
                   ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``state`` made ready for ``model.load_state_dict``: torchvision names translated, a head of
    another class count dropped (the model keeps its own). Returns (state, notes); a mismatch
    anywhere else raises a CheckpointError naming the keys."""
    if is_torchvision_resnet(state):
        state = from_torchvision(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    notes: List[str] = []
    head = [k for k in own if k.startswith(tuple(head_prefixes))]
    head_only = bool(head) and all(k in head for k in reshaped) and all(k not in head or k in state for k in own)
    if reshaped and head_only:
        old = tuple(state[reshaped[0]].shape)
        new = tuple(own[reshaped[0]].shape)
        notes.append(f"{where}: classifier head re-initialised ({old[0]} -> {new[0]} classes); the rest is "
                     f"loaded")
        state = {k: v for k, v in state.items() if k not in head}
        missing = [k for k in missing if k not in head]
        reshaped = []
    problems = []
    if missing:
        problems.append(f"missing {_shown(missing)}")
    if unexpected:
        problems.append(f"unexpected {_shown(unexpected)}")
    if reshaped:
        problems.append("other shapes: " + _shown([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                   for k in reshaped]))
    if problems:
        raise CheckpointError(f"{where}: does not fit {model_name or type(model).__name__}: " + "; ".join(problems))
    return state, notes


def load_weights(model: nn.Module, path: str, what: str = "model.init", quiet: bool = False,
                 model_name: str = "") -> nn.Module:
    """Load the weight file ``path`` into ``model`` (see the module doc); returns the model."""
    where = f"{what} {path}"
    state, notes = fit_state_dict(read_weights(Path(path), what=what), model, where, model_name=model_name)
    model.load_state_dict(state, strict=not notes)
    if not quiet:
        for n in notes:
            print0(n)
    return model


def single_branch_classes(path: str, what: str = "model.init_single") -> int:
    """The class count of a single-branch weight file (rows of its ``fc.weight``)."""
    state = read_weights(Path(path), what=what)
    if "fc.weight" not in state:
        raise CheckpointError(f"{what} {path}: no 'fc.weight'; expected the weights of a single-branch "
                              f"ResNet (a torchvision state dict or a cit_fast resnet checkpoint)")
    return int(state["fc.weight"].shape[0])
