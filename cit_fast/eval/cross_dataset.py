"""Cross-dataset evaluation (Chen et al., NeurIPS 2024, the cross-dataset setting).

A model trained on one multi-label source is scored on another source's test images; only the
classes both sides have count, matched by a mapping file ``{source class name: target class name}``
(YAML or JSON), or by a shipped mapping named instead of a file: ``coco-nuswide`` (MS-COCO <-> NUS-WIDE,
``cit_fast.data.mappings``), read COCO -> NUS-WIDE or NUS-WIDE -> COCO as the model's classes go. The report holds the mAP over the common classes and every common class's AP:

    cit-fast cross-eval --checkpoint runs/coco/checkpoints/ckpt_e0030_s000000.pt \\
        --mapping coco_to_nuswide.yaml data.source=nuswide data.test=data/nuswide/test --out cross.json

The target data come from the checkpoint's config with the ``key=value`` overrides; the target is
read with its own classes (not the training ones). Its images are resized to the training images'
side when the training data were in memory and ``data.image_size`` is neither set nor overridden.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import finalize, from_dict, merge_trees, parse_overrides, resolve_paths, to_dict
from ..data.build import build_datasets, build_pipeline, load_split
from ..data.mappings import NAMED, named_mapping, orient
from ..data.sources.records import DataError, SampleSet
from ..utils import atomic_write_json, read_mapping_file
from .collect import collect
from .run import load_run
from .scores import average_precision


def load_mapping(path: str) -> Dict[str, str]:
    """{source class: target class} from a YAML/JSON mapping file."""
    raw = read_mapping_file(Path(path), "mapping", DataError)  # {source class: target class}
    out: Dict[str, str] = {}
    for k, v in raw.items():
        if v is None or isinstance(v, (dict, list)):
            raise DataError(f"mapping {path}: source class {k!r} needs one target class name, got {v!r}")
        out[str(k)] = str(v)
    return out


def _shown(names: Sequence[str], n: int = 12) -> str:
    return ", ".join(list(names)[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def match_classes(mapping: Dict[str, str], source: Sequence[str], target: Sequence[str],
                  where: str = "mapping") -> List[Tuple[int, int]]:
    """(source index, target index) of every mapped pair; unknown names are one error listing them all."""
    bad = []
    unknown_s = [s for s in mapping if s not in source]
    unknown_t = [t for t in mapping.values() if t not in target]
    if unknown_s:
        bad.append(f"unknown source class(es) {unknown_s} (the model's classes: {_shown(source)})")
    if unknown_t:
        bad.append(f"unknown target class(es) {sorted(set(unknown_t), key=unknown_t.index)} "
                   f"(the target's classes: {_shown(target)})")
    if bad:
        raise DataError(f"{where}: " + "; ".join(bad))
    by_target: Dict[str, List[str]] = {}
    for s, t in mapping.items():
        by_target.setdefault(t, []).append(s)
    shared = {t: s for t, s in by_target.items() if len(s) > 1}
    if shared:
        raise DataError(f"{where}: target class(es) mapped from several source classes {shared}; "
                        f"the mapping must be one-to-one")
    return [(list(source).index(s), list(target).index(t)) for s, t in mapping.items()]


def common_class_ap(scores: np.ndarray, targets: np.ndarray, pairs: Sequence[Tuple[int, int]],
                    source: Sequence[str], target: Sequence[str]) -> Dict[str, Any]:
    """scores (N, C_source), targets (N, C_target) multi-hot -> mAP (%) and AP (%) per common class."""
    rows = []
    for si, ti in pairs:
        ap = 100 * average_precision(scores[:, si], targets[:, ti])
        rows.append({"source": source[si], "target": target[ti], "ap": None if math.isnan(ap) else ap,
                     "positives": int((targets[:, ti] > 0).sum())})
    aps = [r["ap"] for r in rows if r["ap"] is not None]
    return {"mAP": float(np.mean(aps)) if aps else float("nan"), "common_classes": len(rows),
            "classes_with_positives": len(aps), "per_class": rows, "n": int(len(scores))}


def _multi_hot(samples: SampleSet) -> np.ndarray:
    if samples.multilabel:
        return samples.labels
    return np.eye(samples.num_classes, dtype=np.float32)[samples.labels]  # single-label target: one-hot


def _target_set(cfg) -> SampleSet:
    d = cfg.data
    if d.source == "synthetic":
        return build_datasets(d)[1]
    if not d.test:
        raise DataError(f"cross-eval: data.test must name the target test data for data.source={d.source}")
    return load_split(d, d.test)  # the target's own classes


def _scores(model, samples: SampleSet, cfg, device, task: str) -> np.ndarray:
    labelled = SampleSet(samples.images, samples.masks, _multi_hot(samples), list(samples.classes),
                         samples.strata, samples.bias, samples.name)
    pipe = build_pipeline(labelled, cfg, train=False, device=device, output="double" if task == "double" else "image")
    scores, _ = collect(model, pipe)
    return scores


def run_cross_eval(checkpoint: str, mapping: str, overrides: Sequence[str] = (), out: Optional[str] = None,
                   *, source_too: bool = False) -> Dict[str, Any]:
    """Score `checkpoint` on the target test data (the overrides) over the mapped common classes.

    source_too: also the same classes on the checkpoint's own test set (the in-domain reference).
    """
    run = load_run(checkpoint)  # the model, its own data and classes
    src_cfg, src_train, src_test = run.cfg, run.train_set, run.test_set
    model, device, task = run.model, run.device, run.task
    upd = resolve_paths(parse_overrides(overrides), Path.cwd())
    saved = to_dict(src_cfg)
    tree = merge_trees(copy.deepcopy(saved), upd)
    data, given = tree.setdefault("data", {}), upd.get("data", {})
    if given.get("test") and "source" not in given:
        data["source"] = "auto"  # the target's own kind: finalize infers it from data.test
        if "train" not in given:
            data["train"] = ""  # only data.test is read
    elif data.get("source") != saved["data"]["source"] and "train" not in given:
        data["train"] = data.get("test", "")  # validation wants one; only data.test is read
    tgt_cfg = finalize(from_dict(tree))
    if tgt_cfg.data.source != src_cfg.data.source and "root" not in given:
        tgt_cfg.data.root = ""  # the source's image root means nothing on the target
    tgt_cfg.data.strata_file = ""  # common-sense groups of the source's classes
    target = _target_set(tgt_cfg)
    direction = None
    if mapping in NAMED and not Path(mapping).is_file():  # a shipped mapping, read the way the model's classes go
        mapped, direction = orient(named_mapping(mapping), src_train.classes, target.classes)
    else:
        mapped = load_mapping(mapping)
    pairs = match_classes(mapped, src_train.classes, target.classes, f"mapping {mapping}")
    if not tgt_cfg.data.image_size and "image_size" not in given and src_train.in_memory:
        h, w = src_train.image(0).shape[:2]
        if h == w:
            tgt_cfg.data.image_size = int(h)  # the side the model was trained at
    scores = _scores(model, target, tgt_cfg, device, task)
    report: Dict[str, Any] = {"checkpoint": str(run.checkpoint), "epoch": run.epoch, "model": src_cfg.model.name,
                              "mapping": str(mapping), "direction": direction, "source": src_train.name, "target": target.name,
                              "source_classes": len(src_train.classes), "target_classes": len(target.classes),
                              **common_class_ap(scores, _multi_hot(target), pairs, src_train.classes, target.classes)}
    mapped_s = {src_train.classes[s] for s, _ in pairs}
    mapped_t = {target.classes[t] for _, t in pairs}
    report["unmapped_source"] = [c for c in src_train.classes if c not in mapped_s]
    report["unmapped_target"] = [c for c in target.classes if c not in mapped_t]
    if source_too:
        own = common_class_ap(_scores(model, src_test, src_cfg, device, task), _multi_hot(src_test),
                              [(s, s) for s, _ in pairs], src_train.classes, src_train.classes)
        report["source_mAP"] = own["mAP"]
        for row, o in zip(report["per_class"], own["per_class"]):
            row["source_ap"] = o["ap"]
    report["target_data"] = to_dict(tgt_cfg)["data"]
    if out:
        atomic_write_json(Path(out), report)
    return report


def format_cross_report(report: Dict[str, Any]) -> str:
    def f(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    src = "source_ap" in (report["per_class"][0] if report["per_class"] else {})
    lines = [f"checkpoint: {report['checkpoint']}  model: {report['model']}",
             *([f"mapping: {report['mapping']} ({report['direction']})"] if report.get("direction") else []),
             f"source: {report['source']} ({report['source_classes']} classes)",
             f"target: {report['target']} ({report['target_classes']} classes, {report['n']} images)",
             f"common classes: {report['common_classes']} ({report['classes_with_positives']} with positives)",
             "", f"  {'source class':<18s} {'target class':<18s} {'AP %':>8s} {'positives':>9s}"
             + (f" {'source AP %':>11s}" if src else "")]
    for r in report["per_class"]:
        lines.append(f"  {r['source']:<18s} {r['target']:<18s} {f(r['ap']):>8s} {r['positives']:>9d}"
                     + (f" {f(r['source_ap']):>11s}" if src else ""))
    lines.append(f"  {'mAP (common classes)':<37s} {f(report['mAP']):>8s}"
                 + (f" {'':>9s} {f(report['source_mAP']):>11s}" if src else ""))
    return "\n".join(lines)
