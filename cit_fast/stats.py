"""Confidence intervals over seeds: the mean and its two-sided 95% Student t interval.

One definition for every place that reports seeds (``cit-fast table4 --seeds``, the scene
benchmark): a sample of per-seed values, or of paired differences (the same seed for both
methods), gives mean +/- t_{0.975, n-1} * sd / sqrt(n).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

# two-sided 95% Student t quantiles t_{0.975, df}; a df between two keys takes the lower key's (wider) value
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042}


def t975(df: int) -> float:
    """t_{0.975, df} from the table (1.96 above 30 degrees of freedom)."""
    if df < 1:
        raise ValueError(f"t975: degrees of freedom must be at least 1, got {df}")
    return T975[max(k for k in T975 if k <= df)] if df <= 30 else 1.96


def mean_ci(values: Sequence[float]) -> Tuple[float, float, float]:
    """(mean, low, high): the mean and its two-sided 95% confidence interval (Student t, n - 1 df);
    low and high are NaN for a single value."""
    d = np.asarray(values, dtype=np.float64)
    if not len(d):
        raise ValueError("mean_ci: no values")
    m = float(d.mean())
    if len(d) < 2:
        return m, float("nan"), float("nan")
    half = t975(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return m, m - half, m + half


def paired_ci(diffs: Sequence[float]) -> Tuple[float, float, float]:
    """Mean of paired differences (method A - method B, seed by seed) and its 95% interval."""
    return mean_ci(diffs)
