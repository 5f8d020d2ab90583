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

Batch filling: strata are visited in a random order, in proportion to their sizes, and each visit
takes 2 samples (3 when the batch has an odd number of places left; 1 for a stratum of a single
sample, whose partner is always itself), so batches mix strata like a shuffled epoch and every
stratum present in a batch has at least two members there. Samples that cannot complete a batch on
every rank sit out the epoch, as the tail of a training epoch always does; each sample is used at
most once per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .intervention import InterventionPlan, make_plan
from .records import DataError

REUSE_PLANS = ("none", "stratify_c", "random")


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


def _fill_batches(counts: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Take sizes per batch from strata of the given sizes: (stratum, offset in stratum, k) per take.

    Only counts and the rng decide the takes (see the module doc for why that matters).
    """
    n_strata = len(counts)
    takes_s, takes_off, takes_k = [], [], []
    batch_end = []  # number of takes when each batch was completed
    space = batch_size
    cnt = counts.tolist()
    tk = [0] * n_strata
    while True:
        rem = np.array(cnt) - np.array(tk)
        # one ticket per expected take, shuffled: strata visited in proportion to what they have left
        tickets = np.repeat(np.arange(n_strata), np.maximum(rem // 2, (rem > 0) & (counts == 1)))
        if len(tickets) == 0:
            break
        progress = False
        for s in rng.permutation(tickets).tolist():
            r = cnt[s] - tk[s]
            if cnt[s] == 1:  # a stratum of one: a group of one, its partner is itself (as in stratify_c)
                k = 1 if (r == 1 and space != 2) else 0
            else:
                k = 0
                prefs = (3, 2) if space % 2 else (2, 3)
                for relax in (False, True):  # relax: may leave a single sample of the stratum behind
                    for c in prefs:
                        if c <= r and c <= space and space - c != 1 and (relax or r - c != 1):
                            k = c
                            break
                    if k:
                        break
            if not k:
                continue
            takes_s.append(s)
            takes_off.append(tk[s])
            takes_k.append(k)
            tk[s] += k
            space -= k
            progress = True
            if space == 0:
                batch_end.append(len(takes_k))
                space = batch_size
        if not progress:
            break
    n_full = len(batch_end)
    n_takes = batch_end[-1] if n_full else 0
    return (np.asarray(takes_s[:n_takes], np.int64), np.asarray(takes_off[:n_takes], np.int64),
            np.asarray(takes_k[:n_takes], np.int64), n_full)


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
    rng = np.random.default_rng([seed, epoch, 0xDEC0])
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    # every stratum's members in a uniformly random order, strata one after another
    walk = np.lexsort((rng.random(n), inverse))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])

    t_s, t_off, t_k, n_full = _fill_batches(counts, batch_size, rng)
    per_rank = n_full // world_size
    n_used = per_rank * world_size * batch_size
    standard = (-(-n // world_size)) // batch_size
    if per_rank == 0 and standard > 0:
        raise DataError(f"decode reuse: cannot fill a batch of {batch_size} from strata of sizes "
                        f"{sorted(set(counts.tolist()))} (every stratum in a batch needs two members); "
                        f"try an even batch size or turn data.decode_reuse off")
    ends = np.cumsum(t_k)
    take_of = np.repeat(np.arange(len(t_k)), t_k)  # take of each slot
    slot_in_take = np.arange(int(ends[-1]) if len(ends) else 0) - np.repeat(ends - t_k, t_k)
    used = walk[first[t_s][take_of] + t_off[take_of] + slot_in_take][:n_used]  # (n_used,) batch-major

    # partners: inside each (batch, stratum) group, itself with probability 1/n_s, else another member
    batch_of = np.arange(n_used) // batch_size
    group_key = batch_of * len(counts) + inverse[used]
    srt = np.argsort(group_key, kind="stable")
    uk, g_start, g_size = np.unique(group_key[srt], return_index=True, return_counts=True)
    g = np.searchsorted(uk, group_key)
    pos = np.empty(n_used, np.int64)
    pos[srt] = np.arange(n_used) - g_start[g[srt]]
    size = g_size[g]
    n_s = counts[inverse[used]]
    self_pick = (rng.random(n_used) * n_s < 1) | (size == 1)
    r = np.minimum((rng.random(n_used) * np.maximum(size - 1, 1)).astype(np.int64), np.maximum(size - 2, 0))
    r = r + (r >= pos)
    other = used[srt[g_start[g] + np.minimum(r, size - 1)]]
    partner = np.arange(n, dtype=np.int64)
    partner[used] = np.where(self_pick, used, other)

    # shard layout: InterventionPlan.shard gives rank r positions r, r + world, ...; global batch
    # b * world + r is batch b of rank r
    layout = used.reshape(per_rank, world_size, batch_size).transpose(0, 2, 1).reshape(-1)
    rest = np.setdiff1d(np.arange(n), used, assume_unique=False)
    order = np.concatenate([layout, rng.permutation(rest)]).astype(np.int64)
    return BalancedPlan(kind, seed, epoch, order, partner, batch_size=batch_size, world_size=world_size,
                        batches_per_rank=per_rank)
