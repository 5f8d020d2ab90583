"""Intervention plans: for every sample i, the context partner j it is composited with.

A plan is a pure function of (kind, seed, epoch) over the whole dataset, so every rank computes the
same plan, takes its own shard of the visiting order, and a resumed run gets exactly the same pairs.

- ``none``       -- j = i: the sample's own context, P(Y|X).
- ``stratify_c`` -- j uniform over the samples of i's stratum (class, or common-sense group A):
                   "Stratify C conditional on A" (Eq. 10, Algorithm 1).
- ``stratify_b`` -- b' ~ P(b), then j uniform over the samples with (stratum a_i, bias b'): the
                   context h(a_i, b') of Eq. 9, for data whose bias B is visible. P(b) is the
                   dataset's marginal of B, renormalised over the values present in stratum a_i.
- ``random``     -- j uniform over the whole dataset ("Obj + all Bg").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from .records import DataError

PLAN_KINDS = ("none", "stratify_c", "stratify_b", "random")


@dataclass(frozen=True)
class InterventionPlan:
    kind: str
    seed: int
    epoch: int
    order: np.ndarray  # (N,) the epoch's visiting order (a permutation of 0..N-1)
    partner: np.ndarray  # (N,) partner[i] = context sample of sample i

    def __len__(self) -> int:
        return len(self.order)

    def shard(self, rank: int, world_size: int) -> np.ndarray:
        """Rank's part of the visiting order; every rank gets ceil(N / world) indices.

        The order is padded by wrapping around (as torch's DistributedSampler does), so shards are
        disjoint and cover the dataset when N is a multiple of world_size, and otherwise repeat at
        most world_size - 1 samples.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        n = len(self.order)
        per_rank = -(-n // world_size)
        total = per_rank * world_size
        order = self.order if total == n else np.concatenate([self.order, self.order[: total - n]])
        return order[rank::world_size]


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def _uniform_within_groups(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each i, an index j drawn uniformly from {j : keys[j] == keys[i]} (i included)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    uniq, start, count = np.unique(sorted_keys, return_index=True, return_counts=True)
    g = np.searchsorted(uniq, keys)  # group of each sample
    pick = start[g] + (rng.random(len(keys)) * count[g]).astype(np.int64)
    return order[np.minimum(pick, start[g] + count[g] - 1)]


def _stratify_b(strata: np.ndarray, bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if (bias < 0).any():
        i = int(np.nonzero(bias < 0)[0][0])
        raise DataError(f"plan stratify_b needs the bias B of every sample; sample {i} has none (bias=-1). "
                        f"Use stratify_c when B is not visible")
    values, counts = np.unique(bias, return_counts=True)
    prior = counts / counts.sum()  # P(b)
    partner = np.empty(len(strata), np.int64)
    pairs, inverse = np.unique(np.stack([strata, bias], 1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(pairs) + 1))
    members: Dict[Tuple[int, int], np.ndarray] = {  # (a, b) -> samples with stratum a and bias b
        (int(a), int(b)): order[bounds[k]:bounds[k + 1]] for k, (a, b) in enumerate(pairs)}
    for a in np.unique(strata):
        idx = np.nonzero(strata == a)[0]
        present = np.array([b for b in values if (int(a), int(b)) in members])
        w = prior[np.searchsorted(values, present)]
        b_new = rng.choice(present, size=len(idx), p=w / w.sum())  # b' ~ P(b | b present in a)
        for b in present:
            sel = idx[b_new == b]
            pool = members[(int(a), int(b))]
            partner[sel] = pool[rng.integers(0, len(pool), len(sel))]
    return partner


def make_plan(kind: str, strata: np.ndarray, seed: int, epoch: int, bias: np.ndarray | None = None,
              shuffle: bool = True) -> InterventionPlan:
    """The plan of `kind` for one epoch over samples with the given strata (and bias)."""
    if kind not in PLAN_KINDS:
        raise ValueError(f"intervention plan must be one of {', '.join(PLAN_KINDS)}, got {kind!r}")
    strata = np.asarray(strata, np.int64)
    n = len(strata)
    if n == 0:
        raise DataError("intervention plan: the dataset is empty")
    order = _rng(seed, epoch, 0).permutation(n) if shuffle else np.arange(n)
    rng = _rng(seed, epoch, 1)
    if kind == "none":
        partner = np.arange(n)
    elif kind == "stratify_c":
        partner = _uniform_within_groups(strata, rng)
    elif kind == "random":
        partner = rng.integers(0, n, n)
    else:
        if bias is None:
            raise DataError("plan stratify_b needs the bias B of every sample; the data has no 'bias' column")
        partner = _stratify_b(strata, np.asarray(bias, np.int64), rng)
    return InterventionPlan(kind, seed, epoch, order, partner.astype(np.int64))
