"""How much a biased pair's context c lifts the score of b: the contextual bias of Singh et al. (CVPR 2020)
measured on a test set where c is independent of b.

``context_lift``: for every pair (b, c), the mean logit of b on the test images **with b** that also
hold c minus that on the images with b and without c (``with_b``: does c make b more confident where
b is there?), and the same on the images **without b** (``without_b``: does c alone raise a false b?).
Where c is independent of b and of everything else in the image (the scene benchmark's test sets), both
are the effect of c's presence on b's logit; 0 for a model that reads b off b alone. The gap between
Exclusive and Co-occur AP (``scores.biased_pairs``) is the same bias seen through the ranking.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence, Tuple

import numpy as np


def _mean_gap(s: np.ndarray, with_c: np.ndarray, rows: np.ndarray) -> float:
    a, b = rows & with_c, rows & ~with_c
    return float(s[a].mean() - s[b].mean()) if a.any() and b.any() else float("nan")


def context_lift(scores: np.ndarray, targets: np.ndarray, pairs: Sequence[Tuple[int, int]]) -> Dict[str, Any]:
    """{'pairs': [{b, c, with_b, without_b, n_*}], 'with_b', 'without_b' (means over pairs, NaN-free)}:
    mean logit (or score) of b with c minus without c, on the images with b and on those without b."""
    s = np.asarray(scores, np.float64)
    t = np.asarray(targets) > 0
    if s.shape != t.shape:
        raise ValueError(f"context_lift: scores {s.shape} and targets {t.shape} differ in shape")
    rows = []
    for b, c in pairs:
        has_b, has_c = t[:, b], t[:, c]
        rows.append({"b": int(b), "c": int(c), "with_b": _mean_gap(s[:, b], has_c, has_b),
                     "without_b": _mean_gap(s[:, b], has_c, ~has_b),
                     "n_b_with_c": int((has_b & has_c).sum()), "n_b_without_c": int((has_b & ~has_c).sum())})

    def mean(key: str) -> float:
        vals = [r[key] for r in rows if not math.isnan(r[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {"pairs": rows, "with_b": mean("with_b"), "without_b": mean("without_b")}
