"""``cit-fast eval``: a checkpoint on its config's test data (or another, via overrides)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from ..data.build import build_datasets, build_pipeline
from ..models import create_model
from ..utils import atomic_write_json
from .checkpoint import load_checkpoint
from .config import from_dict, parse_overrides, to_dict, _merge
from .evaluate import evaluate


def run_eval(checkpoint: str, overrides: Sequence[str] = (), out: Optional[str] = None) -> Dict[str, Any]:
    state = load_checkpoint(Path(checkpoint))
    if "config" not in state:
        raise ValueError(f"checkpoint {checkpoint}: has no config; cannot rebuild its data and model")
    cfg = from_dict(_merge(state["config"], parse_overrides(overrides)))
    train_set, test_set = build_datasets(cfg.data)
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes or train_set.num_classes)
    model.load_state_dict(state["model"])
    pipe = build_pipeline(test_set, cfg, train=False, device=torch.device("cpu"))
    metrics = evaluate(model, pipe)
    report = {"checkpoint": str(checkpoint), "epoch": int(state["epoch"]), "test": metrics,
              "data": to_dict(cfg)["data"], "model": cfg.model.name}
    if out:
        atomic_write_json(Path(out), report)
    return report
