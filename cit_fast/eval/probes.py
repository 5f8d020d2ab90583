"""Probe test sets built from a masked test set through the run's own pipeline (torch or DALI):

- ``table2``: a double-branch model fed only the object (context branch blank) or only the
  background (content branch blank), CIT Table II.
- ``bg_challenge``: Background-Challenge-style test sets built on the fly by the intervention
  plans: Original (plan none), Mixed-Same (the object on the background of another image of its
  class: plan stratify_c over classes), Mixed-Rand (plan random), Only-FG (a zero context);
  BG-Gap = Mixed-Same - Mixed-Rand. The partner's own object is removed from the background it
  lends (its pixels zeroed, as in the double-branch context).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict

import numpy as np
import torch

from ..data.pipelines.batch import RawBatch
from ..data.build import build_pipeline
from ..data.pipelines.contract import compose
from ..data.sources.records import SampleSet
from ..errors import UsageError
from ..models.double_branch import blank_like
from .collect import collect
from .scores import topk_accuracy


def _remove_partner_object(raw: RawBatch) -> RawBatch:
    """The partner lends its background only: its object pixels become zero (as in the double context)."""
    out = dict(raw)
    keep = 1.0 - raw["ctx_mask"].float() / 255.0
    out["ctx"] = (raw["ctx"].float() * keep[..., None]).round().to(torch.uint8)
    return out


def _variant_batches(pipe, variant: str):
    """Composed batches of one Background-Challenge variant."""
    spec = pipe.spec
    for raw in pipe.raw_batches():
        if variant == "only_fg":
            raw = dict(raw)
            raw["ctx"] = torch.zeros_like(raw["ctx"])
            raw["ctx_mask"] = torch.zeros_like(raw["ctx_mask"])
        elif variant in ("mixed_same", "mixed_rand"):
            raw = _remove_partner_object(raw)
        # plan none composes the object alone: Only-FG needs the blend with its zero context
        s = spec if variant != "only_fg" or spec.output == "double" else replace(spec, plan="random")
        yield compose(raw, s)


def bg_challenge(model: torch.nn.Module, samples: SampleSet, cfg, device: torch.device, double: bool,
                 rank: int = 0, world_size: int = 1) -> Dict[str, float]:
    """Top-1 (%) on Original, Mixed-Same, Mixed-Rand and Only-FG versions of a masked test set."""
    if samples.multilabel:
        raise UsageError("--bg-challenge: needs single-label data")
    if samples.masks is None:
        raise UsageError(f"--bg-challenge: {samples.name} has no object masks (write them with `cit-fast masks`)")
    by_class = SampleSet(samples.images, samples.masks, samples.labels, list(samples.classes),
                         strata=samples.labels.astype(np.int64), bias=samples.bias, name=samples.name)
    output = "double" if double else "image"
    plans = {"original": "none", "mixed_same": "stratify_c", "mixed_rand": "random", "only_fg": "none"}
    out: Dict[str, float] = {}
    for variant, plan in plans.items():
        pipe = build_pipeline(by_class, cfg, train=False, device=device, output=output, plan=plan, rank=rank,
                              world_size=world_size)
        logits, labels = collect(model, _variant_batches(pipe, variant))
        out[variant] = topk_accuracy(logits, labels, (1,))["top1"]
    out["bg_gap"] = out["mixed_same"] - out["mixed_rand"]
    return out


def table2(model: torch.nn.Module, samples: SampleSet, cfg, device: torch.device, rank: int = 0,
           world_size: int = 1) -> Dict[str, float]:
    """CIT Table II: top-1 (%) of a double-branch model on both inputs, only the object, only the background."""
    if samples.masks is None:
        raise UsageError(f"--table2: {samples.name} has no object masks (write them with `cit-fast masks`)")
    pipe = build_pipeline(samples, cfg, train=False, device=device, output="double", rank=rank, world_size=world_size)
    mean, std = pipe.spec.mean, pipe.spec.std
    feeds = {"obj_and_bg": lambda b: model(b.content, b.context),
             "only_obj": lambda b: model(b.content, blank_like(b.context, mean, std)),
             "only_bg": lambda b: model(blank_like(b.content, mean, std), b.context)}
    out = {}
    for name, fwd in feeds.items():
        logits, labels = collect(model, iter(pipe), fwd)
        out[name] = topk_accuracy(logits, labels, (1,))["top1"]
    return out
