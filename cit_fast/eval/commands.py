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

from ..config import to_dict
from ..errors import UsageError
from ..utils import atomic_write_json
from .collect import collect
from .probes import bg_challenge as run_bg_challenge
from .probes import table2 as run_table2
from .run import load_run
from .scores import multilabel_hits, multilabel_report, parse_pairs, topk_accuracy


def run_eval(checkpoint: str, overrides: Sequence[str] = (), out: Optional[str] = None, *, pairs: str = "",
             bg_challenge: bool = False, table2: bool = False, top_k: int = 3) -> Dict[str, Any]:
    run = load_run(checkpoint, overrides)
    if run.task == "multilabel" and (bg_challenge or table2):
        raise UsageError("--bg-challenge and --table2 need a single-label model; this one is multi-label")
    if run.task != "multilabel" and pairs:
        raise UsageError("--pairs needs a multi-label model and data")
    if table2 and run.task != "double":
        raise UsageError(f"--table2 needs a double-branch model (content and context), not {run.cfg.model.name}")
    cfg, test_set, model, device = run.cfg, run.test_set, run.model, run.device
    pipe = run.pipeline()
    report: Dict[str, Any] = {"checkpoint": str(run.checkpoint), "epoch": run.epoch, "model": cfg.model.name,
                              "task": run.task}
    if run.task == "multilabel":
        if not test_set.multilabel:
            raise UsageError(f"{test_set.name}: a multi-label model needs multi-hot test labels")
        scores, targets = collect(model, pipe)
        pair_idx = parse_pairs(pairs, run.classes, "--pairs") if pairs else []
        report["test"] = {**multilabel_hits(scores, targets),
                          **multilabel_report(scores, targets, run.classes, pair_idx, top_k)}
    else:
        logits, labels = collect(model, pipe)  # all ranks, each sample once
        per_class = {c: (float(100 * (logits[labels == k].argmax(1) == k).mean()) if (labels == k).any() else None)
                     for k, c in enumerate(run.classes)}
        report["test"] = {**topk_accuracy(logits, labels, (1, 5)), "n": int(len(labels)), "per_class_top1": per_class}
        if bg_challenge:
            report["bg_challenge"] = run_bg_challenge(model, test_set, cfg, device, double=run.task == "double")
        if table2:
            report["table2"] = run_table2(model, test_set, cfg, device)
    report["data"] = to_dict(cfg)["data"]
    if out:
        atomic_write_json(Path(out), report)
    return report
