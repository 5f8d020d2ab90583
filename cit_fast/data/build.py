"""From a DataConfig to SampleSets and pipelines."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .pipelines.contract import Pipeline, PipelineSpec
from .sources.records import DataError, SampleSet
from .pipelines.mix import MixOp
from .sources import apply_strata_file
from .sources.registry import get as get_source, source_names
from .pipelines.torch_pipeline import TorchPipeline
from .synthetic.benchmark import make_cit_benchmark


def _source(d) -> str:
    """The concrete data.source of a finalized DataConfig (config.finalize infers it once)."""
    if d.source == "auto":
        raise ValueError("data.source=auto: build data from a finalized config (config.finalize / load_config)")
    return d.source


def build_datasets(d) -> Tuple[SampleSet, SampleSet]:
    """(train, test) SampleSets for a finalized DataConfig; test uses the training classes."""
    source = _source(d)
    if getattr(d, "test_labels", "") and source != "folder":
        raise DataError(f"data.test_labels is for a flat folder of ImageNet validation images (data.source=folder), "
                        f"not data.source={source}")
    if source == "synthetic":
        sets = make_cit_benchmark(d.synthetic_version, d.synthetic_train_per_class, d.synthetic_test_per_class,
                                  seed=d.synthetic_seed, test_bias=d.synthetic_test_bias)
        train, test = sets["train"], sets["test"]
    else:
        train = load_split(d, d.train, split="train")
        if not d.test:
            raise DataError(f"data.test: a path is required for data.source={source}")
        test = load_split(d, d.test, classes=train.classes, split="test")
    if d.strata_file:
        train = apply_strata_file(train, d.strata_file)
        test = apply_strata_file(test, d.strata_file)
    return train, test


def load_split(d, path: str, classes=None, split: str = "") -> SampleSet:
    """One split of a file-based source (its loader from the source registry); ``classes`` (the training
    classes) reads a test split. split: which split of a source that holds both in one place (cifar:
    data.train and data.test name the same directory); default: test for data.test's path, else train."""
    source = _source(d)
    split = split or ("test" if path == d.test and path != d.train else "train")
    if source not in source_names():
        raise DataError(f"data.source={source}: not a file-based source ({', '.join(source_names())})")
    return get_source(source).load(d, path, split, classes)


def require_masks(samples: SampleSet, why: str, missing_masks: str = "error", hint_path: str = "") -> SampleSet:
    """A DataError unless ``samples`` has object masks (or the user opted into all-object masks)."""
    if samples.masks is not None or missing_masks == "full":
        return samples
    how = (f"write them with `cit-fast masks {hint_path}`" if hint_path else "write them with `cit-fast masks`")
    raise DataError(f"{samples.name}: {why} needs object masks, but the data has none; {how} (saliency, no "
                    f"weights needed), add a 'mask' column to a manifest or 'masks' to an .npz; "
                    f"data.missing_masks=full trains with every pixel as object (the intervention then does nothing)")


def build_pipeline(samples: SampleSet, cfg, *, train: bool, rank: int = 0, world_size: int = 1,
                   device: torch.device = torch.device("cpu"), output: str = "image",
                   batch_size: int = 0, out_dtype: torch.dtype = torch.float32,
                   plan: Optional[str] = None) -> Pipeline:
    """The run's pipeline over ``samples``: cfg's kind (torch / DALI), sizes, normalisation and, in
    training, its intervention plan (``plan`` names another one, e.g. for the evaluation probes)."""
    d = cfg.data
    ops = ()
    if train and cfg.mix.mode != "none":  # Mixup / CutMix after the intervention (CIT Table I, bottom rows)
        m = cfg.mix
        ops = (MixOp(m.mode, m.alpha, m.prob, cfg.model.num_classes or samples.num_classes, cfg.seed, rank),)
    spec = PipelineSpec.from_config(cfg, train=train, rank=rank, world_size=world_size, device=device, output=output,
                                    batch_size=batch_size, out_dtype=out_dtype, plan=plan, batch_ops=ops)
    if d.pipeline == "dali":
        from .pipelines.dali_pipeline import DaliPipeline  # optional dependency: nvidia-dali

        return DaliPipeline(samples, spec)
    return TorchPipeline(samples, spec)
