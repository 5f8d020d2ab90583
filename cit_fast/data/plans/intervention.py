"""Intervention plans: for every sample i, the context partner j it is composited with.

A plan is a pure function of (kind, seed, epoch) over the whole dataset, so every rank computes the
same plan, takes its own shard of the visiting order, and a resumed run gets exactly the same pairs.
Its randomness is the project's own counter-based draws (``draws``: SplitMix64 of (seed, epoch,
stream, sample index)), so the same seed gives the same pairs on every numpy version; sample i's
partner is drawn from draw i of its stream, so it does not depend on any other sample's draw.

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
from typing import Tuple

import numpy as np

from . import draws
from ..choices import PLANS
from ..sources.records import DataError


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


# ----------------------------------------------------------------------------------------------
# Grouping in O(N): dense group ids and a stable counting order (ImageNet-21k: 14M samples)
# ----------------------------------------------------------------------------------------------
def dense_groups(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, counts, values): ids[i] = rank of keys[i] among the distinct keys ``values``
    (ascending), and each one's count; what ``np.unique(keys, return_inverse=True,
    return_counts=True)`` gives, in O(N) for small non-negative keys (a lookup table), else a sort.
    """
    keys = np.asarray(keys, np.int64)
    n = len(keys)
    if n and keys.min() >= 0 and keys.max() < 4 * n + 65536:
        present = np.zeros(int(keys.max()) + 1, bool)
        present[keys] = True
        values = np.flatnonzero(present)
        ids = (np.cumsum(present) - 1)[keys]
    else:
        values, ids = np.unique(keys, return_inverse=True)
        ids = ids.reshape(-1)
    ids = ids.astype(np.int64, copy=False)
    return ids, np.bincount(ids, minlength=len(values)), values


def stable_order(ids: np.ndarray, n_groups: int) -> np.ndarray:
    """``np.argsort(ids, kind="stable")`` for ids in [0, n_groups), as 16-bit radix passes.

    numpy sorts 16-bit integers with a radix sort (O(N)) and wider ones with timsort; two stable
    passes over the low and high 16 bits (LSD radix) give the same, unique, stable order.
    """
    if n_groups <= 1 << 16:
        return np.argsort(ids.astype(np.uint16), kind="stable")
    if n_groups > 1 << 32:
        return np.argsort(ids, kind="stable")
    low = np.argsort((ids & 0xFFFF).astype(np.uint16), kind="stable")
    return low[np.argsort((ids[low] >> 16).astype(np.uint16), kind="stable")]


def _uniform_within_groups(keys: np.ndarray, k: int) -> np.ndarray:
    """For each i, an index j drawn uniformly from {j : keys[j] == keys[i]} (i included).

    One O(N) pass: members of each group in index order, draw i of stream ``k`` picks sample i's.
    """
    g, count, _ = dense_groups(keys)  # group of each sample
    order = stable_order(g, len(count))  # members of group 0, then group 1, ... in index order
    start = np.cumsum(count) - count
    return order[start[g] + draws.below(k, count[g])]


def _stratify_b(strata: np.ndarray, bias: np.ndarray, k_bias: int, k_member: int) -> np.ndarray:
    """b' ~ P(b | b present in a_i), then a uniform partner among the samples with (a_i, b').

    P(b) is the dataset's count of bias value b over N; renormalised over the values present in
    stratum a it is count(b) / (sum of count(b') over a's values), so the draw is in integers:
    draw i of ``k_bias`` picks r in [0, that sum) and the pool is where r falls in the running sum
    of counts (one searchsorted over all strata's pools at once); draw i of ``k_member`` then picks
    the member of the pool. O(N log pools), no loop.
    """
    if (bias < 0).any():
        i = int(np.nonzero(bias < 0)[0][0])
        raise DataError(f"plan stratify_b needs the bias B of every sample; sample {i} has none (bias=-1). "
                        f"Use stratify_c when B is not visible")
    sb, b_counts, _ = dense_groups(bias)
    sa, a_counts, _ = dense_groups(strata)
    n_a, n_b = len(a_counts), len(b_counts)
    pair_of, pair_counts, pair_keys = dense_groups(sa * n_b + sb)  # (a, b) pools, lexicographic order
    pair_a = pair_keys // n_b
    weight = b_counts[pair_keys % n_b]  # each pool's share of its stratum: count(b)
    cum = np.cumsum(weight)  # running sum over the pools, strata one after another
    a_total = np.bincount(pair_a, weights=weight, minlength=n_a).astype(np.int64)
    a_before = np.cumsum(a_total) - a_total
    r = a_before[sa] + draws.below(k_bias, a_total[sa])
    # (N,) the (a, b') pool of each sample's partner; searched stratum after stratum (the queries
    # of one stratum fall in a few neighbouring pools: a cache-friendly binary search)
    by_a = stable_order(sa, n_a)
    pool = np.empty(len(strata), np.int64)
    pool[by_a] = np.searchsorted(cum, r[by_a], side="right")
    members = stable_order(pair_of, len(pair_counts))  # each pool's samples in index order
    pool_start = np.cumsum(pair_counts) - pair_counts
    return members[pool_start[pool] + draws.below(k_member, pair_counts[pool])]


def make_plan(kind: str, strata: np.ndarray, seed: int, epoch: int, bias: np.ndarray | None = None,
              shuffle: bool = True) -> InterventionPlan:
    """The plan of `kind` for one epoch over samples with the given strata (and bias)."""
    if kind not in PLANS:
        raise ValueError(f"intervention plan must be one of {', '.join(PLANS)}, got {kind!r}")
    strata = np.asarray(strata, np.int64)
    n = len(strata)
    if n == 0:
        raise DataError("intervention plan: the dataset is empty")
    # streams of (seed, epoch): 0 the visiting order, 1 and 2 the partners (draw i is sample i's)
    order = draws.permutation(draws.key(seed, epoch, 0), n) if shuffle else np.arange(n)
    k1, k2 = draws.key(seed, epoch, 1), draws.key(seed, epoch, 2)
    if kind == "none":
        partner = np.arange(n)
    elif kind == "stratify_c":
        partner = _uniform_within_groups(strata, k1)
    elif kind == "random":
        partner = draws.below(k1, n, n)
    else:
        if bias is None:
            raise DataError("plan stratify_b needs the bias B of every sample; the data has no 'bias' column")
        partner = _stratify_b(strata, np.asarray(bias, np.int64), k1, k2)
    return InterventionPlan(kind, seed, epoch, order, partner.astype(np.int64))
