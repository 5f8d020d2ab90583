"""``load_run(checkpoint)``: the one way from a saved run back to its config, data and model.

Every command that works on a finished run (eval, explain, report, diagnostics, cross-eval, the
benches) goes through it, so a fix lands once. It accepts:

- a cit_fast checkpoint file (``runs/x/checkpoints/ckpt_e0030_s000000.pt``),
- a DeepSpeed checkpoint directory (``runs/x/checkpoints/ds_e0030_s000000``; ZeRO 0-3, weights
  consolidated to fp32 by DeepSpeed's own zero_to_fp32),
- a run directory or its ``checkpoints/`` directory (its newest complete checkpoint).

The model is rebuilt with the options it was trained with and gets every weight from the
checkpoint (``model.init`` / ``init_single`` files are not needed any more, and are not read).
Data paths saved relative to the directory the run was started from (runs of older versions) are
resolved against that directory, which is inferred from where the checkpoint lies, so a run can be
evaluated from anywhere. Overrides (``data.test=...``) are relative to the current directory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from ..checkpoint import find_latest, is_deepspeed_checkpoint, load_checkpoint
from ..config import TrainConfig, finalize, from_dict, merge_trees, parse_overrides, resolve_paths
from ..data.build import build_datasets, build_pipeline
from ..data.pipelines.contract import Pipeline
from ..data.sources.records import SampleSet
from ..errors import CheckpointError
from ..models import build_model, model_task


@dataclass
class Run:
    """A finished (or stopped) run, rebuilt from one checkpoint."""

    checkpoint: Path
    cfg: TrainConfig
    train_set: Optional[SampleSet]
    test_set: Optional[SampleSet]
    model: torch.nn.Module  # in eval mode, on ``device``, every weight from the checkpoint
    task: str  # single | double | multilabel
    device: torch.device
    epoch: int  # epochs completed when the checkpoint was written
    state: Dict[str, Any] = field(repr=False, default_factory=dict)  # the rest of the checkpoint (no weights)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    @property
    def classes(self):
        return self.train_set.classes if self.train_set is not None else None

    @property
    def output(self) -> str:
        """The pipeline output the model takes: ``double`` (content, context) or ``image``."""
        return "double" if self.task == "double" else "image"

    def pipeline(self, samples: Optional[SampleSet] = None, *, train: bool = False, batch_size: int = 0,
                 cfg: Optional[TrainConfig] = None) -> Pipeline:
        """A pipeline of this run's kind (its data.pipeline, sizes and normalisation) over ``samples``
        (default: the test set), feeding this model on this run's device."""
        return build_pipeline(self.test_set if samples is None else samples, cfg or self.cfg, train=train,
                              device=self.device, output=self.output, batch_size=batch_size)


def checkpoint_of(path: Path) -> Path:
    """A checkpoint file or DeepSpeed directory; a run directory (or its checkpoints/) -> its newest one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: not found")
    if path.is_file() or is_deepspeed_checkpoint(path):
        return path
    for d in (path / "checkpoints", path):
        latest = find_latest(d)
        if latest is not None:
            return latest
    raise CheckpointError(f"checkpoint {path}: a directory without a complete checkpoint (expected a "
                          f"ckpt_e*_s*.pt file, a ds_e*_s* DeepSpeed directory, or a run directory holding them)")


def launch_dir(checkpoint: Path, out_dir: str) -> Path:
    """The directory a run was started from: where its (maybe relative) out_dir leads to the checkpoint."""
    run_dir = Path(checkpoint).resolve().parent.parent  # <out_dir>/checkpoints/<checkpoint>
    parts = Path(out_dir).parts
    if out_dir and not Path(out_dir).is_absolute() and run_dir.parts[-len(parts):] == parts:
        return Path(*run_dir.parts[:-len(parts)]) if len(run_dir.parts) > len(parts) else Path("/")
    return run_dir.parent


def run_config(state: Dict[str, Any], checkpoint: Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The run's config from its checkpoint: saved paths made absolute, overrides (relative to the
    current directory) merged over it, no init files (the checkpoint holds every weight)."""
    if "config" not in state:
        raise CheckpointError(f"checkpoint {checkpoint}: has no config; cannot rebuild its data and model")
    saved = state["config"]
    tree = resolve_paths(saved, launch_dir(checkpoint, str(saved.get("out_dir", ""))))
    upd = resolve_paths(parse_overrides(overrides), Path.cwd())
    cfg = finalize(from_dict(merge_trees(tree, upd)))  # paths are absolute already: the source is inferred
    cfg.model.init = cfg.model.init_single = ""
    return cfg


def load_run(checkpoint: str | Path, overrides: Sequence[str] = (), device: Optional[str | torch.device] = None,
             datasets: bool = True) -> Run:
    """Rebuild a run from ``checkpoint`` (see the module doc).

    overrides: ``key=value`` changes of the saved config (e.g. ``data.test=other/test``);
    device: where the model runs (default: the run's ``device`` setting, cuda when available);
    datasets: False skips reading the data (the model then needs ``model.num_classes`` or the
    checkpoint's config to know its classes; train_set / test_set are None).
    """
    ck = checkpoint_of(Path(checkpoint))
    state = load_checkpoint(ck)
    cfg = run_config(state, ck, overrides)
    train_set = test_set = None
    if datasets:
        train_set, test_set = build_datasets(cfg.data)
        num_classes = cfg.model.num_classes or train_set.num_classes
        multilabel = train_set.multilabel
    else:
        num_classes = cfg.model.num_classes or _classes_in(state["model"])
        multilabel = False
    task = model_task(cfg.model.name, multilabel, cfg.model.task)
    model = build_model(cfg.model, num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = [l.strip() for l in str(e).splitlines() if l.strip()][:2]
        raise CheckpointError(f"checkpoint {ck}: its weights do not fit {cfg.model.name} with {num_classes} "
                              f"classes ({' '.join(first)[:300]}); an override changed the model or the classes?") from None
    if device is None:
        device = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    model.to(device).eval()
    rest = {k: v for k, v in state.items() if k != "model"}
    return Run(ck, cfg, train_set, test_set, model, task, device, int(state["epoch"]), rest)


def _classes_in(weights: Dict[str, torch.Tensor]) -> int:
    for key in ("fc.weight", "head.weight", "classifier.weight"):
        if key in weights:
            return int(weights[key].shape[0])
    raise CheckpointError("checkpoint: cannot tell the number of classes without reading the data")


def run_dir_config(run_dir: Path) -> Optional[TrainConfig]:
    """The config of a run directory (its config.yaml, paths resolved as load_run does); None without one."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    saved = yaml.safe_load(path.read_text()) or {}
    tree = resolve_paths(saved, launch_dir(Path(run_dir) / "checkpoints" / "x", str(saved.get("out_dir", ""))))
    cfg = finalize(from_dict(tree))
    cfg.model.init = cfg.model.init_single = ""
    return cfg
