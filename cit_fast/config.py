"""Typed run configuration: dataclasses, YAML loading, ``key=value`` overrides and validation.

A config is saved with every run (``config.yaml``) and inside every checkpoint, so a result can
always be traced back to exactly what produced it.

Adding a key is one line in its dataclass: ``name: type = option(default, "what it means")``; a
choice key passes ``choices=`` a tuple declared below beside the others (validate() then checks it,
``cit-fast config`` lists it, and the modules that act on it import the same tuple); a file or
directory passes ``path=True`` (made absolute when a run starts). Checks beyond the choices (ranges,
keys that need each other) go in validate(); the data rules (which data.* settings go together) live
in data/spec.py and run in finalize(), where ``data.source`` is inferred, once; code below reads
``cfg.data.source``.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from .data.choices import MIX_MODES, PLANS, TRAIN_CROPS  # the data layer's vocabulary
from .errors import ConfigError
from .utils import atomic_write_text, read_mapping_file



class LateChoices(SequenceABC):
    """The allowed values of a choice key that a module above the config declares, read when first asked
    (validate, `cit-fast config`), never when the config is imported. data.source: the source registry
    (data/sources/registry.py), where each source declares itself, so adding a source touches no line
    here. ``notes`` gives the lines `cit-fast config` prints under the key (what each value means)."""

    def __init__(self, values: Callable[[], Sequence[Any]], notes: Optional[Callable[[], List[str]]] = None):
        self._values, self.notes = values, notes

    def __getitem__(self, i):
        return tuple(self._values())[i]

    def __len__(self) -> int:
        return len(tuple(self._values()))

    def __iter__(self):
        return iter(tuple(self._values()))


def _source_names() -> Tuple[str, ...]:
    # the registry imports nothing of the config (no circle); asked from here, not at import time
    from .data.sources.registry import BUILT_IN, source_names

    return BUILT_IN + source_names()


def _source_notes() -> List[str]:
    from .data.sources.registry import source_notes

    return source_notes()


# The allowed values of every choice key, stated once: a field names its tuple (option(choices=...)),
# validate() and `cit-fast config` read it from there, and the modules that act on the key (plans,
# models, losses, mix, the CLI) import the same tuple from here.
SOURCES = LateChoices(_source_names, _source_notes)  # auto, synthetic and the registered file sources
STRATA = ("class", "coarse")
SYNTHETIC_VERSIONS = ("original", "V1", "V2", "V3", "V4")
PIPELINES = ("torch", "dali")
TEST_BIAS = ("random", "misleading")
VERIFY_MODES = ("header", "full")
MISSING_MASKS = ("error", "full")
DEEPFASHION_TEST_SPLITS = ("test", "val")
BAD_SAMPLES = ("error", "skip")
TASKS = ("auto", "single", "double", "multilabel")
CONFOUNDER_SOURCES = ("kmeans", "early", "label", "random")
MERGES = ("sum", "linear", "proposed")
CORRELATIONS = ("residual", "raising")
INTERVENTIONS = ("residual", "vcrcnn", "vcrcnn_own")
SCHEDULES = ("multistep", "cosine")
OPTIMIZERS = ("sgd", "adamw")
LOSSES = ("auto", "ce", "bce", "asl")
FEATURE_SPLIT_NORMS = ("batch", "groups")
ENGINES = ("ddp", "deepspeed")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
PORT_POLICIES = ("next", "disable", "error")
ZERO_STAGES = (0, 1, 2, 3)


def option(default: Any, help: str, *, choices: Sequence[Any] = (), path: bool = False, section: str = "") -> Any:
    """A config field with everything said about it in one place.

    help: what the key means (``cit-fast config`` prints it beside the key; a test requires it);
    choices: the allowed values of a choice key (validate() checks them, the help lists them; pass one
    of the tuples above so the modules that act on the key share it); path: a file or directory, made
    absolute when a run starts; section: a comment line printed above the field (a group of keys).
    """
    meta: Dict[str, Any] = {"help": help}
    if isinstance(choices, LateChoices):  # kept as is: its values are read when asked
        meta["choices"] = choices
    elif choices:
        meta["choices"] = tuple(choices)
    if path:
        meta["path"] = True
    if section:
        meta["section"] = section
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    source: str = option("auto", "auto = inferred from data.train (no data.train: synthetic); each source and "
                                 "the paths it recognises are listed below", choices=SOURCES)
    train: str = option("", "training data: a file or directory; data.source is recognised from it (the "
                            "sources listed under data.source)", path=True)
    test: str = option("", "path to the test data, same kind as `train`", path=True)
    test_labels: str = option("", "labels of a flat folder data.test of ImageNet validation images: "
                                  "LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt "
                                  "(with meta.mat beside it); default: found in or above the folder", path=True)
    root: str = option("", "manifest: base of its relative paths (default: its directory); coco: the image "
                           "directory ({split} -> val2017)", path=True)
    strata_file: str = option("", "optional YAML/JSON {class name or index: group}: common-sense groups A",
                              path=True)
    strata: str = option("class", "common-sense groups A: class = each class its own (or data.strata_file), "
                                  "coarse = CIFAR-100's 20 superclasses (data.source=cifar)", choices=STRATA)
    synthetic_version: str = option("V4", "benchmark version (Table III)", choices=SYNTHETIC_VERSIONS,
                                    section="synthetic source: the CIT CIFAR-style benchmark (Table III) over "
                                            "the embedded shapes dataset")
    synthetic_train_per_class: int = option(400, "training samples per class")
    synthetic_test_per_class: int = option(100, "test samples per class")
    synthetic_seed: int = option(0, "seed of the generated benchmark")
    synthetic_test_bias: str = option("random", "how B is drawn in test", choices=TEST_BIAS)
    image_size: int = option(0, "pixels (square); 0 = keep the source's size (arrays/synthetic)",
                             section="decoding and augmentation")
    hflip: bool = option(True, "random horizontal flip in training")
    crop_padding: int = option(0, "pixels of reflect-padding for a random crop in training (CIFAR-style)")
    train_crop: str = option("resize", "training geometry: resize = the whole image to data.image_size (then "
                                       "data.crop_padding's crop); random_resized = torchvision's RandomResizedCrop "
                                       "to data.image_size (ImageNet recipe; an object and its mask share a window, "
                                       "the context partner has its own)", choices=TRAIN_CROPS)
    crop_scale: Tuple[float, float] = option((0.08, 1.0), "random_resized: range of the window's area / the image's")
    crop_ratio: Tuple[float, float] = option((3 / 4, 4 / 3), "random_resized: range of the window's width / height")
    eval_resize: int = option(0, "evaluation: shorter side to this many pixels, then the centre data.image_size "
                                 "crop (ImageNet: 256); 0 = the whole image resized to data.image_size")
    mean: Tuple[float, float, float] = option((0.5, 0.5, 0.5), "per-channel mean subtracted (RGB, pixels in [0, 1])")
    std: Tuple[float, float, float] = option((0.25, 0.25, 0.25), "per-channel std divided by (RGB)")
    pipeline: str = option("torch", "the input pipeline", choices=PIPELINES)
    num_workers: int = option(0, "DataLoader worker processes")
    on_bad_sample: str = option("error", "an image that cannot be read mid-epoch: error = stop with one line naming "
                                         "the file and the sample index; skip = leave out the samples whose object "
                                         "or context it is (logged, counted in cit_fast_bad_samples_skipped_total), "
                                         "every other sample's pairing unchanged (torch pipeline)",
                                choices=BAD_SAMPLES)
    batch_size: int = option(128, "samples per rank per step")
    decode_reuse: bool = option(False, "training batches hold each sample's context partner: one decode per image")
    verify: str = option("header", "start-up check of image files: header = size and JPEG end marker, "
                                   "full = decode all", choices=VERIFY_MODES)
    missing_masks: str = option("error", "no masks but a plan/model needs them: error, or full = every pixel "
                                         "object (an explicit opt-in)", choices=MISSING_MASKS)
    deepfashion_attributes: int = option(250, "keep the K attributes most frequent in the training partition "
                                              "(Singh et al.: 250); 0 = all of list_attr_cloth.txt",
                                         section="deepfashion source (Category and Attribute Prediction Benchmark)")
    deepfashion_test_split: str = option("test", "the partition data.test reads (list_eval_partition.txt)",
                                         choices=DEEPFASHION_TEST_SPLITS)


@dataclass
class InterventionConfig:
    plan: str = option("none", "how each sample's context partner is drawn", choices=PLANS)
    epochwise: bool = option(False, "train on original + intervened sample each step (Eq. 12)")


@dataclass
class MixConfig:
    mode: str = option("none", "batch-level mixing", choices=MIX_MODES)
    alpha: float = option(1.0, "Beta(alpha, alpha) for the mixing coefficient")
    prob: float = option(1.0, "probability that a batch is mixed")


@dataclass
class ModelConfig:
    name: str = option("resnet20", "a name from cit_fast.models.list_models()")
    num_classes: int = option(0, "0 = taken from the data")
    init: str = option("", "optional local checkpoint path to initialise from (never downloaded)", path=True)
    task: str = option("auto", "auto (from the model and data), single, double (content/context), multilabel",
                       choices=TASKS)
    shared_low: bool = option(True, "stem and low blocks shared by the content and context branches",
                              section="double-branch models (double_*, CIT Fig. 4b)")
    freeze_low: bool = option(False, "train only the top two blocks and the FC (CIT Sec. IV)")
    init_single: str = option("", "local single-branch checkpoint: initialises both branches (double_*), the "
                                  "trunk (causal_*, decoder_*)", path=True)
    embed_dim: int = option(128, "D of the projected tokens and label features",
                            section="multi-label transformer models (causal_* and decoder_*)")
    num_heads: int = option(4, "attention heads (decoder and intervention)")
    decoder_layers: int = option(1, "transformer decoder layers")
    dropout: float = option(0.1, "dropout in the transformer decoder")
    num_confounders: int = option(16, "K (k-means clusters); `label` uses one per class")
    confounder_source: str = option("kmeans", "where the confounder prototypes come from", choices=CONFOUNDER_SOURCES)
    merge: str = option("proposed", "how branch 1 and the causal branch combine", choices=MERGES)
    kmeans_iters: int = option(20, "Lloyd iterations")
    confounder_tokens: int = option(16, "spatial tokens per training image clustered (0 = all)")
    confounder_refresh: int = option(0, "re-fit the confounders every N epochs (0 = once, before training)")
    observed_confounders: bool = option(False, "backdoor with z observed in training: the logits see the image's "
                                               "own confounder mix (its tokens' nearest prototypes), marginalised "
                                               "with P(z) in evaluation (kmeans confounders only)")
    correlation: str = option("residual", "causal label correlations: residual (s_j of i's intervened feature), "
                                          "raising (minus j's baseline under the prior)", choices=CORRELATIONS)
    branch1_loss: float = option(0.0, "weight of a second loss on branch 1's logits alone (0 = the merged "
                                      "output only)")
    confounder_net: str = option("", "local single-branch checkpoint (of model.confounder_backbone): k-means "
                                     "over ITS spatial features (frozen), not the model's", path=True)
    confounder_backbone: str = option("", "architecture of model.confounder_net (a resnet* name; empty = the "
                                          "trunk's)")
    intervention: str = option("residual", "the causal branch: residual (H_i = LN(X_i + o(E_i)), E_i over "
                                           "projected values), vcrcnn (branch 2 reads [X_i detached ; E_i], E_i "
                                           "over the raw prototypes; probability raising merged with detached "
                                           "p = sigmoid(logits1); branch 1 keeps its own loss), vcrcnn_own "
                                           "(the same branch 2, but each label raised by its own intervened "
                                           "feature only: logits1_j + s_j([X_j ; E_j]) - s_j([0 ; E_0]))",
                               choices=INTERVENTIONS)
    freeze_trunk: bool = option(False, "multi-label models: the (pre-trained) trunk is not trained, its batch "
                                       "norm stays in eval mode")
    trunk_cache_mb: int = option(0, "with freeze_trunk: cache the trunk's maps of seen training inputs, up to "
                                    "this many MB (no augmentation: later epochs skip the trunk)")
    feature_split: bool = option(False, "Singh et al.'s feature splitting with their weighted loss (CVPR 2020): "
                                        "on training images with some pair's b but not its c, the logits read "
                                        "the second half of the feature at its running mean (W_s of b not "
                                        "trained there) and b's loss is weighted; decoder_* (each label "
                                        "feature) and resnet* (the pooled feature) on multi-hot labels with "
                                        "BCE; needs model.biased_pairs",
                                 section="feature splitting (decoder_* and multi-label resnet*)")
    biased_pairs: str = option("", "the biased pairs feature splitting acts on: b:c,b2:c2 (class names or "
                                   "indices), a preset (coco-stuff, deepfashion: Singh et al.'s 20 pairs) or a "
                                   "pairs file (one b:c per line, or YAML)")
    feature_split_alpha_min: float = option(3.0, "floor of the exclusive images' loss weight, max(sqrt(n_cooccur "
                                                 "/ n_exclusive), this) per pair in training (1 = no floor, as in "
                                                 "the public re-implementation's calculate_alpha.py)")
    feature_split_norm: str = option("groups", "feature splitting's loss scale: groups (exclusive and other images "
                                               "each averaged over their own count, summed: the re-implementation's "
                                               "two SGD steps per batch as one) or batch (every image's loss over "
                                               "the batch: its exclusive images weigh ~B / B_exclusive less)",
                                     choices=FEATURE_SPLIT_NORMS)


@dataclass
class OptimConfig:
    lr: float = option(0.1, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum (SGD)")
    weight_decay: float = option(1e-4, "L2 weight decay (decoupled under adamw)")
    epochs: int = option(30, "training epochs")
    schedule: str = option("multistep", "multistep (the paper's), cosine (to zero, after warm-up)",
                           choices=SCHEDULES)
    milestones: List[int] = option([15, 23], "epochs at which lr *= gamma (multistep)")
    gamma: float = option(0.1, "lr factor at each milestone")
    warmup_epochs: int = option(0, "linear warm-up from lr/10")
    optimizer: str = option("sgd", "sgd (momentum, nesterov: the papers' ResNet recipe), adamw (momentum "
                                   "unused)", choices=OPTIMIZERS)
    loss: str = option("auto", "auto = ce, or bce for multi-hot labels", choices=LOSSES)
    asl_gamma_neg: float = option(4.0, "ASL focusing on negatives (Ridnik et al.)")
    asl_gamma_pos: float = option(0.0, "ASL focusing on positives")
    asl_clip: float = option(0.05, "ASL probability margin for negatives")


@dataclass
class DistConfig:
    engine: str = option("ddp", "ddp (torch DDP; also a single process), deepspeed", choices=ENGINES)
    zero_stage: int = option(0, "DeepSpeed ZeRO stage (dist.engine=deepspeed)", choices=ZERO_STAGES)
    precision: str = option("fp32", "autocast under ddp; DeepSpeed's own under deepspeed", choices=PRECISIONS)
    grad_accum: int = option(1, "micro-batches per optimizer step")
    grad_clip: float = option(0.0, "max global grad norm; 0 = off")
    sync_bn: bool = option(False, "SyncBatchNorm across ranks (ddp): batch statistics over the global batch")
    deepspeed_config: str = option("", "optional DeepSpeed JSON merged over the generated one", path=True)


@dataclass
class MetricsConfig:
    enabled: bool = option(False, "serve Prometheus metrics from every rank")
    host: str = option("127.0.0.1", "bind address; 0.0.0.0 to let a remote Prometheus scrape")
    base_port: int = option(9400, "rank with local_rank r serves on base_port + r; 0 = ephemeral ports")
    on_port_taken: str = option("next", "next (try the following ports), disable, error", choices=PORT_POLICIES)
    job: str = option("cit_fast", "value of the `job` label")
    sd_dir: str = option("", "write file-SD targets here (\"\" = <out_dir>/prometheus)")
    linger_seconds: float = option(0.0, "keep serving this long after training ends (short jobs)")


@dataclass
class TrainConfig:
    data: DataConfig = option(DataConfig, "data source, decoding and augmentation")
    intervention: InterventionConfig = option(InterventionConfig, "the causal intervention (CIT)")
    mix: MixConfig = option(MixConfig, "batch-level Mixup / CutMix on top of the intervention (CIT Table I, "
                                       "bottom rows)")
    model: ModelConfig = option(ModelConfig, "the network and its options")
    optim: OptimConfig = option(OptimConfig, "optimizer, schedule and loss")
    dist: DistConfig = option(DistConfig, "distributed engine and precision")
    metrics: MetricsConfig = option(MetricsConfig, "Prometheus exporter of every rank (see cit_fast/metrics.py)")
    seed: int = option(0, "seed of the model init, the plans and the augmentation")
    out_dir: str = option("runs/default", "run directory: config.yaml, checkpoints, logs", path=True)
    resume: str = option("", "\"\" = fresh start, \"auto\" = newest complete checkpoint in out_dir, or a path")
    device: str = option("auto", "auto = cuda when available", choices=DEVICES)
    threads: int = option(0, "torch intra-op threads on CPU; 0 = torch's default")
    log_interval: int = option(50, "steps between host syncs for logging")
    eval_every: int = option(1, "epochs between test evaluations (the last epoch is always evaluated)")
    checkpoint_every: int = option(1, "epochs between checkpoints")
    checkpoint_every_steps: int = option(0, "also checkpoint every N steps inside an epoch; 0 = off")
    keep_checkpoints: int = option(3, "newest checkpoints kept")
    max_steps_per_epoch: int = option(0, "0 = whole epoch (a cap for smoke tests)")
    progress: bool = option(True, "progress bar on rank 0")


# ---------------------------------------------------------------------------------------------
# (de)serialisation


def to_dict(cfg: Any) -> Dict[str, Any]:
    def conv(v):
        if isinstance(v, tuple):
            return list(v)
        return v

    return {k: (to_dict(v) if dataclasses.is_dataclass(v) else conv(v)) for k, v in dataclasses.asdict(cfg).items()}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise a ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{where}: expected a boolean (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    if origin in (list, List, tuple, Tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin in (tuple, Tuple) and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") if inner is not Any else v for i, v in enumerate(value)]
        return tuple(out) if origin in (tuple, Tuple) else out
    return value


def _build(cls: type, data: Dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr((where + '.' if where else '') + u) for u in unknown)}; "
            f"valid keys{(' under ' + where) if where else ''}: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _set_dotted(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=0.05)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
        _set_dotted(tree, key, value)
    return tree


def merge_trees(base: Dict[str, Any], upd: Dict[str, Any]) -> Dict[str, Any]:
    """Nested dicts: ``upd`` over ``base`` (sections merged key by key)."""
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_trees(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), base: Optional[Path] = None
                ) -> TrainConfig:
    """TrainConfig from an optional YAML file plus ``key=value`` overrides, validated and finalised
    (data.source inferred, paths absolute: relative ones are taken from ``base``, default the
    current directory)."""
    tree = read_mapping_file(Path(path), "config file", ConfigError, empty_ok=True) if path else {}
    tree = merge_trees(without_resolved(tree), parse_overrides(overrides))  # a saved run's config.yaml reruns
    cfg = _build(TrainConfig, tree, "")
    validate(cfg)
    return finalize(cfg, base)


# keys added after runs were saved, with the value those runs ran with: a saved tree whose section
# lacks the key gets that value, not today's default (old checkpoints rebuild the model they hold)
SAVED_BEFORE = {("model", "intervention"): "residual"}


def _saved_defaults(tree: Dict[str, Any]) -> Dict[str, Any]:
    tree = dict(tree)
    for (section, key), value in SAVED_BEFORE.items():
        if isinstance(tree.get(section), dict) and key not in tree[section]:
            tree[section] = {**tree[section], key: value}
    return tree


def from_dict(tree: Dict[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """TrainConfig from a saved tree (config.yaml, a checkpoint's config) plus overrides."""
    cfg = _build(TrainConfig, merge_trees(_saved_defaults(without_resolved(tree)), parse_overrides(overrides)), "")
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# paths and the data source

def _keys(cls: type = TrainConfig, where: str = "") -> List[Tuple[str, dataclasses.Field]]:
    """Every leaf key of a config dataclass, dotted, with its field (sections walked in order)."""
    out = []
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            out.extend(_keys(f.default_factory, key))
        else:
            out.append((key, f))
    return out


# every key that names a file or directory (option(path=True)), resolved to an absolute path when a
# run starts, so a run's config.yaml and checkpoints work from any directory
PATH_KEYS = tuple(key for key, f in _keys() if f.metadata.get("path"))


def resolve_paths(tree: Dict[str, Any], base: Path, keys: Sequence[str] = PATH_KEYS) -> Dict[str, Any]:
    """A copy of a config tree with the relative paths under ``keys`` made absolute against ``base``."""
    out = copy.deepcopy(tree)
    for dotted in keys:
        *sections, name = dotted.split(".")
        node = out
        for sec in sections:
            node = node.get(sec) if isinstance(node, dict) else None
        if not isinstance(node, dict) or not node.get(name):
            continue
        value = str(node[name])
        if "{split}" not in value:  # a coco path template stays as written
            p = Path(value).expanduser()
            node[name] = str(p if p.is_absolute() else (Path(base) / p).resolve())
    return out


def finalize(cfg: TrainConfig, base: Optional[Path] = None) -> TrainConfig:
    """The config a run uses and saves: absolute paths, a concrete data.source, and the data rules
    met (data/spec.py: which data.* settings go together), before any data loads. A config that
    finalize returned, unchanged since, is returned as it is (``is_final``)."""
    if is_final(cfg):
        return cfg
    tree = resolve_paths(to_dict(cfg), Path(base) if base else Path.cwd())
    out = _build(TrainConfig, tree, "")
    # asked late, as the sources are: the data side imports nothing of this module at these names (no circle)
    from .data.sources.registry import resolve_source  # each source recognises its own paths
    from .data.spec import check_config  # every data rule, in one place

    out.data.source = resolve_source(out.data)
    check_config(out)
    out._final = to_dict(out)  # (not a field: neither saved nor compared)
    return out


def is_final(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` is what finalize returned, not changed since (a changed path is resolved again)."""
    return getattr(cfg, "_final", None) == to_dict(cfg)


def _choice(value: Any, choices: Sequence[Any], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}")


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: expected a {'non-negative' if allow_zero else 'positive'} value, got {value!r}")


def _value(cfg: TrainConfig, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: TrainConfig) -> None:
    for key, f in _keys():
        if "choices" in f.metadata:
            _choice(_value(cfg, key), f.metadata["choices"], key)
    d = cfg.data
    if d.source not in ("synthetic", "auto") and not d.train:
        raise ConfigError(f"data.train: a path is required for data.source={d.source}")
    for key in ("batch_size", "synthetic_train_per_class", "synthetic_test_per_class"):
        _positive(getattr(d, key), f"data.{key}")
    for key in ("image_size", "crop_padding", "num_workers", "eval_resize"):
        _positive(getattr(d, key), f"data.{key}", allow_zero=True)
    if any(s <= 0 for s in d.std):
        raise ConfigError(f"data.std: expected positive values, got {list(d.std)}")
    o = cfg.optim
    _positive(o.lr, "optim.lr")
    _positive(o.epochs, "optim.epochs")
    _positive(o.weight_decay, "optim.weight_decay", allow_zero=True)
    _positive(o.warmup_epochs, "optim.warmup_epochs", allow_zero=True)
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum: expected a value in [0, 1), got {o.momentum}")
    if o.nesterov and o.momentum == 0:
        raise ConfigError("optim.nesterov: Nesterov momentum needs optim.momentum > 0")
    if list(o.milestones) != sorted(o.milestones) or any(m <= 0 for m in o.milestones):
        raise ConfigError(f"optim.milestones: expected increasing positive epochs, got {o.milestones}")
    _positive(cfg.log_interval, "log_interval")
    _positive(cfg.checkpoint_every, "checkpoint_every")
    _positive(cfg.eval_every, "eval_every")
    _positive(cfg.threads, "threads", allow_zero=True)
    _positive(cfg.model.num_classes, "model.num_classes", allow_zero=True)
    mc = cfg.model
    _positive(mc.branch1_loss, "model.branch1_loss", allow_zero=True)
    _positive(mc.trunk_cache_mb, "model.trunk_cache_mb", allow_zero=True)
    if mc.feature_split and not mc.biased_pairs.strip():
        raise ConfigError("model.feature_split: needs model.biased_pairs (b:c,... : the pairs whose b images "
                          "without c read only x_o)")
    if mc.feature_split_alpha_min < 1:
        raise ConfigError(f"model.feature_split_alpha_min: expected a weight >= 1, got {mc.feature_split_alpha_min}")
    if mc.trunk_cache_mb and not mc.freeze_trunk:
        raise ConfigError("model.trunk_cache_mb: only a frozen trunk's maps can be cached; set model.freeze_trunk=true")
    if mc.confounder_net and (mc.confounder_source != "kmeans" or mc.observed_confounders):
        raise ConfigError("model.confounder_net: needs model.confounder_source=kmeans and no model.observed_confounders")
    if mc.confounder_backbone and not mc.confounder_net:
        raise ConfigError("model.confounder_backbone: names the architecture of model.confounder_net; set that too")
    if mc.intervention in ("vcrcnn", "vcrcnn_own") and (mc.observed_confounders or mc.confounder_refresh
                                                        or mc.merge != "proposed"):
        raise ConfigError(f"model.intervention={mc.intervention}: the dictionary is fitted once (model.confounder_refresh=0), "
                          "z is not observed (model.observed_confounders=false) and the merge is its own "
                          f"(model.merge=proposed); got confounder_refresh={mc.confounder_refresh}, "
                          f"observed_confounders={mc.observed_confounders}, merge={mc.merge!r}")
    if mc.observed_confounders and mc.confounder_source != "kmeans":
        raise ConfigError("model.observed_confounders: needs model.confounder_source=kmeans (prototypes of the "
                          f"projected tokens), got {mc.confounder_source!r}")
    for key in ("embed_dim", "num_heads", "decoder_layers", "num_confounders", "kmeans_iters"):
        _positive(getattr(mc, key), f"model.{key}")
    for key in ("confounder_tokens", "confounder_refresh"):
        _positive(getattr(mc, key), f"model.{key}", allow_zero=True)
    if mc.embed_dim % mc.num_heads or mc.embed_dim % 4:
        raise ConfigError(f"model.embed_dim: {mc.embed_dim} must be divisible by model.num_heads "
                          f"({mc.num_heads}) and by 4")
    if not 0 <= mc.dropout < 1:
        raise ConfigError(f"model.dropout: expected a value in [0, 1), got {mc.dropout}")
    for key in ("asl_gamma_neg", "asl_gamma_pos", "asl_clip"):
        _positive(getattr(o, key), f"optim.{key}", allow_zero=True)
    _positive(cfg.checkpoint_every_steps, "checkpoint_every_steps", allow_zero=True)
    _positive(cfg.keep_checkpoints, "keep_checkpoints")
    ds = cfg.dist
    if ds.zero_stage and ds.engine != "deepspeed":
        raise ConfigError("dist.zero_stage: ZeRO needs dist.engine=deepspeed")
    _positive(ds.grad_accum, "dist.grad_accum")
    _positive(ds.grad_clip, "dist.grad_clip", allow_zero=True)
    _positive(cfg.mix.alpha, "mix.alpha", allow_zero=True)
    if not 0 <= cfg.mix.prob <= 1:
        raise ConfigError(f"mix.prob: expected a probability in [0, 1], got {cfg.mix.prob}")
    m = cfg.metrics
    if not 0 <= m.base_port < 65536:
        raise ConfigError(f"metrics.base_port: expected a port in [0, 65535], got {m.base_port}")
    _positive(m.linger_seconds, "metrics.linger_seconds", allow_zero=True)


# a run's config.yaml (and its checkpoints' config) records, under this key, what the run resolved
# from its data beside what was asked (model.num_classes: 0 -> the class count, ...): a record for
# readers, written by the training loop; reading a saved config back ignores it
RESOLVED = "resolved"


def without_resolved(tree: Dict[str, Any]) -> Dict[str, Any]:
    """A saved config tree without its ``resolved`` record (what the run found, not a setting)."""
    return {k: v for k, v in tree.items() if k != RESOLVED} if isinstance(tree, dict) else tree


def save_config(cfg: TrainConfig, path: Path, resolved: Optional[Dict[str, Any]] = None) -> None:
    tree = to_dict(cfg)
    if resolved:
        tree[RESOLVED] = resolved
    atomic_write_text(Path(path), yaml.safe_dump(tree, sort_keys=False))


# ---------------------------------------------------------------------------------------------
# the config as commented YAML (cit-fast config)


def help_text(f: dataclasses.Field) -> str:
    """A field's help as ``cit-fast config`` prints it: its allowed values first for a choice key."""
    text = f.metadata.get("help", "")
    if "choices" in f.metadata:
        text = f"one of {' | '.join(map(str, f.metadata['choices']))}" + (f"; {text}" if text else "")
    return text


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True).strip()
    return text[:-3].strip() if text.endswith("...") else text


def config_yaml(cfg: Optional[TrainConfig] = None) -> str:
    """The config as YAML with every key's comment: what ``cit-fast config`` prints (loadable as --config)."""
    cfg = cfg or TrainConfig()
    lines = ["# cit_fast run configuration: every key with its value and what it means.",
             "# Use as `cit-fast train --config FILE`, or set single keys as key=value (e.g. optim.lr=0.05)."]

    def emit(obj: Any, indent: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("section"):
                lines.append(f"{indent}# {f.metadata['section']}")
            note = help_text(f)
            note = f"  # {note}" if note else ""
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:{note}")
                emit(value, indent + "  ")
            else:
                lines.append(f"{indent}{f.name}: {_yaml_value(value)}{note}")
                notes = getattr(f.metadata.get("choices"), "notes", None)
                lines.extend(f"{indent}#   {line}" for line in (notes() if notes else ()))

    emit(cfg, "")
    return "\n".join(lines) + "\n"
