"""Confounders Z [K, Dz] and their prior P(z) [K] for the causal multi-label model.

The confounder dictionary stands for the contexts that make labels co-occur; the intervention
(``kernels.causal_attention``) averages over it with the prior, E_z[.] = sum_z P(z) (.), the
backdoor adjustment P(Y | do(X)) = sum_z P(Y | X, z) P(z). Sources (the paper's ablation):

- ``kmeans``: k-means over the projected spatial features (tokens) of the training set; P(z) =
  cluster frequency. The default. With the model's ``confounder_net`` (the paper's construction),
  k-means runs over the last spatial map of that separate, pre-trained and frozen network instead.
- ``early``:  the same k-means over an early stage's spatial features (stage 1 of the backbone).
- ``label``:  one prototype per class, the mean label-specific feature over the images holding
  that class; P(z) = class frequency.
- ``random``: fixed random vectors (seeded) with a uniform prior.

k-means is distributed and deterministic given the seed, whatever the number of processes: each
rank holds its shard of tokens; the k-means++ initial centers are drawn from a candidate pool that
does not depend on the sharding (the tokens with the smallest hashes of their global ids, gathered
from all ranks); each Lloyd step assigns locally and all-reduces per-cluster sums (float64) and
counts. The dictionary lives in buffers, so checkpoints carry it.

When the batches come from a pipeline over data whose strata hold a visible context (the scene style S
of ``data.synthetic_scenes``), fitting prints how well the clusters recover it: the normalised mutual
information of each token's cluster with its image's stratum (and of each image's most frequent
cluster), beside the same for random confounders (seeded Gaussian vectors, nearest-vector assignment).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import CONFOUNDER_SOURCES
from ..errors import ConfigError
from ..utils import print0


class ConfounderBank(nn.Module):
    """Buffers z (K, Dz), prior (K,), fitted (); saved with the model's state dict."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        if num < 1 or dim < 1:
            raise ValueError(f"a confounder bank needs num >= 1 and dim >= 1, got {num} x {dim}")
        self.register_buffer("z", torch.zeros(num, dim))
        self.register_buffer("prior", torch.full((num,), 1.0 / num))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def num(self) -> int:
        return self.z.shape[0]

    @torch.no_grad()
    def set(self, z: torch.Tensor, prior: torch.Tensor) -> None:
        if tuple(z.shape) != tuple(self.z.shape) or tuple(prior.shape) != tuple(self.prior.shape):
            raise ValueError(f"confounders must be {tuple(self.z.shape)} with prior {tuple(self.prior.shape)}, "
                             f"got {tuple(z.shape)} and {tuple(prior.shape)}")
        self.z.copy_(z)
        self.prior.copy_(prior / prior.sum().clamp_min(1e-12))
        self.fitted.fill_(True)


# ---------------------------------------------------------------------------------------------
# deterministic hashing of global ids (numpy uint64: wrap-around and logical shifts are defined)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_ids(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """int64 ids -> non-negative int64 keys, a fixed pseudo-random function of (seed, id)."""
    a = ids.detach().cpu().numpy().astype(np.uint64)
    s = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))
    h = _mix64(a ^ s) >> np.uint64(1)
    return torch.from_numpy(h.astype(np.int64)).to(ids.device)


# ---------------------------------------------------------------------------------------------
# k-means


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _world() > 1:
        dist.all_reduce(t)
    return t


def _candidate_pool(x: torch.Tensor, keys: torch.Tensor, pool: int) -> torch.Tensor:
    """The `pool` tokens with the smallest keys over all ranks, in key order (independent of sharding)."""
    d = x.shape[1]
    order = torch.argsort(keys)[:pool]
    k_loc = torch.full((pool,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=x.device)
    f_loc = torch.zeros(pool, d, dtype=x.dtype, device=x.device)
    k_loc[:len(order)] = keys[order]
    f_loc[:len(order)] = x[order]
    world = _world()
    if world > 1:
        ks = [torch.empty_like(k_loc) for _ in range(world)]
        fs = [torch.empty_like(f_loc) for _ in range(world)]
        dist.all_gather(ks, k_loc)
        dist.all_gather(fs, f_loc)
        k_loc, f_loc = torch.cat(ks), torch.cat(fs)
    valid = k_loc != torch.iinfo(torch.int64).max
    k_loc, f_loc = k_loc[valid], f_loc[valid]
    order = torch.argsort(k_loc, stable=True)[:pool]
    return f_loc[order]


def kmeans_pp(points: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Greedy k-means++ seeding of `points` (M, D), float64 on the CPU.

    Arthur & Vassilvitskii (2007) with scikit-learn's greedy refinement: each step draws
    2 + log(k) candidates by D^2 sampling and keeps the one that lowers the potential most.
    """
    x = points.detach().to("cpu", torch.float64)
    m = x.shape[0]
    if m < k:
        raise ConfigError(f"k-means: {k} clusters asked for but only {m} points to cluster (lower "
                          f"model.num_confounders or raise model.confounder_tokens)")
    g = torch.Generator().manual_seed(int(seed))
    trials = 2 + int(math.log(k))
    centers = torch.empty(k, x.shape[1], dtype=torch.float64)
    centers[0] = x[int(torch.randint(m, (1,), generator=g))]
    d2 = ((x - centers[0]) ** 2).sum(1)  # (M,) squared distance to the nearest center so far
    for c in range(1, k):
        total = float(d2.sum())
        if total <= 0:  # fewer distinct points than clusters: repeat the last center
            centers[c:] = centers[c - 1]
            break
        cand = torch.multinomial(d2 / total, trials, replacement=True, generator=g)  # (L,)
        cand_d2 = torch.minimum(d2[None], torch.cdist(x[cand], x) ** 2)  # (L, M)
        best = int(cand_d2.sum(1).argmin())
        centers[c] = x[cand[best]]
        d2 = cand_d2[best]
    return centers


def nearest_center(x: torch.Tensor, centers: torch.Tensor, chunk: int = 65536) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest center of every row of x (N, D): (index (N,), squared distance (N,))."""
    c = centers.to(x.dtype)
    cn = (c * c).sum(1)
    idx, dmin = [], []
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        d = (xs * xs).sum(1, keepdim=True) - 2 * xs @ c.T + cn  # (n, K)
        v, i = d.min(1)
        idx.append(i)
        dmin.append(v.clamp_min(0))
    if not idx:
        return torch.zeros(0, dtype=torch.long, device=x.device), torch.zeros(0, device=x.device)
    return torch.cat(idx), torch.cat(dmin)


@torch.no_grad()
def kmeans(x: torch.Tensor, ids: torch.Tensor, k: int, iters: int = 20, seed: int = 0,
           init_pool: int = 16384, tol: float = 1e-7) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """Distributed k-means over this rank's rows of x (N, D) with global ids (N,).

    Returns (centers (K, D) float32, counts (K,) float64, inertia), identical on every rank and the
    same for any sharding of the rows over ranks (up to float64 summation order). Empty clusters
    keep their previous center.
    """
    if x.dim() != 2 or ids.shape != (x.shape[0],):
        raise ValueError(f"k-means: x must be (N, D) with ids (N,), got {tuple(x.shape)} and {tuple(ids.shape)}")
    if k < 1:
        raise ValueError(f"k-means: k must be positive, got {k}")
    x = x.float()
    pool = _candidate_pool(x, hash_ids(ids, seed), max(init_pool, k))
    centers = kmeans_pp(pool, k, seed).to(x.device)  # (K, D) float64, identical on every rank
    counts = torch.zeros(k, dtype=torch.float64, device=x.device)
    inertia = 0.0
    for _ in range(max(iters, 1)):
        assign, d2 = nearest_center(x, centers.float())
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
        sums.index_add_(0, assign, x.double())
        stats = torch.cat([sums, torch.bincount(assign, minlength=k).double()[:, None],
                           torch.zeros(k, 1, dtype=torch.float64, device=x.device)], 1)
        stats[0, -1] = d2.double().sum()
        _all_reduce(stats)  # one collective per iteration: sums, counts, inertia
        sums, counts, inertia = stats[:, :-2], stats[:, -2], float(stats[0, -1])  # host sync: once per iteration
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        shift = float(((new - centers) ** 2).sum(1).max())
        centers = new
        if shift <= tol:
            break
    assign, _ = nearest_center(x, centers.float())
    counts = _all_reduce(torch.bincount(assign, minlength=k).double())
    return centers.float(), counts, inertia


# ---------------------------------------------------------------------------------------------
# how well clusters recover a known context (the scene check)


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information of two labelings (arithmetic mean of the entropies, as
    scikit-learn's default); 1 when either determines the other, ~0 when independent."""
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"nmi: two labelings of the same length needed, got {a.shape} and {b.shape}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / a.size
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha, hb = float(-(pa * np.log(pa)).sum()), float(-(pb * np.log(pb)).sum())
    if ha + hb == 0:
        return 1.0
    return max(0.0, 2 * mi / (ha + hb))


def scene_nmi(assign: torch.Tensor, image: torch.Tensor, strata: np.ndarray, k: int) -> Dict[str, float]:
    """Cluster of each token (N,), its image's index (N,), the images' strata: NMI of the tokens'
    clusters with their images' strata, and of each image's most frequent cluster with its stratum."""
    a, img = assign.cpu().numpy(), image.cpu().numpy()
    s = np.asarray(strata)[img]
    ids, inv = np.unique(img, return_inverse=True)
    hist = np.zeros((len(ids), k))
    np.add.at(hist, (inv, a), 1)
    return {"tokens": nmi(a, s), "images": nmi(hist.argmax(1), np.asarray(strata)[ids])}


def random_confounders(shape: Tuple[int, int], seed: int) -> torch.Tensor:
    """The ``random`` source's dictionary (K, Dz): seeded Gaussian vectors."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))


def _strata_of(batches) -> Optional[np.ndarray]:
    """The strata of the samples a pipeline iterates, when they are a real partition (> 1 value)."""
    samples = getattr(batches, "samples", None)
    strata = getattr(samples, "strata", None)
    if strata is None or len(np.unique(strata)) < 2:
        return None
    return np.asarray(strata)


# ---------------------------------------------------------------------------------------------
# fitting a model's confounders over a pipeline


def select_tokens(tokens: torch.Tensor, index: torch.Tensor, per_image: int, seed: int
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded subset of `per_image` tokens of each image: (B*t, D) and their global ids.

    tokens (B, T, D); index (B,) global sample ids. Token t of sample g has global id g*T + t.
    """
    b, t, d = tokens.shape
    gid = index.to(tokens.device).long()[:, None] * t + torch.arange(t, device=tokens.device)  # (B, T)
    if per_image <= 0 or per_image >= t:
        return tokens.reshape(b * t, d), gid.reshape(-1)
    keys = hash_ids(gid.reshape(-1), seed ^ 0x70CE).view(b, t)
    pick = torch.argsort(keys, dim=1)[:, :per_image]  # (B, t')
    sel = torch.gather(tokens, 1, pick[..., None].expand(-1, -1, d))
    return sel.reshape(-1, d), torch.gather(gid, 1, pick).reshape(-1)


@torch.no_grad()
def fit_confounders(model: nn.Module, batches: Iterable[Dict[str, torch.Tensor]], *, seed: int = 0,
                    iters: int = 20, tokens_per_image: int = 16, init_pool: int = 16384,
                    num_classes: Optional[int] = None) -> Dict[str, float]:
    """Fill ``model.confounders`` from its ``confounder_source`` over this rank's training batches.

    ``batches``: composed evaluation batches (``image``, ``label``, ``index``) of the training set,
    every rank its own shard (a pipeline with train=False). The model must provide
    ``confounder_tokens(x) -> (B, T, Dz)`` and ``label_features(x) -> (B, C, D)``.
    """
    source = model.confounder_source
    bank: ConfounderBank = model.confounders
    was_training = model.training
    model.eval()
    k = bank.num
    try:
        if source == "random":
            z = random_confounders(tuple(bank.z.shape), seed)
            bank.set(z.to(bank.z.device), torch.full((k,), 1.0 / k, device=bank.z.device))
            return {"confounders": float(k), "inertia": float("nan")}
        if source == "label":
            sums = counts = None
            for batch in batches:
                f = model.label_features(batch.image).double()  # (B, C, D)
                y = batch.label.to(f.device)
                y = y.double() if y.dim() == 2 else nn.functional.one_hot(y, f.shape[1]).double()
                s = torch.einsum("bc,bcd->cd", y, f)
                sums = s if sums is None else sums + s
                counts = y.sum(0) if counts is None else counts + y.sum(0)
            if sums is None:
                raise ValueError("confounders (label): no training batches on this rank")
            stats = _all_reduce(torch.cat([sums, counts[:, None]], 1))
            sums, counts = stats[:, :-1], stats[:, -1]
            z = sums / counts.clamp_min(1)[:, None]
            bank.set(z.float(), counts.float().clamp_min(1e-6))
            return {"confounders": float(k), "inertia": float("nan")}
        if source not in ("kmeans", "early"):
            raise ValueError(f"confounder source must be one of {', '.join(CONFOUNDER_SOURCES)}, got {source!r}")
        feats, ids = [], []
        per_sample = 1
        for batch in batches:
            tok = model.confounder_tokens(batch.image)  # (B, T, Dz)
            per_sample = tok.shape[1]  # token t of sample g has global id g * T + t
            f, i = select_tokens(tok.float(), batch.index, tokens_per_image, seed)
            feats.append(f)
            ids.append(i)
        if not feats:
            raise ValueError("confounders (k-means): no training batches on this rank")
        x, gid = torch.cat(feats), torch.cat(ids)
        centers, counts, inertia = kmeans(x, gid, k, iters, seed, init_pool)
        bank.set(centers.to(bank.z.device), counts.float().to(bank.z.device).clamp_min(1e-6))
        stats = {"confounders": float(k), "inertia": inertia, "tokens": float(counts.sum())}
        strata = _strata_of(batches)
        if strata is not None:  # the check: do the clusters recover the visible context (this rank's tokens)?
            image = gid // per_sample
            got = scene_nmi(nearest_center(x, centers.to(x.device))[0], image, strata, k)
            rnd = scene_nmi(nearest_center(x, random_confounders(tuple(centers.shape), seed).to(x.device))[0],
                            image, strata, k)
            stats.update(nmi_tokens=got["tokens"], nmi_images=got["images"], nmi_tokens_random=rnd["tokens"],
                         nmi_images_random=rnd["images"])
            print0(f"confounders vs the data's strata (scene S): NMI {got['tokens']:.3f} over tokens, "
                   f"{got['images']:.3f} over images (each image's most frequent cluster); random confounders "
                   f"{rnd['tokens']:.3f} / {rnd['images']:.3f}")
        return stats
    finally:
        model.train(was_training)
