"""Typed run configuration: dataclasses, YAML loading, ``key=value`` overrides and validation.

A config is saved with every run (``config.yaml``) and inside every checkpoint, so a result can
always be traced back to exactly what produced it.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .errors import ConfigError
from .utils import atomic_write_text, read_mapping_file

# The allowed values of every choice key, stated once: validate(), the CLI and the modules that act
# on them (data.intervention, models, train.losses, data.mix, ...) import them from here.
SOURCES = ("auto", "synthetic", "arrays", "folder", "manifest", "coco", "nuswide")
SYNTHETIC_VERSIONS = ("original", "V1", "V2", "V3", "V4")
PLANS = ("none", "stratify_c", "stratify_b", "random")
PIPELINES = ("torch", "dali")
TEST_BIAS = ("random", "misleading")
VERIFY_MODES = ("header", "full")
MISSING_MASKS = ("error", "full")
MIX_MODES = ("none", "mixup", "cutmix")
TASKS = ("auto", "single", "double", "multilabel")
CONFOUNDER_SOURCES = ("kmeans", "early", "label", "random")
MERGES = ("sum", "linear", "proposed")
CORRELATIONS = ("residual", "raising")
SCHEDULES = ("multistep", "cosine")
OPTIMIZERS = ("sgd", "adamw")
LOSSES = ("auto", "ce", "bce", "asl")
ENGINES = ("ddp", "deepspeed")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
PORT_POLICIES = ("next", "disable", "error")


@dataclass
class DataConfig:
    source: str = "auto"  # one of SOURCES; auto = inferred from data.train (no data.train: synthetic)
    train: str = ""  # training data: .npz (arrays), a directory (folder; nuswide with ImageList.txt), .csv/.jsonl (manifest), .json (coco)
    test: str = ""  # path to the test data, same kind as `train`
    root: str = ""  # manifest: base of its relative paths (default: its directory); coco: the image directory ({split} -> val2017)
    strata_file: str = ""  # optional YAML/JSON {class name or index: group}: common-sense groups A
    # synthetic source: the CIT CIFAR-style benchmark (Table III) over the embedded shapes dataset
    synthetic_version: str = "V4"  # one of SYNTHETIC_VERSIONS
    synthetic_train_per_class: int = 400  # samples
    synthetic_test_per_class: int = 100  # samples
    synthetic_seed: int = 0
    synthetic_test_bias: str = "random"  # how B is drawn in test: one of TEST_BIAS
    # decoding and augmentation
    image_size: int = 0  # pixels (square); 0 = keep the source's size (arrays/synthetic)
    hflip: bool = True  # random horizontal flip in training
    crop_padding: int = 0  # pixels of reflect-padding for a random crop in training (CIFAR-style)
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.25, 0.25, 0.25)
    pipeline: str = "torch"  # one of PIPELINES
    num_workers: int = 0  # DataLoader worker processes
    batch_size: int = 128  # samples per rank per step
    decode_reuse: bool = False  # training batches hold each sample's context partner: one decode per image
    verify: str = "header"  # start-up check of image files: header (size, JPEG end marker) | full (decode all)
    missing_masks: str = "error"  # no masks but a plan/model needs them: error | full (every pixel object: an explicit opt-in)


@dataclass
class InterventionConfig:
    plan: str = "none"  # one of PLANS
    epochwise: bool = False  # train on original + intervened sample each step (Eq. 12)


@dataclass
class MixConfig:
    """Batch-level Mixup / CutMix on top of the intervention (CIT Table I, bottom rows)."""
    mode: str = "none"  # one of MIX_MODES
    alpha: float = 1.0  # Beta(alpha, alpha) for the mixing coefficient
    prob: float = 1.0  # probability that a batch is mixed


@dataclass
class ModelConfig:
    name: str = "resnet20"  # a name from cit_fast.models.list_models()
    num_classes: int = 0  # 0 = taken from the data
    init: str = ""  # optional local checkpoint path to initialise from (never downloaded)
    task: str = "auto"  # one of TASKS: auto (from the model and data), single, double (content/context), multilabel
    # double-branch models (double_*, CIT Fig. 4b)
    shared_low: bool = True  # stem and low blocks shared by the content and context branches
    freeze_low: bool = False  # train only the top two blocks and the FC (CIT Sec. IV)
    init_single: str = ""  # local single-branch checkpoint: initialises both branches (double_*), the trunk (causal_*, decoder_*)
    # multi-label transformer models (causal_* and decoder_*)
    embed_dim: int = 128  # D of the projected tokens and label features
    num_heads: int = 4  # attention heads (decoder and intervention)
    decoder_layers: int = 1
    dropout: float = 0.1
    num_confounders: int = 16  # K (k-means clusters); `label` uses one per class
    confounder_source: str = "kmeans"  # one of CONFOUNDER_SOURCES
    merge: str = "proposed"  # how branch 1 and the causal branch combine: sum | linear | proposed
    kmeans_iters: int = 20  # Lloyd iterations
    confounder_tokens: int = 16  # spatial tokens per training image clustered (0 = all)
    confounder_refresh: int = 0  # re-fit the confounders every N epochs (0 = once, before training)
    # backdoor with z observed in training: the logits see the image's own confounder mix (its tokens'
    # nearest prototypes), marginalised with P(z) in evaluation (kmeans confounders only)
    observed_confounders: bool = False
    correlation: str = "residual"  # causal label correlations: residual (s_j of i's intervened feature) | raising (minus j's baseline under the prior)
    branch1_loss: float = 0.0  # weight of a second loss on branch 1's logits alone (0 = the merged output only)
    confounder_net: str = ""  # local single-branch checkpoint (trunk's architecture): k-means over ITS spatial features (frozen), not the model's
    freeze_trunk: bool = False  # multi-label models: the (pre-trained) trunk is not trained, its batch norm stays in eval mode
    trunk_cache_mb: int = 0  # with freeze_trunk: cache the trunk's maps of seen training inputs, up to this many MB (no augmentation: later epochs skip the trunk)


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    epochs: int = 30
    schedule: str = "multistep"  # multistep (the paper's) | cosine (to zero, after warm-up)
    milestones: List[int] = field(default_factory=lambda: [15, 23])  # epochs at which lr *= gamma
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up from lr/10
    optimizer: str = "sgd"  # sgd (momentum, nesterov: the papers' ResNet recipe) | adamw (momentum unused)
    loss: str = "auto"  # auto (ce; bce for multi-hot labels) | ce | bce | asl
    asl_gamma_neg: float = 4.0  # ASL focusing on negatives (Ridnik et al.)
    asl_gamma_pos: float = 0.0  # ASL focusing on positives
    asl_clip: float = 0.05  # ASL probability margin for negatives


@dataclass
class DistConfig:
    engine: str = "ddp"  # one of ENGINES: ddp (torch DDP; also a single process), deepspeed
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    precision: str = "fp32"  # one of PRECISIONS (autocast under ddp; DeepSpeed's own under deepspeed)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    sync_bn: bool = False  # SyncBatchNorm across ranks (ddp): batch statistics over the global batch
    deepspeed_config: str = ""  # optional DeepSpeed JSON merged over the generated one


@dataclass
class MetricsConfig:
    """Prometheus exporter of every rank (see cit_fast/metrics.py)."""
    enabled: bool = False  # serve Prometheus metrics from every rank
    host: str = "127.0.0.1"  # bind address; 0.0.0.0 to let a remote Prometheus scrape
    base_port: int = 9400  # rank with local_rank r serves on base_port + r; 0 = ephemeral ports
    on_port_taken: str = "next"  # one of PORT_POLICIES: next (try the following ports), disable, error
    job: str = "cit_fast"  # value of the `job` label
    sd_dir: str = ""  # write file-SD targets here ("" = <out_dir>/prometheus)
    linger_seconds: float = 0.0  # keep serving this long after training ends (short jobs)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    intervention: InterventionConfig = field(default_factory=InterventionConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    seed: int = 0
    out_dir: str = "runs/default"
    resume: str = ""  # "" = fresh start, "auto" = newest complete checkpoint in out_dir, or a path
    device: str = "auto"  # one of DEVICES
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    log_interval: int = 50  # steps between host syncs for logging
    eval_every: int = 1  # epochs between test evaluations (the last epoch is always evaluated)
    checkpoint_every: int = 1  # epochs
    checkpoint_every_steps: int = 0  # also checkpoint every N steps inside an epoch; 0 = off
    keep_checkpoints: int = 3
    max_steps_per_epoch: int = 0  # 0 = whole epoch (a cap for smoke tests)
    progress: bool = True  # progress bar on rank 0


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
    tree = merge_trees(tree, parse_overrides(overrides))
    cfg = _build(TrainConfig, tree, "")
    validate(cfg)
    return finalize(cfg, base)


def from_dict(tree: Dict[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """TrainConfig from a saved tree (config.yaml, a checkpoint's config) plus overrides."""
    cfg = _build(TrainConfig, merge_trees(tree, parse_overrides(overrides)), "")
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------
# paths and the data source

# every key that names a file or directory (resolved to an absolute path when a run starts, so a
# run's config.yaml and checkpoints work from any directory)
PATH_KEYS = ("data.train", "data.test", "data.root", "data.strata_file", "model.init", "model.init_single",
             "model.confounder_net", "dist.deepspeed_config", "out_dir")


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


def infer_source(path: str, key: str = "data.train") -> str:
    """The data.source a path is written in: .npz -> arrays, .csv/.jsonl -> manifest, .json -> coco, a
    directory with ImageList.txt (or that file) -> nuswide, another directory -> folder."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{key} {path}: not found")
    if p.is_dir():
        return "nuswide" if (p / "ImageList.txt").is_file() else "folder"
    if p.name == "ImageList.txt":
        return "nuswide"
    by_suffix = {".npz": "arrays", ".csv": "manifest", ".jsonl": "manifest", ".json": "coco"}
    if p.suffix.lower() not in by_suffix:
        raise ConfigError(f"{key} {path}: cannot tell its data.source from the name; expected a directory "
                          f"(folder / nuswide), .npz (arrays), .csv or .jsonl (manifest) or .json (coco)")
    return by_suffix[p.suffix.lower()]


def resolve_source(d: "DataConfig") -> str:
    """The concrete data.source of a DataConfig: ``auto`` inferred from the paths, an explicit one
    checked against them (a mismatch is an error, never a silent fallback)."""
    path, key = (d.train, "data.train") if d.train else (d.test, "data.test")
    if d.source == "synthetic" and d.train:
        raise ConfigError(f"data.train={d.train} is set, but data.source=synthetic generates its own data; "
                          f"leave data.source unset (it is inferred from data.train) or name the right source")
    if d.source == "auto" and not path:
        return "synthetic"
    if d.source in ("auto", "synthetic") and not path:
        return d.source
    if "{split}" in path:  # a coco path template
        return "coco" if d.source == "auto" else d.source
    inferred = infer_source(path, key)
    if d.source == "auto":
        return inferred
    if d.source == "coco" and inferred == "folder":  # coco may name its image directory
        return d.source
    if inferred != d.source:
        raise ConfigError(f"data.source={d.source}, but {key}={path} looks like data.source={inferred} data; "
                          f"leave data.source unset (it is inferred) or fix the path")
    return d.source


def finalize(cfg: TrainConfig, base: Optional[Path] = None) -> TrainConfig:
    """The config a run uses and saves: absolute paths and a concrete data.source (idempotent)."""
    tree = resolve_paths(to_dict(cfg), Path(base) if base else Path.cwd())
    out = _build(TrainConfig, tree, "")
    out.data.source = resolve_source(out.data)
    return out


def _choice(value: str, choices: Sequence[str], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: expected a {'non-negative' if allow_zero else 'positive'} value, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    d = cfg.data
    _choice(d.source, SOURCES, "data.source")
    _choice(d.synthetic_version, SYNTHETIC_VERSIONS, "data.synthetic_version")
    _choice(d.synthetic_test_bias, TEST_BIAS, "data.synthetic_test_bias")
    _choice(d.pipeline, PIPELINES, "data.pipeline")
    _choice(cfg.intervention.plan, PLANS, "intervention.plan")
    _choice(cfg.device, DEVICES, "device")
    if d.source not in ("synthetic", "auto") and not d.train:
        raise ConfigError(f"data.train: a path is required for data.source={d.source}")
    _choice(d.verify, VERIFY_MODES, "data.verify")
    _choice(d.missing_masks, MISSING_MASKS, "data.missing_masks")
    for key in ("batch_size", "synthetic_train_per_class", "synthetic_test_per_class"):
        _positive(getattr(d, key), f"data.{key}")
    for key in ("image_size", "crop_padding", "num_workers"):
        _positive(getattr(d, key), f"data.{key}", allow_zero=True)
    if any(s <= 0 for s in d.std):
        raise ConfigError(f"data.std: expected positive values, got {list(d.std)}")
    o = cfg.optim
    _choice(o.schedule, SCHEDULES, "optim.schedule")
    _choice(o.optimizer, OPTIMIZERS, "optim.optimizer")
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
    _choice(mc.task, TASKS, "model.task")
    _choice(mc.confounder_source, CONFOUNDER_SOURCES, "model.confounder_source")
    _choice(mc.merge, MERGES, "model.merge")
    _choice(mc.correlation, CORRELATIONS, "model.correlation")
    _positive(mc.branch1_loss, "model.branch1_loss", allow_zero=True)
    _positive(mc.trunk_cache_mb, "model.trunk_cache_mb", allow_zero=True)
    if mc.trunk_cache_mb and not mc.freeze_trunk:
        raise ConfigError("model.trunk_cache_mb: only a frozen trunk's maps can be cached; set model.freeze_trunk=true")
    if mc.confounder_net and (mc.confounder_source != "kmeans" or mc.observed_confounders):
        raise ConfigError("model.confounder_net: needs model.confounder_source=kmeans and no model.observed_confounders")
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
    _choice(o.loss, LOSSES, "optim.loss")
    for key in ("asl_gamma_neg", "asl_gamma_pos", "asl_clip"):
        _positive(getattr(o, key), f"optim.{key}", allow_zero=True)
    _positive(cfg.checkpoint_every_steps, "checkpoint_every_steps", allow_zero=True)
    _positive(cfg.keep_checkpoints, "keep_checkpoints")
    ds = cfg.dist
    _choice(ds.engine, ENGINES, "dist.engine")
    _choice(ds.precision, PRECISIONS, "dist.precision")
    if ds.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"dist.zero_stage: expected 0, 1, 2 or 3, got {ds.zero_stage}")
    if ds.zero_stage and ds.engine != "deepspeed":
        raise ConfigError("dist.zero_stage: ZeRO needs dist.engine=deepspeed")
    _positive(ds.grad_accum, "dist.grad_accum")
    _positive(ds.grad_clip, "dist.grad_clip", allow_zero=True)
    _choice(cfg.mix.mode, MIX_MODES, "mix.mode")
    _positive(cfg.mix.alpha, "mix.alpha", allow_zero=True)
    if not 0 <= cfg.mix.prob <= 1:
        raise ConfigError(f"mix.prob: expected a probability in [0, 1], got {cfg.mix.prob}")
    m = cfg.metrics
    _choice(m.on_port_taken, PORT_POLICIES, "metrics.on_port_taken")
    if not 0 <= m.base_port < 65536:
        raise ConfigError(f"metrics.base_port: expected a port in [0, 65535], got {m.base_port}")
    _positive(m.linger_seconds, "metrics.linger_seconds", allow_zero=True)


def save_config(cfg: TrainConfig, path: Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ---------------------------------------------------------------------------------------------
# the config as commented YAML (cit-fast config)


def _field_comments(cls: type) -> Tuple[Dict[str, str], Dict[str, List[str]]]:
    """From this file's source of a config dataclass: ({field: its comment}, {field: section comment
    lines before it}). A field's comment is the ``# ...`` after it, or else the comment lines just above."""
    import inspect
    import re

    names = {f.name for f in dataclasses.fields(cls)}
    choices = {name: value for name, value in globals().items()
               if name.isupper() and isinstance(value, tuple) and all(isinstance(v, str) for v in value)}

    def expand(text: str) -> str:
        return re.sub(r"one of ([A-Z_]+)", lambda m: "one of " + " | ".join(choices.get(m.group(1), (m.group(1),))), text)

    comments: Dict[str, str] = {}
    sections: Dict[str, List[str]] = {}
    pending: List[str] = []
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?(?:  #\s*(.*))?$", line)
        if m and m.group(1) in names:
            inline = (m.group(2) or "").strip()
            if inline:
                comments[m.group(1)] = expand(inline)
                if pending:
                    sections[m.group(1)] = pending
            elif pending:
                comments[m.group(1)] = expand(" ".join(pending))
            pending = []
        elif re.match(r"\s+#", line):
            pending.append(line.strip().lstrip("#").strip())
        else:
            pending = []
    return comments, sections


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True).strip()
    return text[:-3].strip() if text.endswith("...") else text


def config_yaml(cfg: Optional[TrainConfig] = None) -> str:
    """The config as YAML with every key's comment: what ``cit-fast config`` prints (loadable as --config)."""
    cfg = cfg or TrainConfig()
    lines = ["# cit_fast run configuration: every key with its value and what it means.",
             "# Use as `cit-fast train --config FILE`, or set single keys as key=value (e.g. optim.lr=0.05)."]

    def emit(obj: Any, indent: str) -> None:
        comments, sections = _field_comments(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            lines.extend(f"{indent}# {c}" for c in sections.get(f.name, []))
            if dataclasses.is_dataclass(value):
                doc = (type(value).__doc__ or "").strip().splitlines()
                lines.append(f"{indent}{f.name}:" + (f"  # {doc[0]}" if doc and not doc[0].startswith(type(value).__name__ + "(") else ""))
                emit(value, indent + "  ")
            else:
                note = comments.get(f.name, "")
                lines.append(f"{indent}{f.name}: {_yaml_value(value)}" + (f"  # {note}" if note else ""))

    emit(cfg, "")
    return "\n".join(lines) + "\n"
