"""Causal multi-label recognition (Chen et al., NeurIPS 2024), as we read it; no official code exists.

    x -> backbone -> spatial map (B, F, h, w) -> 1x1 proj -> tokens M (B, T, D) (+ 2-D sine positions)
    C learned label queries --TransformerDecoder(M)--> label-specific features X (B, C, D)
    branch 1:  logits1[b, j] = w1_j . X[b, j] + c1_j                       (per-label linear heads)
    intervention (backdoor adjustment over the confounders Z (K, Dz) with prior P(z)):
        E[b, i]  = sum_z softmax_z(q(X_i) . k(z) / sqrt(d)) P(z) v(z)      (kernels.causal_attention)
        H[b, i]  = X[b, i] + o(E[b, i])                                    intervened features ~ do(X_i)
    causal label correlations:  R[b, i, j] = w2_j . H[b, i] + c2_j        effect of category i on j
    branch 2:  logits2[b, j] = sum_i a[b, i] R[b, i, j]
    merged:    sum      -> logits1 + logits2,   a = 1/C (every category's effect counts alike)
               proposed -> logits1 + logits2,   a = softmax_i(logits1[b, :])-like weights: the
                           categories branch 1 sees in the image (sigmoid, normalised) weigh their effect
               linear   -> u_j logits1 + v_j logits2 + e_j, a = 1/C (learned per-class mix)

Two readings of the causal label correlations (``correlation``); the paper (Sec. 3, Fig. 2) says
the causal branch "quantifies the causal influence of each category on every other", illustrated by
P(Y) against P(Y | do(person)):

- ``residual`` (the default): R[b, i, j] = s_j(H_i), s_j(h) = w2_j . h + c2_j, H_i = LN(X_i + o(E_i)):
  j's classifier on i's intervened feature. Nothing compares it with j's own level, and since the
  residual keeps X_i whole, R can learn the co-occurrence itself.
- ``raising`` (the figure read literally): the effect is measured against j's baseline under the
  prior, H_0 = LN(o(E_0)) with E_0 the same attention for a zero query:
      R[b, i, j] = s_j(H_i) - s_j(H_0)              (log-odds raising of j by do(i); c2_j cancels)
      logits2[b, j] = s_j(H_0) + sum_i p[b, i] R[b, i, j],   p = sigmoid(logits1) (merge proposed)
  p is not normalised (normalised, the baseline would cancel and this would equal ``residual``).

The rebuilt branch (``intervention="vcrcnn"``), in the reading of the paper's relatives (VC R-CNN, CCD: a
dictionary built once from a network that is no longer training): Z holds raw k-means prototypes (K, Dz) of
a frozen network's spatial map (``confounder_net``, its architecture ``confounder_backbone``; else the trunk's
own map before training), fitted once, P(z) the cluster frequencies; one attention head in Dz:
    E[b, i]  = K sum_z softmax_z(q(X_i) . k(z) / sqrt(Dz)) P(z) z         (a uniform attention: sum_z P(z) z)
    s_j(u)   = w2_j . relu(W u + w) + c2_j,   u = [X_i detached ; E_i]     (branch 2 cannot write into the
                                                                           trunk, decoder or queries)
    R[b, i, j] = s_j([X_i ; E_i]) - s_j([0 ; E_0]),  R[b, i, i] = 0       (raising against no category acted
                                                                           upon, E_0 = sum_z P(z) z)
    logits  = logits1 + sum_i p[b, i] R[b, i, j],  p = sigmoid(logits1) detached, not normalised
In training the merged loss sees logits1.detach() + logits2 and branch 1 its own loss (weight
``branch1_loss``, 1 if 0): branch 1 is trained exactly as the decoder-only baseline is (same seed: the same
branch-1 logits, bench/RESULTS.md), and branch 2 is what the merged model adds. ``vcrcnn_own``: the same
branch 2, each label raised by its own intervened feature only (logits2_j = R[b, j, j], the cross-label
terms dropped), so no label's presence can move another label's logit.

Options: ``branch1_loss=w`` also supervises branch 1 (a training forward returns a
``MultiLabelOutput``; loss = criterion(logits) + w criterion(logits1)). ``confounder_net=PATH``
fits the k-means confounders over a separate frozen single-branch network's last spatial map (the
authors' "K-means clustering on the spatial features extracted from a pre-trained classification
network"), so Z is (K, F); read only when the confounders are fitted. ``freeze_trunk`` keeps the
trunk fixed (no gradient, batch norm in eval mode); ``trunk_cache_mb`` then caches its maps per
distinct training input. ``observed_confounders`` adds the backdoor adjustment with z observed in
training: the logits also see the image's own confounder mix pi[b, z] (fraction of its tokens whose
nearest prototype is z) through g_j(pi) = sum_z pi[b, z] u_j(z); in evaluation pi is the prior P(z).
``causal=False`` is the decoder-only baseline (branch 1 alone). The confounders are buffers filled
by ``confounders.fit_confounders`` before training. ``feature_split`` (decoder-only): Singh et al.'s
feature splitting on each label feature X[b, j] (``feature_split.py``); a training forward then returns
a ``FeatureSplitOutput`` (full and split branch-1 logits) for ``train.losses.feature_split_loss``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn

from ..config import CORRELATIONS, INTERVENTIONS, MERGES
from ..kernels import causal_attention
from .confounders import CONFOUNDER_SOURCES, ConfounderBank, nearest_center
from .double_branch import load_single_branch, split_stages
from .feature_split import FeatureSplit, FeatureSplitOutput
from .registry import create_model, register_model

VCR = ("vcrcnn", "vcrcnn_own")  # the rebuilt causal branch: cross-label raising, or each label's own only



@dataclass
class MultiLabelOutput:
    """A training-mode forward with auxiliary losses: the merged logits (B, C), auxiliary logits by
    name and each one's loss weight (loss = criterion(logits) + sum_k weights[k] criterion(aux[k]))."""

    logits: torch.Tensor
    aux: Dict[str, torch.Tensor] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)

    def chunk(self, n: int):
        """Split along the batch like ``Tensor.chunk`` (the epoch-wise original/intervened halves)."""
        parts = {k: v.chunk(n) for k, v in self.aux.items()}
        return tuple(MultiLabelOutput(lg, {k: p[i] for k, p in parts.items()}, dict(self.weights))
                     for i, lg in enumerate(self.logits.chunk(n)))

    def loss(self, criterion: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """criterion(logits) + sum_k weights[k] criterion(aux[k])."""
        total = criterion(self.logits)
        for k, w in self.weights.items():
            total = total + w * criterion(self.aux[k])
        return total


def sine_positions(h: int, w: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h*w, dim) 2-D sine/cosine positions (DETR style): half the channels for y, half for x."""
    if dim % 4:
        raise ValueError(f"sine positions need dim divisible by 4, got {dim}")
    q = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(q, device=device, dtype=torch.float32) / q))  # (q,)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    py = ys[:, None] * freq  # (h, q)
    px = xs[:, None] * freq  # (w, q)
    py = torch.cat([py.sin(), py.cos()], 1)[:, None, :].expand(h, w, 2 * q)
    px = torch.cat([px.sin(), px.cos()], 1)[None, :, :].expand(h, w, 2 * q)
    return torch.cat([py, px], -1).reshape(h * w, dim).to(dtype)


class GroupLinear(nn.Module):
    """C independent linear heads, one per label: (B, C, D) -> (B, C)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.uniform_(self.weight, -1 / math.sqrt(dim), 1 / math.sqrt(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum(-1) + self.bias


class CausalMultiLabel(nn.Module):
    def __init__(self, backbone: str = "resnet20", num_classes: int = 20, embed_dim: int = 128,
                 num_heads: int = 4, decoder_layers: int = 1, ff_dim: int = 0, dropout: float = 0.1,
                 causal: bool = True, num_confounders: int = 16, confounder_source: str = "kmeans",
                 merge: str = "proposed", observed_confounders: bool = False, init: str = "",
                 correlation: str = "residual", branch1_loss: float = 0.0, confounder_net: str = "",
                 freeze_trunk: bool = False, trunk_cache_mb: int = 0, feature_split: bool = False,
                 intervention: str = "residual", confounder_backbone: str = ""):
        super().__init__()
        if intervention not in INTERVENTIONS:
            raise ValueError(f"intervention must be one of {', '.join(INTERVENTIONS)}, got {intervention!r}")
        if intervention in VCR and causal and (observed_confounders or merge != "proposed"):
            raise ValueError(f"intervention {intervention}: z is not observed and the merge is its own (merge proposed), got "
                             f"observed_confounders={observed_confounders}, merge={merge!r}")
        if confounder_backbone and not confounder_net:
            raise ValueError("confounder_backbone names the architecture of confounder_net; give confounder_net too")
        if feature_split and causal:
            raise ValueError("feature_split: Singh et al.'s feature splitting is an option of the decoder-only "
                             "model (causal=False), got causal=True")
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {merge!r}")
        if correlation not in CORRELATIONS:
            raise ValueError(f"correlation must be one of {', '.join(CORRELATIONS)}, got {correlation!r}")
        if branch1_loss < 0:
            raise ValueError(f"branch1_loss must be non-negative, got {branch1_loss}")
        if confounder_net and (not causal or confounder_source != "kmeans" or observed_confounders):
            raise ValueError("confounder_net: k-means over a separate network's features needs a causal model "
                             f"with confounder_source kmeans and no observed_confounders, got causal={causal}, "
                             f"confounder_source={confounder_source!r}, observed_confounders={observed_confounders}")
        if confounder_source not in CONFOUNDER_SOURCES:
            raise ValueError(f"confounder_source must be one of {', '.join(CONFOUNDER_SOURCES)}, "
                             f"got {confounder_source!r}")
        if embed_dim % num_heads or embed_dim % 4:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads}) and by 4")
        self.num_classes, self.embed_dim, self.num_heads = num_classes, embed_dim, num_heads
        if observed_confounders and (not causal or confounder_source != "kmeans"):
            raise ValueError("observed_confounders needs a causal model whose confounders are prototypes of its "
                             f"projected tokens (confounder_source kmeans), got causal={causal}, "
                             f"confounder_source={confounder_source!r}")
        self.causal, self.merge, self.confounder_source = causal, merge, confounder_source
        self.observed_confounders = observed_confounders
        self.correlation, self.branch1_loss = correlation, float(branch1_loss)
        self.backbone_name, self.confounder_net = backbone, confounder_net
        self.confounder_backbone = confounder_backbone or backbone
        self.intervention = intervention if causal else "residual"
        self._confounder_net: list = []  # the loaded network, outside the state dict (Z is what is kept)
        self.freeze_trunk = freeze_trunk
        if trunk_cache_mb and not freeze_trunk:
            raise ValueError("trunk_cache_mb: only a frozen trunk's features can be cached (freeze_trunk=True)")
        self.trunk_cache_bytes = int(trunk_cache_mb) * 2 ** 20
        self._trunk_cache: Dict[bytes, torch.Tensor] = {}  # input digest -> frozen trunk's map (F, h, w)
        self._trunk_cache_used = 0
        # the paper starts from a pre-trained classifier: ``init`` is a local single-branch checkpoint
        self.backbone = load_single_branch(backbone, init) if init else create_model(backbone, num_classes=1)
        self.backbone.fc = nn.Identity()  # the trunk only: forward_features
        if freeze_trunk:
            self.backbone.requires_grad_(False)
        self.stages = split_stages(self.backbone)  # shares the backbone's modules (for `early`)
        self.num_features = self.backbone.num_features
        d = embed_dim
        self.proj = nn.Conv2d(self.num_features, d, 1)
        self.queries = nn.Parameter(torch.randn(num_classes, d) * 0.02)
        layer = nn.TransformerDecoderLayer(d, num_heads, ff_dim or 2 * d, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, decoder_layers)
        self.head = GroupLinear(num_classes, d)  # branch 1
        self.feature_split = FeatureSplit(num_classes, d) if feature_split else None  # X[b, j] = [x_o, x_s]
        if causal:
            if confounder_source == "label":
                num_confounders = num_classes  # one prototype per class
            if self.intervention in VCR:
                self._init_vcrcnn(num_classes, num_confounders, confounder_source, d)
                return  # nothing else of the causal branch below belongs to this reading
            zdim = self._early_dim() if confounder_source == "early" else (self.num_features if confounder_net else d)
            self.confounders = ConfounderBank(num_confounders, zdim)
            self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(zdim, d), nn.Linear(zdim, d)
            self.out_proj = nn.Linear(d, d)
            self.norm = nn.LayerNorm(d)
            self.head2 = GroupLinear(num_classes, d)  # classifier j applied to every intervened feature
            if observed_confounders:
                self.ctx_proj = nn.Linear(zdim, d)  # u_j(z) = w_j . ctx_proj(z) + c_j
                self.ctx_head = nn.Linear(d, num_classes)
            if merge == "linear":
                self.mix = nn.Parameter(torch.stack([torch.ones(num_classes), torch.ones(num_classes),
                                                     torch.zeros(num_classes)]))  # (3, C): u, v, e

    def _init_vcrcnn(self, num_classes: int, num_confounders: int, source: str, d: int) -> None:
        """The rebuilt causal branch (see the module doc): Z holds raw prototypes (K, Dz), the attention
        projects the (detached) label feature and the prototypes to Dz, branch 2 reads [X_i ; E_i]."""
        if source == "early":
            zdim = self._early_dim()
        elif source == "label":
            zdim, num_confounders = d, num_classes
        elif self.confounder_net and self.confounder_backbone != self.backbone_name:
            zdim = create_model(self.confounder_backbone, num_classes=1).num_features
        else:  # the separate network's map, or the trunk's own raw map as it is before training
            zdim = self.num_features
        self.confounders = ConfounderBank(num_confounders, zdim)
        self.q_proj, self.k_proj = nn.Linear(d, zdim), nn.Linear(zdim, zdim)  # one head, over Dz
        self.branch2 = nn.Linear(d + zdim, d)  # the first layer of branch 2 over [X_i ; E_i]
        self.head2 = GroupLinear(num_classes, d)  # s_j(u) = w2_j . relu(branch2(u)) + c2_j

    def _early_dim(self) -> int:
        with torch.no_grad():
            return int(self.stages[0](torch.zeros(1, 3, 16, 16)).shape[1])

    def train(self, mode: bool = True) -> "CausalMultiLabel":
        super().train(mode)
        if self.freeze_trunk:
            self.backbone.eval()  # a frozen trunk keeps its batch-norm statistics
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self._trunk_cache.clear()  # new weights: cached trunk maps are stale
        self._trunk_cache_used = 0
        super()._load_from_state_dict(*args, **kwargs)

    def _trunk_map(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's map (B, F, h, w). A frozen trunk in training with ``trunk_cache_mb`` keeps the maps
        of the inputs it has seen (keyed by a digest of the input's bytes, up to that many MB): with no
        augmentation every epoch after the first costs only the heads. Evaluation never uses the cache."""
        if not (self.trunk_cache_bytes and self.training):
            return self.backbone.forward_features(x)
        host = x.detach().to("cpu", torch.float32).contiguous().numpy()  # host sync: the digests need the bytes
        keys = [hashlib.blake2b(host[i].tobytes(), digest_size=16).digest() for i in range(len(host))]
        miss = [i for i, k in enumerate(keys) if k not in self._trunk_cache]
        if miss:
            with torch.no_grad():
                fresh = self.backbone.forward_features(x[miss])
            for i, f in zip(miss, fresh):
                if self._trunk_cache_used + f.numel() * f.element_size() <= self.trunk_cache_bytes:
                    self._trunk_cache[keys[i]] = f.clone()
                    self._trunk_cache_used += f.numel() * f.element_size()
            got = dict(zip(miss, fresh))
        else:
            got = {}
        return torch.stack([got[i] if i in got else self._trunk_cache[k] for i, k in enumerate(keys)])

    # -- features ---------------------------------------------------------------------------------
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> projected spatial tokens (B, T, D), without positions."""
        return self.proj(self.backbone.forward_features(x)).flatten(2).transpose(1, 2)

    def confounder_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """What k-means clusters, (B, T, Dz): projected tokens (kmeans), the last spatial map of the
        separate pre-trained network (kmeans with ``confounder_net``) or stage-1 tokens (early)."""
        if self.confounder_source == "early":
            return self.stages[0](x).flatten(2).transpose(1, 2)
        if self.confounder_net:
            with torch.no_grad():
                return self._pretrained_net(x).forward_features(x).flatten(2).transpose(1, 2)
        if self.intervention in VCR:  # raw prototypes: the trunk's own map, as it is before training
            with torch.no_grad():
                return self.backbone.forward_features(x).flatten(2).transpose(1, 2)
        return self.tokens(x)

    def _pretrained_net(self, x: torch.Tensor) -> nn.Module:
        """The frozen network of ``confounder_net``, loaded at its first use (on x's device)."""
        if not self._confounder_net:
            net = load_single_branch(self.confounder_backbone, self.confounder_net, what="model.confounder_net")
            net.fc = nn.Identity()
            self._confounder_net.append(net.requires_grad_(False).eval())
        return self._confounder_net[0].to(x.device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the trunk's last spatial map (B, K, h, w) (Grad-CAM hooks here)."""
        return self.backbone.forward_features(x)

    def label_features(self, x: torch.Tensor, fmap: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 3, H, W) (or the trunk's map ``fmap``) -> label-specific features X (B, C, D)."""
        return self._decode(self.proj(self.backbone.forward_features(x) if fmap is None else fmap))

    def _decode(self, feats: torch.Tensor) -> torch.Tensor:
        """Projected map (B, D, h, w) -> label-specific features X (B, C, D)."""
        b, d, h, w = feats.shape
        mem = feats.flatten(2).transpose(1, 2) + sine_positions(h, w, d, feats.device, feats.dtype)
        tgt = self.queries.to(mem.dtype).unsqueeze(0).expand(b, -1, -1)
        return self.decoder(tgt, mem)

    @torch.no_grad()
    def confounder_mix(self, tokens: torch.Tensor) -> torch.Tensor:
        """Confounder tokens (B, T, Dz) -> the image's observed confounder mix pi (B, K): the fraction
        of its tokens whose nearest prototype (squared distance) is z. No gradient: z is observed."""
        b, t, dz = tokens.shape
        idx, _ = nearest_center(tokens.reshape(b * t, dz), self.confounders.z)  # k-means' own assignment
        return torch.nn.functional.one_hot(idx, self.confounders.num).to(tokens.dtype).reshape(b, t, -1).mean(1)

    def context_logits(self, mix: torch.Tensor) -> torch.Tensor:
        """Confounder mix (B, K) -> context term g(pi) (B, C) = pi @ u(Z), u(Z) (K, C)."""
        u = self.ctx_head(self.ctx_proj(self.confounders.z.to(mix.dtype)))  # (K, C)
        return mix @ u

    def expected_confounder(self, feats: torch.Tensor, return_attn: bool = False):
        """vcrcnn: X (B, C, D) -> E (B, C, Dz) = K sum_z softmax_z(q(X_i) . k(z) / sqrt(Dz)) P(z) z, the raw
        prototypes as values (one head; the factor K puts E on a prototype's scale: a uniform attention
        gives the prior mean sum_z P(z) z); with ``return_attn`` also the attention (B, 1, C, K)."""
        z = self.confounders.z.to(feats.dtype)
        out = causal_attention(self.q_proj(feats), self.k_proj(z), z, self.confounders.prior.to(feats.dtype), 1,
                               return_attn=return_attn)
        e, attn = out if return_attn else (out, None)
        e = e * self.confounders.num
        return (e, attn) if return_attn else e

    def branch2_input(self, feats: torch.Tensor):
        """vcrcnn: the label features X (B, C, D) -> branch 2's inputs [X_i ; E_i] (B, C, D + Dz) and the
        no-category baseline [0 ; E_0] (D + Dz,), E_0 = the prior mean of the prototypes (the attention of
        a zero query is uniform). X is detached: branch 2 cannot write into the trunk, decoder or queries."""
        x = feats.detach()
        e = self.expected_confounder(x)
        z, prior = self.confounders.z.to(x.dtype), self.confounders.prior.to(x.dtype)
        u0 = torch.cat([torch.zeros(self.embed_dim, dtype=x.dtype, device=x.device), prior @ z])
        return torch.cat([x, e], -1), u0

    def branch2_scores(self, u: torch.Tensor) -> torch.Tensor:
        """vcrcnn: branch 2's inputs (..., D + Dz) -> every label's score s_j (..., C)."""
        h = torch.relu(self.branch2(u))
        return h @ self.head2.weight.T + self.head2.bias

    def intervene(self, feats: torch.Tensor, return_attn: bool = False):
        """Label features X (B, C, D) -> intervened features H (B, C, D) (backdoor over Z); with
        ``return_attn`` also the attention over the confounders (B, heads, C, K) (diagnostics). vcrcnn:
        H = [X ; E] (B, C, D + Dz), branch 2's input."""
        if self.intervention in VCR:
            e, attn = self.expected_confounder(feats.detach(), return_attn=True)
            h = torch.cat([feats.detach(), e], -1)
            return (h, attn) if return_attn else h
        z = self.confounders.z.to(feats.dtype)
        out = causal_attention(self.q_proj(feats), self.k_proj(z), self.v_proj(z),
                               self.confounders.prior.to(feats.dtype), self.num_heads, return_attn=return_attn)
        e, attn = out if return_attn else (out, None)  # (B, C, D), (B, H, C, K)
        h = self.norm(feats + self.out_proj(e))
        return (h, attn) if return_attn else h

    def baseline_feature(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """H_0 (D,): no category acted upon, the confounders at their prior (a zero query attends
        uniformly): LN(o(sum_z P(z) v(z) / K)). s_j(H_0) is label j's baseline P(y_j) of the raising reading."""
        z = self.confounders.z.to(dtype)
        q0 = torch.zeros(1, 1, self.embed_dim, dtype=dtype, device=z.device)
        e0 = causal_attention(q0, self.k_proj(z), self.v_proj(z), self.confounders.prior.to(dtype), self.num_heads)
        return self.norm(self.out_proj(e0))[0, 0]

    def correlations(self, feats: torch.Tensor) -> torch.Tensor:
        """Causal label correlations R (B, C, C): R[b, i, j] = effect of category i on category j
        (``residual``: s_j(H_i); ``raising``: s_j(H_i) - s_j(H_0); ``vcrcnn``: s_j([X_i ; E_i]) - s_j([0 ; E_0])
        with i's effect on itself zero, see the module doc)."""
        if self.intervention in VCR:
            u, u0 = self.branch2_input(feats)
            r = self.branch2_scores(u) - self.branch2_scores(u0)  # (B, C, C) - (C,)
            eye = torch.eye(self.num_classes, dtype=r.dtype, device=r.device)
            return r * eye if self.intervention == "vcrcnn_own" else r * (1 - eye)
        h = self.intervene(feats)
        if self.correlation == "raising":
            return torch.einsum("bid,jd->bij", h - self.baseline_feature(h.dtype), self.head2.weight)
        return torch.einsum("bid,jd->bij", h, self.head2.weight) + self.head2.bias

    def forward_all(self, x: Optional[torch.Tensor], fmap: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Everything: features, branch logits, R and the merged logits (from x, or from the
        trunk's map ``fmap``)."""
        fmap = self._trunk_map(x) if fmap is None else fmap
        proj = self.proj(fmap)  # (B, D, h, w)
        return self.heads_of(self._decode(proj), proj)

    def heads_of(self, feats: torch.Tensor, proj: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The label features X (B, C, D) -> branch logits, R and the merged logits (``proj``, the projected
        map, is needed only by a training forward with ``observed_confounders``)."""
        logits1 = self.head(feats)  # (B, C)
        out = {"features": feats, "logits1": logits1}
        if self.feature_split is not None and self.training:  # branch 1 with x_s at its running mean
            out["split_logits"], out["split_context"] = self.feature_split(feats, self.head.weight, self.head.bias)
        if not self.causal:
            out["logits"] = logits1
            return out
        r = self.correlations(feats)  # (B, C, C)
        c = self.num_classes
        if self.intervention == "vcrcnn_own":  # logits1 + R_jj: each label raised by its own intervened feature only
            logits2 = r.diagonal(dim1=1, dim2=2)
            out.update(correlations=r, logits2=logits2, logits=logits1 + logits2)
            return out
        if self.intervention == "vcrcnn":  # logits1 + sum_i p_i R_ij, p = sigmoid(logits1) detached, not normalised
            logits2 = torch.einsum("bi,bij->bj", torch.sigmoid(logits1.detach()), r)
            out.update(correlations=r, logits2=logits2, logits=logits1 + logits2)
            return out
        raising = self.correlation == "raising"
        if self.merge == "proposed":
            a = torch.sigmoid(logits1)  # (B, C) the categories branch 1 sees in the image
            if not raising:
                a = a / a.sum(1, keepdim=True).clamp_min(1e-6)  # normalised weights of the present categories
        else:
            a = torch.full_like(logits1, 1.0 / c)
        logits2 = torch.einsum("bi,bij->bj", a, r)
        if raising:  # j's baseline plus every present category's raising of it
            logits2 = logits2 + self.head2(self.baseline_feature(feats.dtype)[None, None].expand(1, c, -1))
        if self.merge == "linear":
            u, v, e = self.mix
            logits = u * logits1 + v * logits2 + e
        else:
            logits = logits1 + logits2
        out.update(correlations=r, logits2=logits2, logits=logits)
        if self.observed_confounders:
            if self.training:  # P(Y | X, z): the image's own confounders, observed
                mix = self.confounder_mix(proj.flatten(2).transpose(1, 2))  # tokens (B, T, D)
            else:  # sum_z P(Y | X, z) P(z): the confounder marginalised with its prior
                mix = self.confounders.prior.to(logits.dtype).expand(logits.shape[0], -1)
            out["context_logits"] = ctx = self.context_logits(mix)
            out["logits"] = logits + ctx
        return out

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """The trunk's map (B, K, h, w) -> merged logits (B, C)."""
        return self.forward_all(None, fmap)["logits"]

    def forward(self, x: torch.Tensor):
        """Merged logits (B, C); in training with ``branch1_loss`` a ``MultiLabelOutput`` that also
        carries branch 1's logits and their loss weight."""
        out = self.forward_all(x)
        if "split_logits" in out:
            return FeatureSplitOutput(out["logits"], out["split_logits"], out["split_context"])
        if self.training and self.intervention in VCR:  # branch 2 learns on top of a fixed branch 1
            return MultiLabelOutput(out["logits1"].detach() + out["logits2"], {"branch1": out["logits1"]},
                                    {"branch1": self.branch1_loss or 1.0})
        if self.training and self.causal and self.branch1_loss > 0:
            return MultiLabelOutput(out["logits"], {"branch1": out["logits1"]}, {"branch1": self.branch1_loss})
        return out["logits"]


def _decoder(backbone: str) -> Callable[..., nn.Module]:
    def fn(num_classes: int = 20, embed_dim: int = 128, num_heads: int = 4, decoder_layers: int = 1,
           dropout: float = 0.1, init_single: str = "", freeze_trunk: bool = False,
           trunk_cache_mb: int = 0, feature_split: bool = False) -> CausalMultiLabel:
        return CausalMultiLabel(backbone, num_classes, embed_dim=embed_dim, num_heads=num_heads,
                                decoder_layers=decoder_layers, dropout=dropout, causal=False, init=init_single,
                                freeze_trunk=freeze_trunk, trunk_cache_mb=trunk_cache_mb,
                                feature_split=feature_split)

    fn.__doc__ = f"Decoder-only baseline (branch 1) over a {backbone} trunk."
    return fn


def _causal(backbone: str) -> Callable[..., nn.Module]:
    def fn(num_classes: int = 20, embed_dim: int = 128, num_heads: int = 4, decoder_layers: int = 1,
           dropout: float = 0.1, init_single: str = "", freeze_trunk: bool = False, trunk_cache_mb: int = 0,
           num_confounders: int = 16, confounder_source: str = "kmeans", merge: str = "proposed",
           observed_confounders: bool = False, correlation: str = "residual", branch1_loss: float = 0.0,
           confounder_net: str = "", intervention: str = "residual", confounder_backbone: str = ""
           ) -> CausalMultiLabel:
        return CausalMultiLabel(backbone, num_classes, embed_dim=embed_dim, num_heads=num_heads,
                                decoder_layers=decoder_layers, dropout=dropout, causal=True, init=init_single,
                                freeze_trunk=freeze_trunk, trunk_cache_mb=trunk_cache_mb,
                                num_confounders=num_confounders, confounder_source=confounder_source,
                                merge=merge, observed_confounders=observed_confounders, correlation=correlation,
                                branch1_loss=branch1_loss, confounder_net=confounder_net,
                                intervention=intervention, confounder_backbone=confounder_backbone)

    fn.__doc__ = f"Causal multi-label model over a {backbone} trunk."
    return fn


for _b in ("resnet8", "resnet20", "resnet32", "resnet18", "resnet34", "resnet50"):
    register_model(_causal(_b), task="multilabel", name=f"causal_{_b}")
    register_model(_decoder(_b), task="multilabel", name=f"decoder_{_b}")
