"""What a composed batch holds: one small dataclass per pipeline output kind.

``pipeline.compose`` turns a raw uint8 batch into one of these; the training loop, the evaluation
and the batch ops (Mixup / CutMix) ask a batch for what they need instead of looking for keys:

    batch.inputs()   the model's positional inputs: (image,) or (content, context)
    batch.views()    what a training step learns from: the intervened sample and, under epoch-wise
                     augmentation (Eq. 12), the original one beside it
    batch.targets()  ``target`` (soft or mixed labels, after Mixup / CutMix) or ``label``
    batch.images()   every image tensor it holds, by field name (what a batch op transforms)
    batch.replace(**fields)   a copy with some fields changed

Shapes: images (B, 3, H, W) in the pipeline's dtype and layout; ``label`` (B,) int64 or (B, C)
multi-hot float; ``index`` / ``partner`` (B,) the sample and its context partner.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch

Tensors = Tuple[torch.Tensor, ...]
RawBatch = Dict[str, torch.Tensor]  # a pipeline's uint8 batch before compose: obj, mask, ctx, ctx_mask, flip, ...


@dataclass(kw_only=True)
class ModelBatch:
    label: torch.Tensor  # (B,) int64, or (B, C) multi-hot float
    index: torch.Tensor  # (B,) sample indices
    partner: torch.Tensor  # (B,) the context partner of each sample
    target: Optional[torch.Tensor] = None  # (B, C) soft / mixed labels (Mixup, CutMix)
    mix_lambda: Optional[torch.Tensor] = None  # the mixing draw, when the batch was mixed (logs, tests)
    mix_perm: Optional[torch.Tensor] = None

    IMAGE_FIELDS: ClassVar[Tuple[str, ...]] = ()  # the image tensors of each kind, by field name

    def __len__(self) -> int:
        return len(self.label)

    def inputs(self) -> Tensors:
        raise NotImplementedError

    def views(self) -> List[Tensors]:
        raise NotImplementedError

    def targets(self) -> torch.Tensor:
        return self.label if self.target is None else self.target

    def images(self) -> Dict[str, torch.Tensor]:
        return {f: getattr(self, f) for f in self.IMAGE_FIELDS if getattr(self, f) is not None}

    def replace(self, **fields) -> "ModelBatch":
        return dataclasses.replace(self, **fields)


@dataclass(kw_only=True)
class ImageBatch(ModelBatch):
    """Single-branch models: the composite m_i*obj_i + (1-m_i)*ctx_j (or the image itself, plan none)."""

    image: torch.Tensor
    original: Optional[torch.Tensor] = None  # the sample on its own context (epoch-wise augmentation)

    IMAGE_FIELDS = ("image", "original")

    def inputs(self) -> Tensors:
        return (self.image,)

    def views(self) -> List[Tensors]:
        return [(self.image,)] + ([(self.original,)] if self.original is not None else [])


@dataclass(kw_only=True)
class DoubleBatch(ModelBatch):
    """Double-branch models: content m_i*obj_i and context (1-m_j)*ctx_j."""

    content: torch.Tensor
    context: torch.Tensor
    original_context: Optional[torch.Tensor] = None  # the object's own context (epoch-wise augmentation)

    IMAGE_FIELDS = ("content", "context", "original_context")

    def inputs(self) -> Tensors:
        return self.content, self.context

    def views(self) -> List[Tensors]:
        own = [(self.content, self.original_context)] if self.original_context is not None else []
        return [(self.content, self.context)] + own
