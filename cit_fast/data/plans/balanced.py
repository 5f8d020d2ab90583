"""Decode reuse: training batches in which every sample's context partner sits in the same batch.

With ``data.decode_reuse`` a batch is built from groups of samples of one stratum and each sample's
partner is drawn inside its group, so every image of the batch is decoded once and serves both as
an object and as a context: half the decode work of independent partners.

The partner distribution over an epoch stays that of ``stratify_c`` (Eq. 10): for a sample i of
stratum s with n_s members, P(partner = j | i) = 1/n_s for every j in s, i itself included.
Why: each stratum is walked in a uniformly random order and how many samples a batch takes from a
stratum depends only on counts, never on which samples, so the other members of i's group are a
uniformly random subset of s minus i. Picking i itself with probability 1/n_s and otherwise a
uniform other member of the group gives every other j the probability (1 - 1/n_s)/(n_s - 1) = 1/n_s.
The joint distribution differs (partners of one batch are drawn from the same few samples); only
the per-sample marginal is kept.

Batch filling, vectorised (no loop over samples, strata or batches; O(N log N) for ImageNet-21k):
each stratum's random walk is cut, by its size alone, into pairs and triples (an odd stratum
needs one triple; a stratum of one sample is a unit of one, its own partner as in stratify_c).
A batch of even size is pairs plus, spread evenly over the batches, "double units" (two triples,
or a triple and a single, or two singles, drawn in a random order); a batch of odd size is one
triple (or single) plus pairs (plus double units, when it is large), strata getting extra triples
in proportion to their sizes so that every batch has one. Pairs are drawn in a random order, so
batches mix strata like a shuffled epoch, and every stratum present in a batch has at least two
members there. Samples that cannot complete a batch on every rank sit out the epoch, as the tail
of a training epoch always does (which ones: a uniformly random choice inside each stratum); each
sample is used at most once per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np

from . import draws
from .intervention import InterventionPlan, dense_groups, make_plan, stable_order
from ..sources.records import DataError
from ..spec import REUSE_PLANS  # the plans data.decode_reuse works with: stated with the data rules


@dataclass(frozen=True)
class BalancedPlan(InterventionPlan):
    """An InterventionPlan whose shards are whole batches built for one (batch_size, world_size).

    ``order`` lays the used samples out so that ``InterventionPlan.shard`` hands batch b of rank r
    the samples of global batch b * world_size + r; the unused samples follow and are cut off.
    """

    batch_size: int = 1
    world_size: int = 1
    batches_per_rank: int = 0

    def shard(self, rank: int, world_size: int) -> np.ndarray:
        if world_size != self.world_size:
            raise ValueError(f"this decode-reuse plan was built for world_size={self.world_size}, "
                             f"asked for a shard of world_size={world_size}")
        return super().shard(rank, world_size)[: self.batches_per_rank * self.batch_size]


def _spread(total: int, parts: int) -> np.ndarray:
    """``total`` items over ``parts`` as evenly as possible, in order: (parts,) counts."""
    edges = np.arange(parts + 1, dtype=np.int64) * total // max(parts, 1)
    return np.diff(edges)


def _allocate(room: np.ndarray, want: int) -> np.ndarray:
    """``want`` items over slots holding ``room`` each, in proportion to the room (largest
    remainders, ties to the lower slot); all the room if it is not enough."""
    total = int(room.sum())
    if want <= 0:
        return np.zeros_like(room)
    if want >= total:
        return room.copy()
    share = room * (want / total)
    got = np.floor(share).astype(np.int64)
    rest = want - int(got.sum())
    got[np.argsort(got - share, kind="stable")[:rest]] += 1
    return np.minimum(got, room)


def _unit_starts(first: np.ndarray, units: np.ndarray, size: int, skip: np.ndarray) -> np.ndarray:
    """Walk positions of the ``units[s]`` units of ``size`` samples that stratum s (which starts at
    ``first[s]`` in the walk) lays out after its first ``skip[s]`` samples."""
    s = np.repeat(np.arange(len(units)), units)
    k = np.arange(len(s)) - np.repeat(np.cumsum(units) - units, units)
    return first[s] + skip[s] + size * k


def _ranges(start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """start[0], ..., start[0] + size[0] - 1, start[1], ...: the positions of units, in order."""
    return np.repeat(start - (np.cumsum(size) - size), size) + np.arange(int(size.sum()))


def _fill_batches(counts: np.ndarray, batch_size: int, world_size: int,
                  stream: Callable[[int], int]) -> Tuple[np.ndarray, int]:
    """Positions in the strata-major walk of the epoch's batches, batch after batch.

    Returns (positions (n_batches * batch_size,), n_batches), n_batches a multiple of world_size. Only the counts and the draws (``stream(j)``: the key of stream j) decide
    (see the module doc for why that keeps the stratify_c marginal). Units: pairs and triples of
    one stratum, singles (strata of one sample). A batch is its own odd unit (odd batch sizes
    only), double units (two odd units), then pairs.
    """
    bs = batch_size
    odd_bs = bs % 2
    room = bs - 3 * odd_bs  # what a batch has besides its own odd unit
    n = int(counts.sum())
    first = np.cumsum(counts) - counts
    multi, single = counts >= 2, counts == 1
    # triples per stratum: t = c (mod 2), 3t <= c; none if no batch could hold one (size 2)
    t = (multi & (counts % 2 == 1)).astype(np.int64) if (odd_bs or bs >= 4) else np.zeros_like(counts)
    if odd_bs:  # every batch needs an odd unit: strata take two more triples at a time
        most = counts // 3 - (counts // 3 - counts) % 2
        short = n // bs - int(single.sum()) - int(t.sum())
        t = t + 2 * _allocate(np.where(multi, (most - t) // 2, 0), -(-short // 2))
    n_pairs = np.where(multi, (counts - 3 * t) // 2, 0)

    odd_start = np.concatenate([_unit_starts(first, t, 3, np.zeros_like(t)), first[single]])
    odd_size = np.concatenate([np.full(int(t.sum()), 3, np.int64), np.ones(int(single.sum()), np.int64)])
    shuffle = draws.permutation(stream(1), len(odd_start))
    odd_start, odd_size = odd_start[shuffle], odd_size[shuffle]
    n_max = min(len(odd_start), n // bs) if odd_bs else n // bs  # batches there could be
    own = n_max if odd_bs else 0  # the first odd units are batches' own
    rest_start, rest_size = odd_start[own:], odd_size[own:]
    k = len(rest_start) // 2 * 2  # the rest pair up into double units (an odd one out sits out)
    dbl_start = rest_start[:k].reshape(-1, 2)
    dbl_size = rest_size[:k].reshape(-1, 2)
    fits = dbl_size.sum(1) <= room
    # a double unit no batch can hold gives its triples' first two samples to the pairs
    broken = dbl_start[~fits][dbl_size[~fits] == 3]
    pair_start = np.concatenate([_unit_starts(first, n_pairs, 2, 3 * t), broken])
    pair_start = pair_start[draws.permutation(stream(2), len(pair_start))]
    dbl_start, dbl_size = dbl_start[fits], dbl_size[fits]
    per_batch = room // 6 if room >= 6 else int(room >= 2)  # double units a batch may hold

    # the most batches the pairs complete (the pairs a batch needs are >= 0: monotone in batches)
    nb = np.arange(n_max + 1)
    own_sum = np.concatenate([[0], np.cumsum(odd_size[:own])])[np.minimum(nb, own)]
    n_dbl = np.minimum(len(dbl_size), nb * per_batch)
    dbl_cum = np.concatenate([[0], np.cumsum(dbl_size.sum(1))])
    need = (nb * bs - own_sum - dbl_cum[n_dbl]) // 2
    n_batches = int(nb[need <= len(pair_start)].max()) // world_size * world_size
    if n_batches == 0:
        return np.zeros(0, np.int64), 0

    b = np.arange(n_batches)
    dbl_per = _spread(int(n_dbl[n_batches]), n_batches)  # double units of each batch
    dbl_end = np.cumsum(dbl_per)
    own_size = odd_size[:n_batches] if odd_bs else np.zeros(n_batches, np.int64)
    pairs_per = (bs - own_size - (dbl_cum[dbl_end] - dbl_cum[dbl_end - dbl_per])) // 2
    m, p = int(dbl_end[-1]), int(pairs_per.sum())
    u_start = np.concatenate([odd_start[:n_batches] if odd_bs else b[:0], dbl_start[:m].reshape(-1),
                              pair_start[:p]])
    u_size = np.concatenate([own_size if odd_bs else b[:0], dbl_size[:m].reshape(-1), np.full(p, 2, np.int64)])
    u_batch = np.concatenate([b if odd_bs else b[:0], np.repeat(b, 2 * dbl_per), np.repeat(b, pairs_per)])
    u_batch = draws.permutation(stream(3), n_batches)[u_batch]  # batches in a random order
    by_batch = stable_order(u_batch, n_batches)
    return _ranges(u_start[by_batch], u_size[by_batch]), n_batches


def make_balanced_plan(kind: str, strata: np.ndarray, seed: int, epoch: int, batch_size: int,
                       world_size: int, bias: Optional[np.ndarray] = None) -> InterventionPlan:
    """The decode-reuse version of plan `kind` for one epoch (see the module doc).

    ``none`` needs nothing special (every partner is the sample itself); ``random`` is
    ``stratify_c`` with a single stratum; ``stratify_b`` draws contexts by a bias value that need
    not be in the batch, so it cannot reuse decodes.
    """
    if kind == "none":
        return make_plan("none", strata, seed, epoch, bias, shuffle=True)
    if kind not in REUSE_PLANS:
        raise ValueError(f"decode reuse works with plans {', '.join(REUSE_PLANS)}, not {kind!r} "
                         f"(its contexts are drawn by bias value, not from the batch)")
    if batch_size < 2:
        raise ValueError(f"decode reuse needs batch_size >= 2 (partners share a batch), got {batch_size}")
    strata = np.asarray(strata, np.int64)
    n = len(strata)
    if n == 0:
        raise DataError("intervention plan: the dataset is empty")
    keys = strata if kind == "stratify_c" else np.zeros(n, np.int64)
    def stream(j: int) -> int:  # the plan's streams of draws: 0xDEC0 + 0..6 (see the uses)
        return draws.key(seed, epoch, 0xDEC0 + j)

    inverse, counts, _ = dense_groups(keys)
    # every stratum's members in a uniformly random order, strata one after another
    shuffled = draws.permutation(stream(0), n)
    walk = shuffled[stable_order(inverse[shuffled], len(counts))]

    slots, n_full = _fill_batches(counts, batch_size, world_size, stream)
    per_rank = n_full // world_size
    n_used = per_rank * world_size * batch_size
    standard = (-(-n // world_size)) // batch_size
    if per_rank == 0 and standard > 0:
        raise DataError(f"decode reuse: cannot fill a batch of {batch_size} from strata of sizes "
                        f"{sorted(set(counts.tolist()))} (every stratum in a batch needs two members); "
                        f"try an even batch size or turn data.decode_reuse off")
    used = walk[slots[:n_used]]  # (n_used,) batch-major

    # partners: inside each (batch, stratum) group, itself with probability 1/n_s, else another member
    batch_of = np.arange(n_used) // batch_size
    stratum = inverse[used]
    by_s = stable_order(stratum, len(counts))
    srt = by_s[stable_order(batch_of[by_s], max(1, n_used // batch_size))]  # by (batch, stratum)
    key_sorted = batch_of[srt] * len(counts) + stratum[srt]
    new_group = np.concatenate([[True], key_sorted[1:] != key_sorted[:-1]]) if n_used else np.zeros(0, bool)
    g_start = np.flatnonzero(new_group)
    g_size = np.diff(np.concatenate([g_start, [n_used]]))
    g = np.empty(n_used, np.int64)
    g[srt] = np.cumsum(new_group) - 1  # group of each used sample
    pos = np.empty(n_used, np.int64)
    pos[srt] = np.arange(n_used) - g_start[g[srt]]
    size = g_size[g]
    n_s = counts[stratum]
    self_pick = (draws.uniform(stream(4), n_used) * n_s < 1) | (size == 1)
    r = draws.below(stream(5), np.maximum(size - 1, 1))  # <= size - 2: one of the others
    r = r + (r >= pos)
    other = used[srt[g_start[g] + np.minimum(r, size - 1)]]
    partner = np.arange(n, dtype=np.int64)
    partner[used] = np.where(self_pick, used, other)

    # shard layout: InterventionPlan.shard gives rank r positions r, r + world, ...; global batch
    # b * world + r is batch b of rank r
    order = np.empty(n, np.int64)  # written in place: one pass (a 14M concatenate + astype took 0.4 s)
    order[:n_used].reshape(per_rank, batch_size, world_size)[...] = \
        used.reshape(per_rank, world_size, batch_size).transpose(0, 2, 1)
    unused = np.ones(n, bool)
    unused[used] = False
    rest = np.flatnonzero(unused)
    order[n_used:] = rest[draws.permutation(stream(6), len(rest))]
    return BalancedPlan(kind, seed, epoch, order, partner, batch_size=batch_size, world_size=world_size,
                        batches_per_rank=per_rank)
