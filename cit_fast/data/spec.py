"""Every data rule in one place: which data.* settings (and the plan they feed) go together.

``check_config`` runs once per config, in ``config.finalize`` -- when data.source has been
recognised and before any data loads -- so a wrong combination is refused with one line before a
file is read. ``PipelineSpec`` (pipelines/contract.py) applies the same rules to a spec built by
hand (``check_geometry``, ``check_reuse``), the DALI pipeline its own (``check_bad_samples``), and
the training loop the one rule that needs the data's size (``train_steps``). ``config.py`` keeps the
types, defaults and per-field checks.

This module imports nothing of the config (the config asks it late, as it asks the source registry),
nor torch: loading a config stays light.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import ConfigError

# plans whose partners can share a batch (plans/balanced.py builds them): data.decode_reuse
REUSE_PLANS = ("none", "stratify_c", "random")
DEFAULT_CROP_SCALE, DEFAULT_CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def check_geometry(train_crop: str, image_size: int, crop_padding: int, crop_scale: Sequence[float],
                   crop_ratio: Sequence[float], eval_resize: int) -> None:
    """The crop keys against each other (a config's and a spec's)."""
    for key, on in (("train_crop=random_resized", train_crop == "random_resized"), ("eval_resize", eval_resize)):
        if on and image_size <= 0:
            raise ConfigError(f"data.{key} needs data.image_size (the output side, e.g. 224)")
    for key, v in (("crop_scale", crop_scale), ("crop_ratio", crop_ratio)):
        if len(v) != 2:
            raise ConfigError(f"data.{key}: expected [min, max], got {list(v)}")
    if train_crop == "random_resized":
        if crop_padding:
            raise ConfigError("data.crop_padding is the CIFAR-style crop of data.train_crop=resize; set it to 0 with "
                              "data.train_crop=random_resized")
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"data.crop_scale: expected [min, max] with 0 < min <= max <= 1, got {list(crop_scale)}")
        lo, hi = crop_ratio
        if not 0 < lo <= hi:
            raise ConfigError(f"data.crop_ratio: expected [min, max] with 0 < min <= max, got {list(crop_ratio)}")
    if eval_resize and eval_resize < image_size:
        raise ConfigError(f"data.eval_resize ({eval_resize}) must be at least data.image_size ({image_size}): "
                          f"the centre crop is taken from the resized image")


def check_window_ranges(train_crop: str, crop_scale: Sequence[float], crop_ratio: Sequence[float]) -> None:
    """A window range set without random-resized crops would do nothing (a config's rule: a spec built
    by hand carries the defaults)."""
    if train_crop == "random_resized":
        return
    for key, value, default in (("crop_scale", crop_scale, DEFAULT_CROP_SCALE),
                                ("crop_ratio", crop_ratio, DEFAULT_CROP_RATIO)):
        if any(abs(a - b) > 1e-6 for a, b in zip(value, default)):
            raise ConfigError(f"data.{key} applies to data.train_crop=random_resized (data.train_crop is "
                              f"{train_crop}); set both or neither")


def check_reuse(decode_reuse: bool, train: bool, plan: str, batch_size: int) -> None:
    """data.decode_reuse: partners drawn from the batch, so a plan that draws them so, and room for two."""
    if not (decode_reuse and train):
        return
    if plan not in REUSE_PLANS:
        raise ConfigError(f"data.decode_reuse works with plans {', '.join(REUSE_PLANS)}, not "
                          f"{plan!r}: its contexts are drawn by bias value, not from the batch")
    if plan != "none" and batch_size < 2:
        raise ConfigError("data.decode_reuse needs data.batch_size >= 2 (partners share a batch)")


def check_bad_samples(pipeline: str, on_bad_sample: str) -> None:
    if pipeline == "dali" and on_bad_sample == "skip":
        raise ConfigError("data.on_bad_sample=skip works with data.pipeline=torch (DALI decodes a batch as a "
                          "whole); set data.pipeline=torch, or data.on_bad_sample=error")


def check_strata(strata: str, strata_file: str, source: str) -> None:
    """data.strata=coarse: CIFAR-100's superclasses, from its own files; not beside a strata file."""
    if strata != "coarse":
        return
    if source not in ("auto", "cifar"):
        raise ConfigError(f"data.strata=coarse: CIFAR-100's superclasses need data.source=cifar, got {source}")
    if strata_file:
        raise ConfigError("data.strata=coarse and data.strata_file both set the groups A; keep one")


def check_config(cfg) -> None:
    """Every data rule of a config whose data.source is concrete (``config.finalize``), in one pass."""
    d = cfg.data
    check_strata(d.strata, d.strata_file, d.source)
    check_geometry(d.train_crop, d.image_size, d.crop_padding, d.crop_scale, d.crop_ratio, d.eval_resize)
    check_window_ranges(d.train_crop, d.crop_scale, d.crop_ratio)
    check_reuse(d.decode_reuse, True, cfg.intervention.plan, d.batch_size)
    check_bad_samples(d.pipeline, d.on_bad_sample)


def train_steps(batches: int, max_steps: int, grad_accum: int, batch_size: int, shard: int) -> int:
    """Training micro-steps per epoch: the pipeline's batches (at most ``max_steps``, 0 = all), whole
    optimizer steps only; none at all (the batch larger than the shard) is one clear error."""
    steps = min(batches, max_steps) if max_steps else batches
    steps -= steps % grad_accum
    if steps == 0:
        raise ConfigError(f"data.batch_size={batch_size} x dist.grad_accum={grad_accum} is larger than the "
                          f"training shard ({shard} samples per rank): no full optimizer step to train on")
    return steps
