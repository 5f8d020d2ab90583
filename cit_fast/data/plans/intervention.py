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
from typing import Tuple

import numpy as np

from ...config import PLANS
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


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


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


def _uniform_within_groups(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each i, an index j drawn uniformly from {j : keys[j] == keys[i]} (i included).

    One O(N) pass: members of each group in index order, one uniform draw per sample.
    """
    g, count, _ = dense_groups(keys)  # group of each sample
    order = stable_order(g, len(count))  # members of group 0, then group 1, ... in index order
    start = np.cumsum(count) - count
    pick = start[g] + (rng.random(len(keys)) * count[g]).astype(np.int64)
    return order[np.minimum(pick, start[g] + count[g] - 1)]


_TWO53 = 1.0 / 9007199254740992.0  # numpy's next_double: (next_uint64 >> 11) * 2**-53
_LOW32 = np.uint64(0xFFFFFFFF)


def _bounded(raw: np.ndarray, bound: np.ndarray) -> Tuple[np.ndarray, bool]:
    """Lemire's bounded integers from 32-bit draws ``raw`` with per-draw ``bound`` (> 1), as
    ``Generator.integers(0, bound)`` computes them; False where numpy would reject and redraw."""
    m = raw * bound
    threshold = (np.uint64(1 << 32) - bound) % bound
    return (m >> np.uint64(32)).astype(np.int64), not ((m & _LOW32) < threshold).any()


def _stratify_b(strata: np.ndarray, bias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """b' ~ P(b | b present in a_i), then a uniform partner among the samples with (a_i, b').

    Draws exactly what the first implementation drew (``rng.choice`` of b' per stratum, then one
    ``rng.integers`` per (stratum, b') pool, in that order), so plans are bit-identical to it, but
    from the generator's raw stream: one pass over each stratum's samples instead of one pass over
    the dataset per stratum (O(N * strata)). The stream is consumed stratum after stratum and how
    much a stratum consumes depends on its draws, hence the loop over strata (each step O(n_a));
    the (stratum, bias) pools inside a stratum are vectorised.
    """
    if (bias < 0).any():
        i = int(np.nonzero(bias < 0)[0][0])
        raise DataError(f"plan stratify_b needs the bias B of every sample; sample {i} has none (bias=-1). "
                        f"Use stratify_c when B is not visible")
    n = len(strata)
    sb, b_counts, _ = dense_groups(bias)
    prior = b_counts / b_counts.sum()  # P(b), by bias value in ascending order
    sa, a_counts, _ = dense_groups(strata)
    n_a, n_b = len(a_counts), len(b_counts)
    _, pair_counts, pair_keys = dense_groups(sa * n_b + sb)  # (a, b) pools, lexicographic order
    pair_a, pair_b = pair_keys // n_b, pair_keys % n_b
    a_order = stable_order(sa, n_a)  # each stratum's samples in index order
    by_b = stable_order(sb, n_b)
    pool_order = by_b[stable_order(sa[by_b], n_a)]  # each pool's members in index order (LSD radix)
    pool_start = np.cumsum(pair_counts) - pair_counts
    a_start = np.cumsum(a_counts) - a_counts
    a_pairs = np.bincount(pair_a, minlength=n_a)
    a_pair_start = np.cumsum(a_pairs) - a_pairs
    small = np.uint8 if n_b <= 256 else np.uint16 if n_b <= 1 << 16 else np.int64  # radix argsort

    bg = rng.bit_generator
    partner = np.empty(n, np.int64)
    for a in range(n_a):
        idx = a_order[a_start[a]:a_start[a] + a_counts[a]]  # the stratum's samples, ascending
        p0, p1 = a_pair_start[a], a_pair_start[a] + a_pairs[a]  # its (a, b) pools, by b
        w = prior[pair_b[p0:p1]]
        # rng.choice(present, len(idx), p=w / w.sum()): a cdf and one double per sample
        cdf = (w / w.sum()).cumsum()
        cdf /= cdf[-1]
        u = (bg.random_raw(len(idx)) >> np.uint64(11)) * _TWO53
        j = cdf.searchsorted(u, side="right")  # (n_a,) pool of each sample
        # then rng.integers(0, len(pool), k) per pool, in b order: one 32-bit draw per sample
        # of a pool larger than one (the generator keeps the spare half of a 64-bit word between
        # calls), in the order of the pools and, inside a pool, of the samples
        size = pair_counts[p0:p1]
        k = np.bincount(j, minlength=p1 - p0)
        by_pool = np.argsort(j.astype(small), kind="stable")
        draw = np.zeros(len(idx), np.int64)
        multi = size[j[by_pool]] > 1
        t = int(k[size > 1].sum())
        if t:
            state = bg.state
            pending = state["has_uint32"]
            fresh = t - pending  # halves from new words
            raw = bg.random_raw((fresh + 1) // 2)
            halves = np.empty(pending + 2 * len(raw), np.uint64)
            halves[:pending] = state["uinteger"]
            halves[pending::2], halves[pending + 1::2] = raw & _LOW32, raw >> np.uint64(32)
            got, ok = _bounded(halves[:t], np.repeat(size, k)[multi].astype(np.uint64))
            if ok:
                after = bg.state
                after["has_uint32"], after["uinteger"] = (1, int(halves[t])) if fresh % 2 else (0, 0)
                bg.state = after
            else:  # a rejected draw (p < 2**-22 each): replay this stratum's calls with numpy itself
                bg.state = state
                got = np.concatenate([rng.integers(0, size[q], k[q]) for q in range(p1 - p0)
                                      if size[q] > 1 and k[q]])
            draw[multi] = got
        partner[idx[by_pool]] = pool_order[pool_start[p0 + j[by_pool]] + draw]
    return partner


def make_plan(kind: str, strata: np.ndarray, seed: int, epoch: int, bias: np.ndarray | None = None,
              shuffle: bool = True) -> InterventionPlan:
    """The plan of `kind` for one epoch over samples with the given strata (and bias)."""
    if kind not in PLANS:
        raise ValueError(f"intervention plan must be one of {', '.join(PLANS)}, got {kind!r}")
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
