"""``cit-fast eval``: a checkpoint on its config's test data (or another, via overrides).

Always: top-1 / top-5 (single-label) or mAP, per-class AP, top-k recall and, given biased pairs,
Exclusive / Co-occur AP (multi-label). On request: the Background-Challenge test sets (Mixed-Same,
Mixed-Rand, Only-FG, BG-Gap) built on the fly from the masked test set, and CIT Table II (only the
object / only the background) for double-branch models. Writes a JSON report; ``format_report``
turns it into a readable table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from ..data.build import build_datasets, build_pipeline
from ..models import build_model, model_task
from ..utils import atomic_write_json
from ..checkpoint import load_checkpoint
from ..config import from_dict, to_dict
from .evaluate import evaluate
from .metrics_eval import bg_challenge as run_bg_challenge
from .metrics_eval import collect, multilabel_hits, multilabel_report, parse_pairs
from .metrics_eval import table2 as run_table2


def run_eval(checkpoint: str, overrides: Sequence[str] = (), out: Optional[str] = None, *, pairs: str = "",
             bg_challenge: bool = False, table2: bool = False, top_k: int = 3) -> Dict[str, Any]:
    state = load_checkpoint(Path(checkpoint))
    if "config" not in state:
        raise ValueError(f"checkpoint {checkpoint}: has no config; cannot rebuild its data and model")
    cfg = from_dict(state["config"], overrides)
    cfg.model.init_single = ""  # the checkpoint holds every weight; the init file may be long gone
    train_set, test_set = build_datasets(cfg.data)
    task = model_task(cfg.model.name, train_set.multilabel, cfg.model.task)
    model = build_model(cfg.model, cfg.model.num_classes or train_set.num_classes)
    model.load_state_dict(state["model"])
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    pipe = build_pipeline(test_set, cfg, train=False, device=device, output="double" if task == "double" else "image")
    report: Dict[str, Any] = {"checkpoint": str(checkpoint), "epoch": int(state["epoch"]), "model": cfg.model.name,
                              "task": task}
    if task == "multilabel":
        if not test_set.multilabel:
            raise ValueError(f"{test_set.name}: a multi-label model needs multi-hot test labels")
        scores, targets = collect(model, pipe)
        pair_idx = parse_pairs(pairs, train_set.classes) if pairs else []
        report["test"] = {**multilabel_hits(scores, targets),
                          **multilabel_report(scores, targets, train_set.classes, pair_idx, top_k)}
        if bg_challenge or table2:
            raise ValueError("--bg-challenge and --table2 need a single-label model")
    else:
        if pairs:
            raise ValueError("--pairs needs a multi-label model and data")
        report["test"] = evaluate(model, pipe)
        if bg_challenge:
            report["bg_challenge"] = run_bg_challenge(model, test_set, cfg, device, double=task == "double")
        if table2:
            if task != "double":
                raise ValueError(f"--table2 needs a double-branch model (content and context), not {cfg.model.name}")
            report["table2"] = run_table2(model, test_set, cfg, device)
    report["data"] = to_dict(cfg)["data"]
    if out:
        atomic_write_json(Path(out), report)
    return report
