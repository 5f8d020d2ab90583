"""Bias-aware evaluation: mAP, Exclusive / Co-occur AP, top-k recall, CIT Table II, Background Challenge.

Scores are collected over a pipeline (all ranks gathered, in sample order), then the metrics are
plain numpy functions of (scores, targets), tested against hand-computed values:

- ``average_precision``: area under the precision-recall curve as a step function (the definition
  of scikit-learn's ``average_precision_score``; tied scores form one threshold).
- ``biased_pairs``: for each biased pair (b, c) (Singh et al., CVPR 2020): the AP of b on the
  *Exclusive* subset (images with b and without c, plus every image without b) and on the
  *Co-occur* subset (images with b and c, plus every image without b); also b's AP on all images.
- ``top_k_recall``: per class, the fraction of its positive images in which it ranks in the top k
  (DeepFashion's top-3 recall), averaged over classes; per pair on the Exclusive / Co-occur positives.
- ``table2``: a double-branch model fed only the object (context branch blank) or only the
  background (content branch blank), CIT Table II.
- ``bg_challenge``: Background-Challenge-style test sets built on the fly from any masked test set by
  the intervention plans: Original (plan none), Mixed-Same (the object on the background of another
  image of its class: plan stratify_c over classes), Mixed-Rand (plan random), Only-FG (a zero
  context); BG-Gap = Mixed-Same - Mixed-Rand. The partner's own object is removed from the
  background it lends (its pixels zeroed, as in the double-branch context).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..data.pipeline import Batch, Pipeline, PipelineSpec, compose
from ..data.records import SampleSet
from ..errors import UsageError

# ---------------------------------------------------------------------------------------------
# metrics on (scores, targets)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: sum_n (R_n - R_{n-1}) P_n over descending distinct thresholds; NaN without positives."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(targets).reshape(-1) > 0
    if len(s) != len(y):
        raise ValueError(f"average_precision: {len(s)} scores but {len(y)} targets")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of every distinct score
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, C) -> (C,) AP per class (NaN for classes without positives)."""
    return np.array([average_precision(scores[:, j], targets[:, j]) for j in range(scores.shape[1])])


def mean_ap(scores: np.ndarray, targets: np.ndarray) -> Tuple[float, np.ndarray]:
    """(mAP in %, per-class AP in %) over the classes that have positives."""
    ap = per_class_ap(scores, targets) * 100
    valid = ~np.isnan(ap)
    return (float(ap[valid].mean()) if valid.any() else float("nan")), ap


def _class_index(spec, classes: Sequence[str]) -> int:
    if isinstance(spec, (int, np.integer)):
        idx = int(spec)
    elif str(spec).lstrip("-").isdigit() and str(spec) not in classes:
        idx = int(spec)
    elif str(spec) in classes:
        return list(classes).index(str(spec))
    else:
        raise UsageError(f"biased pair: class {spec!r} is not among the classes ({', '.join(list(classes)[:10])}...)")
    if not 0 <= idx < len(classes):
        raise UsageError(f"biased pair: class index {idx} is out of range [0, {len(classes) - 1}]")
    return idx


def parse_pairs(text: str | Sequence, classes: Sequence[str]) -> List[Tuple[int, int]]:
    """'b:c,b2:c2' (names or indices) or [(b, c), ...] -> [(b, c)] class indices."""
    if isinstance(text, str):
        items = [p.strip() for p in text.split(",") if p.strip()]
        raw = []
        for p in items:
            if ":" not in p:
                raise UsageError(f"biased pair {p!r}: expected 'b:c' (the biased class, then its context class)")
            raw.append(tuple(p.split(":", 1)))
    else:
        raw = list(text)
    out = []
    for b, c in raw:
        bi, ci = _class_index(b, classes), _class_index(c, classes)
        if bi == ci:
            raise UsageError(f"biased pair ({b}, {c}): b and c must differ")
        out.append((bi, ci))
    return out


def biased_pairs(scores: np.ndarray, targets: np.ndarray, pairs: Sequence[Tuple[int, int]],
                 classes: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Exclusive / Co-occur / all-images AP (%) of b for every pair (b, c), and their means."""
    t = np.asarray(targets) > 0
    rows = []
    for b, c in pairs:
        neg = ~t[:, b]
        excl = t[:, b] & ~t[:, c]
        cooc = t[:, b] & t[:, c]
        rows.append({"b": classes[b] if classes else b, "c": classes[c] if classes else c,
                     "exclusive": 100 * average_precision(scores[excl | neg, b], t[excl | neg, b]),
                     "cooccur": 100 * average_precision(scores[cooc | neg, b], t[cooc | neg, b]),
                     "all": 100 * average_precision(scores[:, b], t[:, b]),
                     "n_exclusive": int(excl.sum()), "n_cooccur": int(cooc.sum())})

    def mean(key):
        vals = [r[key] for r in rows if not math.isnan(r[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {"pairs": rows, "exclusive": mean("exclusive"), "cooccur": mean("cooccur"), "all": mean("all")}


def top_k_recall(scores: np.ndarray, targets: np.ndarray, k: int = 3,
                 rows: Optional[np.ndarray] = None, classes_: Optional[Sequence[int]] = None) -> float:
    """Mean over classes of the fraction of a class's positive images that rank it in their top k (%).

    rows: optional boolean mask of the images to count; classes_: the classes to average over.
    """
    t = np.asarray(targets) > 0
    s = np.asarray(scores)
    k = min(k, s.shape[1])
    # rank of each class within its image: class j is in the top k iff fewer than k classes score higher
    kth = -np.sort(-s, axis=1)[:, k - 1:k]  # (N, 1) the k-th highest score
    in_top = s >= kth
    if rows is not None:
        t = t & rows[:, None]
    vals = []
    for j in (classes_ if classes_ is not None else range(s.shape[1])):
        pos = t[:, j]
        if pos.any():
            vals.append(in_top[pos, j].mean())
    return float(100 * np.mean(vals)) if vals else float("nan")


def biased_pairs_recall(scores: np.ndarray, targets: np.ndarray, pairs: Sequence[Tuple[int, int]],
                        k: int = 3) -> Dict[str, float]:
    """Top-k recall of b over its Exclusive and Co-occur positives, averaged over pairs (%)."""
    t = np.asarray(targets) > 0
    ex, co = [], []
    for b, c in pairs:
        ex.append(top_k_recall(scores, targets, k, rows=~t[:, c], classes_=[b]))
        co.append(top_k_recall(scores, targets, k, rows=t[:, c], classes_=[b]))

    def mean(v):
        v = [x for x in v if not math.isnan(x)]
        return float(np.mean(v)) if v else float("nan")

    return {f"exclusive_top{k}_recall": mean(ex), f"cooccur_top{k}_recall": mean(co)}


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> Dict[str, float]:
    """Single-label top-k accuracy (%)."""
    order = np.argsort(-logits, axis=1, kind="stable")
    out = {}
    for k in ks:
        k_ = min(k, logits.shape[1])
        out[f"top{k}"] = float(100 * (order[:, :k_] == labels[:, None]).any(1).mean()) if len(labels) else float("nan")
    return out


def multilabel_hits(scores: np.ndarray, targets: np.ndarray) -> Dict[str, float]:
    """top-1 / top-5 for multi-hot labels: % of images whose k best-scored classes hold a true label."""
    order = np.argsort(-scores, axis=1, kind="stable")
    t = np.asarray(targets) > 0
    rows = np.arange(len(t))[:, None]
    return {f"top{k}": float(100 * t[rows, order[:, :min(k, scores.shape[1])]].any(1).mean()) for k in (1, 5)}


def multilabel_report(scores: np.ndarray, targets: np.ndarray, classes: Sequence[str],
                      pairs: Sequence[Tuple[int, int]] = (), k: int = 3) -> Dict[str, Any]:
    """mAP, per-class AP, top-k recall and (with pairs) Exclusive / Co-occur AP and recall."""
    m, ap = mean_ap(scores, targets)
    rep: Dict[str, Any] = {"mAP": m, "per_class_ap": {c: (None if math.isnan(a) else float(a)) for c, a in zip(classes, ap)},
                           f"top{k}_recall": top_k_recall(scores, targets, k), "n": int(len(scores))}
    if pairs:
        rep["biased_pairs"] = biased_pairs(scores, targets, pairs, classes)
        rep["biased_pairs"].update(biased_pairs_recall(scores, targets, pairs, k))
    return rep


# ---------------------------------------------------------------------------------------------
# collecting model outputs over a pipeline


def _gather(t: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, concatenated (CPU)."""
    t = t.cpu()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, t)
        t = torch.cat(parts)
    return t


def _inputs(batch: Batch) -> tuple:
    if "content" in batch:
        return batch["content"], batch["context"]
    return (batch["image"],)


@torch.no_grad()
def collect(model: torch.nn.Module, batches, forward: Optional[Callable] = None
            ) -> Tuple[np.ndarray, np.ndarray]:
    """(outputs (N, C) float32, labels) over all ranks, in sample-index order, each sample once."""
    was = model.training
    model.eval()
    forward = forward or (lambda batch: model(*_inputs(batch)))
    outs, labels, index = [], [], []
    try:
        for batch in batches:
            outs.append(forward(batch).float().cpu())
            labels.append(batch["label"].cpu())
            index.append(batch["index"].cpu())
    finally:
        model.train(was)
    if not outs:
        raise ValueError("evaluation: no batches")
    o, y, i = _gather(torch.cat(outs)), _gather(torch.cat(labels)), _gather(torch.cat(index))
    i_np = i.numpy()
    _, first = np.unique(i_np, return_index=True)  # drop the padding duplicates of uneven shards
    order = first[np.argsort(i_np[first], kind="stable")]
    return o.numpy()[order], y.numpy()[order]


# ---------------------------------------------------------------------------------------------
# pipelines for the diagnostic test sets


def eval_spec(cfg, device: torch.device, output: str, plan: str = "none", rank: int = 0,
              world_size: int = 1) -> PipelineSpec:
    d = cfg.data
    return PipelineSpec(batch_size=d.batch_size, plan=plan, output=output, epochwise=False, train=False,
                        image_size=d.image_size, hflip=False, crop_padding=0, mean=tuple(d.mean),
                        std=tuple(d.std), seed=cfg.seed, rank=rank, world_size=world_size,
                        num_workers=d.num_workers, device=device)


def _torch_pipeline(samples: SampleSet, spec: PipelineSpec) -> Pipeline:
    from ..data.torch_pipeline import TorchPipeline

    return TorchPipeline(samples, spec)


def _blank(x: torch.Tensor, spec: PipelineSpec) -> torch.Tensor:
    from ..models.double_branch import blank_like

    return blank_like(x, spec.mean, spec.std)


def _remove_partner_object(raw: Batch) -> Batch:
    """The partner lends its background only: its object pixels become zero (as in the double context)."""
    out = dict(raw)
    keep = 1.0 - raw["ctx_mask"].float() / 255.0
    out["ctx"] = (raw["ctx"].float() * keep[..., None]).round().to(torch.uint8)
    return out


def _variant_batches(samples: SampleSet, spec: PipelineSpec, variant: str):
    """Composed batches of one Background-Challenge variant."""
    pipe = _torch_pipeline(samples, spec)
    for raw in pipe.raw_batches():
        if variant == "only_fg":
            raw = dict(raw)
            raw["ctx"] = torch.zeros_like(raw["ctx"])
            raw["ctx_mask"] = torch.zeros_like(raw["ctx_mask"])
        elif variant in ("mixed_same", "mixed_rand"):
            raw = _remove_partner_object(raw)
        s = spec if variant != "only_fg" or spec.output == "double" else replace(spec, plan="random")
        yield compose(raw, s)


def bg_challenge(model: torch.nn.Module, samples: SampleSet, cfg, device: torch.device, double: bool,
                 rank: int = 0, world_size: int = 1) -> Dict[str, float]:
    """Top-1 (%) on Original, Mixed-Same, Mixed-Rand and Only-FG versions of a masked test set."""
    if samples.multilabel:
        raise UsageError("bg_challenge: needs single-label data")
    if samples.masks is None:
        raise UsageError(f"--bg-challenge: {samples.name} has no object masks (write them with `cit-fast masks`)")
    by_class = SampleSet(samples.images, samples.masks, samples.labels, list(samples.classes),
                         strata=samples.labels.astype(np.int64), bias=samples.bias, name=samples.name)
    output = "double" if double else "image"
    plans = {"original": "none", "mixed_same": "stratify_c", "mixed_rand": "random", "only_fg": "none"}
    out: Dict[str, float] = {}
    for variant, plan in plans.items():
        spec = eval_spec(cfg, device, output, plan, rank, world_size)
        logits, labels = collect(model, _variant_batches(by_class, spec, variant))
        out[variant] = topk_accuracy(logits, labels, (1,))["top1"]
    out["bg_gap"] = out["mixed_same"] - out["mixed_rand"]
    return out


def table2(model: torch.nn.Module, samples: SampleSet, cfg, device: torch.device, rank: int = 0,
           world_size: int = 1) -> Dict[str, float]:
    """CIT Table II: top-1 (%) of a double-branch model on both inputs, only the object, only the background."""
    if samples.masks is None:
        raise UsageError(f"--table2: {samples.name} has no object masks (write them with `cit-fast masks`)")
    spec = eval_spec(cfg, device, "double", "none", rank, world_size)
    out = {}
    feeds = {"obj_and_bg": lambda b: model(b["content"], b["context"]),
             "only_obj": lambda b: model(b["content"], _blank(b["context"], spec)),
             "only_bg": lambda b: model(_blank(b["content"], spec), b["context"])}
    for name, fwd in feeds.items():
        logits, labels = collect(model, iter(_torch_pipeline(samples, spec)), fwd)
        out[name] = topk_accuracy(logits, labels, (1,))["top1"]
    return out


# ---------------------------------------------------------------------------------------------
# the readable table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.2f}"
    return str(v)


def format_report(report: Dict[str, Any]) -> str:
    """The report as aligned text tables (the JSON keeps everything)."""
    lines = [f"checkpoint: {report.get('checkpoint', '-')}  model: {report.get('model', '-')}  "
             f"task: {report.get('task', '-')}"]
    test = report.get("test", {})
    scalars = [(k, v) for k, v in test.items() if isinstance(v, (int, float))]
    if scalars:
        lines.append("\ntest set")
        lines += [f"  {k:<22s} {_fmt(v):>8s}" for k, v in scalars]
    pairs = test.get("biased_pairs")
    if pairs:
        lines.append("\nbiased pairs (AP %, b's AP on the subset)")
        lines.append(f"  {'b':<14s} {'c':<14s} {'Exclusive':>10s} {'Co-occur':>10s} {'All':>8s} {'n_ex':>6s} {'n_co':>6s}")
        for r in pairs["pairs"]:
            lines.append(f"  {str(r['b']):<14s} {str(r['c']):<14s} {_fmt(r['exclusive']):>10s} "
                         f"{_fmt(r['cooccur']):>10s} {_fmt(r['all']):>8s} {r['n_exclusive']:>6d} {r['n_cooccur']:>6d}")
        lines.append(f"  {'mean':<29s} {_fmt(pairs['exclusive']):>10s} {_fmt(pairs['cooccur']):>10s} "
                     f"{_fmt(pairs['all']):>8s}")
        for k, v in pairs.items():
            if k.endswith("recall"):
                lines.append(f"  {k:<29s} {_fmt(v):>10s}")
    for key, title in (("per_class_ap", "per-class AP (%)"), ("per_class_top1", "per-class top-1 (%)")):
        if test.get(key):
            lines.append(f"\n{title}")
            lines += [f"  {c:<22s} {_fmt(a) if a is not None else 'n/a':>8s}" for c, a in test[key].items()]
    for key, title in (("table2", "CIT Table II (top-1 %)"), ("bg_challenge", "Background Challenge (top-1 %)")):
        if key in report:
            lines.append(f"\n{title}")
            lines += [f"  {k:<22s} {_fmt(v):>8s}" for k, v in report[key].items()]
    return "\n".join(lines)
