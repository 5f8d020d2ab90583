"""Multi-label diagnostics of the causal model (Chen et al., NeurIPS 2024): what the intervention sees.

- ``embedding_figure``: a 2-D embedding (PCA, or t-SNE) of the confounder prototypes Z and the
  label-specific features X[b, c] of test images (the paper's t-SNE figure: with the intervention,
  label features should separate from each other and from the confounders). Features of labels
  present in the image are coloured by class; confounders are black stars sized by their prior P(z).
  Both live in the model's D-dim feature space when Z does (``kmeans``, ``label``, ``random``
  confounders); for ``early`` confounders (another width) the embedding is of the attention space
  instead: the queries q(X) and keys k(Z) whose dot products weigh the confounders.
- ``attention_figure``: the confounder attention of each label, softmax_z(q(X_c) . k(z)) of the
  intervention (``kernels.causal_attention(..., return_attn=True)``), averaged over heads and test
  images: a C x K heat-map of which contexts each class attends to; beside it the same average over
  the images that hold the class.

- ``intervention_probes``: whether the intervention acts, in numbers: the norm of the intervention
  term against the label feature's (``norm_ratio``: ||o(E_i)|| / ||X_i|| of the residual reading, and for
  vcrcnn ||W_E E_i|| / ||W_X X_i||, the two parts of branch 2's first layer over [X_i ; E_i]; ``input_ratio``:
  ||E_i|| / ||X_i|| as fed), how much the term varies across images against the feature
  (``spread_ratio``), the attention's entropy over the K confounders / log K (``entropy``: 1 = uniform),
  and branch 2's share of the merged logits (``branch2_share``: mean |logits2| / mean |logits1|). The
  training loop writes them into results.json (``intervention``) and ``cit-fast report`` prints them.

``run_diagnostics(checkpoint, out_dir)`` renders both PNGs for a ``causal_*`` checkpoint (only the
embedding, without confounders, for a ``decoder_*`` baseline); ``cit-fast report`` and
``cit-fast explain --diagnostics`` call it.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import yaml

from ..errors import UsageError
from ..kernels import causal_attention
from ..models import list_models
from ..utils import atomic_path
from .collect import collect_outputs
from .run import load_run

EMBEDDINGS = ("pca", "tsne")
SPACES = ("attention", "features")


def is_label_feature_model(model: torch.nn.Module) -> bool:
    """A multi-label transformer model (``causal_*`` / ``decoder_*``): it has label-specific features."""
    return hasattr(model, "label_features") and hasattr(model, "causal")


def run_is_multilabel_transformer(run: Path) -> bool:
    """From a run directory's config.yaml, without loading anything heavy."""
    cfg = run / "config.yaml"
    if not cfg.is_file():
        return False
    name = (yaml.safe_load(cfg.read_text()) or {}).get("model", {}).get("name", "")
    return name.startswith(("causal_", "decoder_")) and name in list_models()


@torch.no_grad()
def attention_probs(model: torch.nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """Label features X (B, C, D) -> the intervention's attention over the confounders (B, H, C, K)."""
    return model.intervene(feats, return_attn=True)[1]


def collect(model: torch.nn.Module, batches) -> Dict[str, np.ndarray]:
    """Over composed evaluation batches (all ranks, sample order): features (N, C, D), targets (N, C),
    queries q(X) (N, C, D) and, for a causal model, attention (N, C, K) (mean over heads)."""

    def outputs(batch):
        f = model.label_features(batch.image)  # (B, C, D)
        out = {"features": f, "targets": batch.label.float()}
        if model.causal:
            out.update(queries=model.q_proj(f), attention=attention_probs(model, f).float().mean(1))  # (B, C, K)
        return out

    try:
        return collect_outputs(model, batches, outputs)
    except ValueError:
        raise UsageError("diagnostics: no test batches") from None


def _norm_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean ||a|| / mean ||b|| over all rows (..., D)."""
    return float(a.norm(dim=-1).mean() / b.norm(dim=-1).mean().clamp_min(1e-12))


def _spread(t: torch.Tensor) -> torch.Tensor:
    """(N, C, D) -> (C,): the size of each label's vector's variation across the N images."""
    return t.var(0, unbiased=False).sum(-1).sqrt()


@torch.no_grad()
def intervention_probes(model: torch.nn.Module, feats: torch.Tensor) -> Dict[str, float]:
    """Label features X (N, C, D) of test images -> the probes of the module doc (an empty dict for a
    model without an intervention)."""
    if not getattr(model, "causal", False):
        return {}
    feats = feats.float()
    if getattr(model, "intervention", "residual") in ("vcrcnn", "vcrcnn_own"):
        e, attn = model.expected_confounder(feats, return_attn=True)  # (N, C, Dz), (N, 1, C, K)
        d = feats.shape[-1]
        w = model.branch2.weight.float()
        xpart, epart = feats @ w[:, :d].T, e @ w[:, d:].T  # branch 2's first layer, split by its input
        inp = _norm_ratio(e, feats)
    else:
        h, attn = model.intervene(feats, return_attn=True)
        z = model.confounders.z.float()
        e = causal_attention(model.q_proj(feats), model.k_proj(z), model.v_proj(z), model.confounders.prior.float(),
                             model.num_heads)
        xpart, epart = feats, model.out_proj(e)  # H = LN(X + o(E))
        inp = _norm_ratio(e, feats)
    a = attn.float().clamp_min(1e-30)
    k = a.shape[-1]
    entropy = float((-(a * a.log()).sum(-1)).mean() / math.log(k)) if k > 1 else 1.0
    was = model.training
    model.eval()
    try:
        heads = model.heads_of(feats)
    finally:
        model.train(was)
    logits1, logits2 = heads["logits1"], heads["logits2"]
    out = {"norm_ratio": _norm_ratio(epart, xpart), "input_ratio": inp,
           "spread_ratio": float((_spread(epart) / _spread(xpart).clamp_min(1e-12)).mean()),
           "entropy": entropy, "confounders": float(k), "images": float(len(feats))}
    out["branch2_share"] = float(logits2.abs().mean() / logits1.abs().mean().clamp_min(1e-12))
    return out


def probes_line(p: Dict[str, float]) -> str:
    """One line of the probes for a log."""
    if not p:
        return ""
    return (f"intervention probes ({int(p['images'])} test images): |E-part| / |x-part| {p['norm_ratio']:.3f} "
            f"(as fed: {p['input_ratio']:.3f}), across-image spread ratio {p['spread_ratio']:.3f}, attention "
            f"entropy {p['entropy']:.3f} of log K (K = {int(p['confounders'])})"
            + f", |logits2| / |logits1| {p['branch2_share']:.3f}")


def probe_batches(model: torch.nn.Module, batches, max_images: int = 512) -> Dict[str, float]:
    """The probes over (up to ``max_images`` of) a pipeline's composed batches."""
    if not getattr(model, "causal", False):
        return {}
    feats, n = [], 0
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                feats.append(model.label_features(batch.image).float())
                n += len(feats[-1])
                if n >= max_images:
                    break
    finally:
        model.train(was)
    if not feats:
        return {}
    return intervention_probes(model, torch.cat(feats)[:max_images])


def confounder_points(model: torch.nn.Module, space: str) -> np.ndarray:
    """Z (K, Dz) in the feature space, or k(Z) (K, D) in the attention space."""
    z = model.confounders.z.detach().float()
    with torch.no_grad():
        return (model.k_proj(z) if space == "attention" else z).cpu().numpy()


def embed_2d(points: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(M, D) -> (M, 2) by scikit-learn's PCA or t-SNE (perplexity capped for small M)."""
    if method not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}, got {method!r}")
    x = np.asarray(points, np.float64)
    if len(x) < 3:
        raise ValueError(f"embedding: need at least 3 points, got {len(x)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(x)


def _png(fig, out: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return data


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def embedding_figure(diag: Dict[str, np.ndarray], classes: Sequence[str], out: Path,
                     confounders: Optional[np.ndarray] = None, prior: Optional[np.ndarray] = None,
                     method: str = "pca", space: str = "features", show: Optional[Sequence[str]] = None,
                     max_classes: int = 10, seed: int = 0, title: str = "") -> bytes:
    """Scatter of the positive labels' features (coloured by class) and the confounders (stars).

    show: class names to plot (default: the ``max_classes`` classes with most positives).
    """
    plt = _plt()
    feats = diag["queries"] if space == "attention" else diag["features"]  # (N, C, D)
    y = diag["targets"] > 0
    counts = y.sum(0)
    if show is not None:
        unknown = [c for c in show if c not in classes]
        if unknown:
            raise ValueError(f"embedding: class(es) {unknown} are not among the model's classes")
        chosen = [list(classes).index(c) for c in show]
    else:
        chosen = [int(j) for j in np.argsort(-counts, kind="stable")[:max_classes] if counts[j] > 0]
    rows, cols = np.nonzero(y[:, chosen])
    pts = feats[rows, np.asarray(chosen)[cols]] if len(rows) else np.zeros((0, feats.shape[-1]))
    k = 0 if confounders is None else len(confounders)
    allp = np.concatenate([pts] + ([confounders] if k else []), 0)
    xy = embed_2d(allp, method, seed)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    cmap = plt.get_cmap("tab10" if len(chosen) <= 10 else "tab20")
    for i, j in enumerate(chosen):
        sel = cols == i
        ax.scatter(xy[:len(pts)][sel, 0], xy[:len(pts)][sel, 1], s=10, alpha=0.7, color=cmap(i % cmap.N),
                   label=f"{classes[j]} ({int(sel.sum())})")
    if k:
        p = np.full(k, 1.0 / k) if prior is None else np.asarray(prior, np.float64)
        zxy = xy[len(pts):]
        ax.scatter(zxy[:, 0], zxy[:, 1], marker="*", s=60 + 600 * p, color="k", edgecolor="w", linewidth=0.6,
                   label=f"confounders ({k})", zorder=3)
        for i, (a, b) in enumerate(zxy):
            ax.annotate(f"z{i}", (a, b), xytext=(3, 3), textcoords="offset points", fontsize=7)
    what = "q(X), k(Z): attention space" if space == "attention" else "label features X and confounders Z"
    ax.set(title=title or f"{method.upper()} of {what}", xlabel=f"{method} 1", ylabel=f"{method} 2")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", markerscale=1.5)
    data = _png(fig, out)
    plt.close(fig)
    return data


def attention_figure(diag: Dict[str, np.ndarray], classes: Sequence[str], out: Path,
                     prior: Optional[np.ndarray] = None) -> bytes:
    """C x K heat-maps of the mean confounder attention of every label: over all test images, and
    over the images that hold the label."""
    plt = _plt()
    attn = diag["attention"]  # (N, C, K)
    y = diag["targets"] > 0
    c, k = attn.shape[1:]
    mean_all = attn.mean(0)
    pos = y.sum(0)
    mean_pos = np.where(pos[:, None] > 0, (attn * y[..., None]).sum(0) / np.maximum(pos, 1)[:, None], np.nan)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.9 * max(k, 4), 1.6 + 0.28 * c), squeeze=False)
    vals = np.concatenate([mean_all.ravel(), mean_pos[~np.isnan(mean_pos)]])
    lo, hi = float(vals.min()), float(vals.max())  # a near-uniform attention still shows its structure
    xt = [f"z{i}" + (f"\n{prior[i]:.2f}" if prior is not None else "") for i in range(k)]
    for ax, m, title in ((axes[0, 0], mean_all, "all test images"), (axes[0, 1], mean_pos, "images with the label")):
        im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
        ax.set_yticks(range(c), [f"{n} ({int(p)})" if m is mean_pos else n for n, p in zip(classes, pos)], fontsize=7)
        ax.set_xticks(range(k), xt, fontsize=6)
        ax.set(title=title, xlabel="confounder z" + (" / prior P(z)" if prior is not None else ""))
    fig.suptitle(f"confounder attention of each label (uniform = {1 / k:.3f})", fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="attention (mean over heads)")
    data = _png(fig, out)
    plt.close(fig)
    return data


def run_diagnostics(checkpoint, out_dir, overrides: Sequence[str] = (), method: str = "pca",
                    max_images: int = 256, show: Optional[Sequence[str]] = None, prefix: str = "",
                    space: str = "attention") -> Dict[str, Path]:
    """Render ``{prefix}embedding.png`` and (causal models) ``{prefix}confounder_attention.png``."""
    if method not in EMBEDDINGS:
        raise UsageError(f"embedding must be one of {', '.join(EMBEDDINGS)}, got {method!r}")
    run = load_run(checkpoint, overrides)
    model, cfg, train_set, test_set = run.model, run.cfg, run.train_set, run.test_set
    if not is_label_feature_model(model):
        raise UsageError(f"--diagnostics needs a multi-label transformer model (causal_* or decoder_*), "
                         f"not {cfg.model.name}")
    if not test_set.multilabel:
        raise UsageError(f"{test_set.name}: diagnostics need multi-hot test labels")
    sub = test_set.subset(np.arange(min(len(test_set), max_images)))
    diag = collect(model, run.pipeline(sub))
    classes = train_set.classes
    out_dir = Path(out_dir)
    paths: Dict[str, Path] = {}
    name = f"{cfg.model.name}, {len(sub)} test images"
    if model.causal:
        if space not in SPACES:
            raise ValueError(f"embedding space must be one of {', '.join(SPACES)}, got {space!r}")
        if space == "features" and model.confounders.z.shape[1] != diag["features"].shape[-1]:
            space = "attention"  # `early` confounders have another width than the label features
        prior = model.confounders.prior.detach().cpu().numpy()
        paths["embedding"] = out_dir / f"{prefix}embedding.png"
        embedding_figure(diag, classes, paths["embedding"], confounder_points(model, space), prior, method, space,
                         show, seed=cfg.seed, title=f"{method.upper()}: label features and confounders ({name})")
        paths["attention"] = out_dir / f"{prefix}confounder_attention.png"
        attention_figure(diag, classes, paths["attention"], prior)
    else:
        paths["embedding"] = out_dir / f"{prefix}embedding.png"
        embedding_figure(diag, classes, paths["embedding"], method=method, show=show, seed=cfg.seed,
                         title=f"{method.upper()}: label features ({name}; no confounders)")
    return paths
