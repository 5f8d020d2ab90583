"""The plan samplers as first written (before issue 13), frozen: the reference that the vectorised
``cit_fast.data.plans.intervention`` must reproduce bit for bit (so ``make demo`` keeps its numbers).
O(N * strata): for small test data only."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def _uniform_within_groups(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    uniq, start, count = np.unique(sorted_keys, return_index=True, return_counts=True)
    g = np.searchsorted(uniq, keys)
    pick = start[g] + (rng.random(len(keys)) * count[g]).astype(np.int64)
    return order[np.minimum(pick, start[g] + count[g] - 1)]


def _stratify_b(strata: np.ndarray, bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    values, counts = np.unique(bias, return_counts=True)
    prior = counts / counts.sum()
    partner = np.empty(len(strata), np.int64)
    pairs, inverse = np.unique(np.stack([strata, bias], 1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(pairs) + 1))
    members: Dict[Tuple[int, int], np.ndarray] = {
        (int(a), int(b)): order[bounds[k]:bounds[k + 1]] for k, (a, b) in enumerate(pairs)}
    for a in np.unique(strata):
        idx = np.nonzero(strata == a)[0]
        present = np.array([b for b in values if (int(a), int(b)) in members])
        w = prior[np.searchsorted(values, present)]
        b_new = rng.choice(present, size=len(idx), p=w / w.sum())
        for b in present:
            sel = idx[b_new == b]
            pool = members[(int(a), int(b))]
            partner[sel] = pool[rng.integers(0, len(pool), len(sel))]
    return partner


def make_plan(kind, strata, seed, epoch, bias=None, shuffle=True):
    """(order, partner) of the first implementation."""
    strata = np.asarray(strata, np.int64)
    n = len(strata)
    order = _rng(seed, epoch, 0).permutation(n) if shuffle else np.arange(n)
    rng = _rng(seed, epoch, 1)
    if kind == "none":
        partner = np.arange(n)
    elif kind == "stratify_c":
        partner = _uniform_within_groups(strata, rng)
    elif kind == "random":
        partner = rng.integers(0, n, n)
    else:
        partner = _stratify_b(strata, np.asarray(bias, np.int64), rng)
    return order, partner.astype(np.int64)
