"""Scores as plain numpy functions of (scores, targets), tested against hand-computed values.

- ``average_precision``: area under the precision-recall curve as a step function (the definition
  of scikit-learn's ``average_precision_score``; tied scores form one threshold).
- ``biased_pairs``: for each biased pair (b, c) (Singh et al., CVPR 2020): the AP of b on the
  *Exclusive* subset (images with b and without c, plus every image without b) and on the
  *Co-occur* subset (images with b and c, plus every image without b); also b's AP on all images.
- ``top_k_recall``: per class, the fraction of its positive images in which it ranks in the top k
  (DeepFashion's top-3 recall), averaged over classes; per pair on the Exclusive / Co-occur positives.
- ``topk_correct`` / ``topk_accuracy``: single-label top-k, one definition (``torch.topk``) for the
  evaluation during training (counts reduced over ranks) and for the reports.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.pairs import class_index, resolve_pairs
from ..errors import UsageError
from .context_bias import context_lift

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


def parse_pairs(text: str | Sequence, classes: Sequence[str], label: str = "biased pairs") -> List[Tuple[int, int]]:
    """A preset name (coco-stuff, deepfashion), a pairs file or 'b:c,b2:c2' (names or indices), or
    [(b, c), ...] -> [(b, c)] class indices (``cit_fast.data.pairs``)."""
    if isinstance(text, str):
        return resolve_pairs(text, classes, label)
    out = []
    for b, c in text:
        bi, ci = class_index(b, classes, label), class_index(c, classes, label)
        if bi == ci:
            raise UsageError(f"{label} ({b}, {c}): b and c must differ")
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


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, torch.Tensor]:
    """{k: number of rows whose label is among the k highest logits} (0-dim tensors on the logits' device)."""
    kmax = min(max(ks), logits.shape[1])
    hit = logits.topk(kmax, dim=1).indices == labels[:, None]  # (N, kmax)
    return {k: hit[:, :min(k, kmax)].any(dim=1).sum() for k in ks}


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> Dict[str, float]:
    """Single-label top-k accuracy (%)."""
    if not len(labels):
        return {f"top{k}": float("nan") for k in ks}
    hits = topk_correct(torch.as_tensor(logits).float(), torch.as_tensor(labels).long(), ks)
    return {f"top{k}": float(100 * int(hits[k]) / len(labels)) for k in ks}


def multilabel_hits(scores: np.ndarray, targets: np.ndarray) -> Dict[str, float]:
    """top-1 / top-5 for multi-hot labels: % of images whose k best-scored classes hold a true label."""
    order = np.argsort(-scores, axis=1, kind="stable")
    t = np.asarray(targets) > 0
    rows = np.arange(len(t))[:, None]
    return {f"top{k}": float(100 * t[rows, order[:, :min(k, scores.shape[1])]].any(1).mean()) for k in (1, 5)}


def multilabel_report(scores: np.ndarray, targets: np.ndarray, classes: Sequence[str],
                      pairs: Sequence[Tuple[int, int]] = (), k: int = 3) -> Dict[str, Any]:
    """mAP, per-class AP, top-k recall and (with pairs) Exclusive / Co-occur AP and recall, and how much c
    lifts b's score (``context_bias.context_lift``: ``c_lift_b`` on the images with b, ``c_lift`` on those
    without b; per pair and their means)."""
    m, ap = mean_ap(scores, targets)
    rep: Dict[str, Any] = {"mAP": m, "per_class_ap": {c: (None if math.isnan(a) else float(a)) for c, a in zip(classes, ap)},
                           f"top{k}_recall": top_k_recall(scores, targets, k), "n": int(len(scores))}
    if pairs:
        rep["biased_pairs"] = biased_pairs(scores, targets, pairs, classes)
        rep["biased_pairs"].update(biased_pairs_recall(scores, targets, pairs, k))
        lift = context_lift(scores, targets, pairs)  # c's lift of b's score, with b / without b
        for row, r in zip(rep["biased_pairs"]["pairs"], lift["pairs"]):
            row["c_lift_b"], row["c_lift"] = r["with_b"], r["without_b"]
        rep["biased_pairs"].update(c_lift_b=lift["with_b"], c_lift=lift["without_b"])
    return rep
