"""Pure-PyTorch references for the kernels in this package.

Each function defines what the matching Triton kernel computes; it is also the CPU path and what
the tests compare the kernels against (in fp32, TF32 off). Keep them simple and obviously right.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

COMPOSITE_MODES = ("none", "single", "double", "pair")

# ImageNet statistics, the default for every pipeline (pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_float_image(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W,C] in 0..255 or float [N,H,W,C] in 0..1 -> float32 in 0..1."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return x.float()


def _as_float_mask(m: torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W] (0..255) or float [N,H,W] (0..1) -> float32 [N,H,W,1] in 0..1."""
    if m.dtype == torch.uint8:
        m = m.float() / 255.0
    else:
        m = m.float()
    return m.unsqueeze(-1)


def _finish(
    x: torch.Tensor,  # (N, H, W, C) float32 in 0..1
    flip: Optional[torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    out_dtype: torch.dtype,
    channels_last: bool,
) -> torch.Tensor:
    if flip is not None:
        flip = flip.to(device=x.device, dtype=torch.bool)
        x = torch.where(flip[:, None, None, None], x.flip(2), x)
    x = (x - mean) / std
    x = x.permute(0, 3, 1, 2)  # (N, C, H, W) view
    if channels_last:
        return x.to(dtype=out_dtype, memory_format=torch.channels_last)
    return x.to(dtype=out_dtype).contiguous()


IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)
MASK_DTYPES = (torch.uint8, torch.bool, torch.float16, torch.bfloat16, torch.float32, torch.float64)
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_composite_args(obj, mask, ctx, ctx_mask, *, mode, flip, mean, std, out_dtype) -> None:
    """ValueError naming the argument for anything ``composite`` cannot take (shared by both paths)."""
    if mode not in COMPOSITE_MODES:
        raise ValueError(f"composite mode must be one of {COMPOSITE_MODES}, got {mode!r}")
    if not isinstance(obj, torch.Tensor) or obj.dim() != 4:
        raise ValueError(f"obj must be an (N, H, W, C) image tensor, got shape "
                         f"{tuple(getattr(obj, 'shape', ()))}")
    if obj.dtype not in IMAGE_DTYPES:
        raise ValueError(f"obj must be uint8 (0..255) or floating (0..1), got {obj.dtype}")
    n, h, w, c = obj.shape
    needs = {"none": (), "single": ("mask", "ctx"), "pair": ("mask", "ctx"),
             "double": ("mask", "ctx", "ctx_mask")}[mode]
    given = {"mask": mask, "ctx": ctx, "ctx_mask": ctx_mask}
    for name in needs:
        if given[name] is None:
            raise ValueError(f"composite mode {mode!r} needs {name}"
                             + (" (the context's own mask)" if name == "ctx_mask" else ""))
    for name in needs:
        t = given[name]
        want = (n, h, w, c) if name == "ctx" else (n, h, w)
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape {want} to match obj {tuple(obj.shape)}, "
                             f"got {tuple(t.shape)}")
        if t.dtype not in (IMAGE_DTYPES if name == "ctx" else MASK_DTYPES):
            raise ValueError(f"{name} must be uint8 (0..255), bool or floating (0..1), got {t.dtype}")
        if t.device != obj.device:
            raise ValueError(f"{name} is on {t.device} but obj is on {obj.device}")
    if flip is not None and (flip.dim() != 1 or flip.shape[0] != n):
        raise ValueError(f"flip must be a ({n},) bool tensor (one flag per sample), got shape "
                         f"{tuple(flip.shape)}")
    if flip is not None and (flip.is_floating_point() or flip.is_complex()):
        raise ValueError(f"flip must be bool (or integer 0/1), got {flip.dtype}")
    for name, stat in (("mean", mean), ("std", std)):
        if len(stat) != c:
            raise ValueError(f"{name} must have one value per channel ({c}), got {len(stat)}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")


def composite_ref(
    obj: torch.Tensor,
    mask: torch.Tensor,
    ctx: Optional[torch.Tensor] = None,
    ctx_mask: Optional[torch.Tensor] = None,
    *,
    mode: str = "single",
    flip: Optional[torch.Tensor] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Blend object and context, flip, normalize, lay out and cast, for a batch.

    obj, ctx: (N, H, W, C) uint8 (0..255) or float (0..1); mask, ctx_mask: (N, H, W) uint8 or float,
    1 = object. flip: (N,) bool, horizontal flip per sample (applied to every output of the sample).
    Modes:
      none   -> normalize(obj)
      single -> normalize(m*obj + (1-m)*ctx)                      (single-branch intervention)
      double -> (normalize(m*obj), normalize((1-m_ctx)*ctx))      (content, context; Fig. 4b)
      pair   -> (normalize(obj), normalize(m*obj + (1-m)*ctx))    (original, intervened; Eq. 12)
    Returns (N, C, H, W) tensors of out_dtype (channels_last memory format if asked).
    """
    check_composite_args(obj, mask, ctx, ctx_mask, mode=mode, flip=flip, mean=mean, std=std,
                         out_dtype=out_dtype)
    o = _as_float_image(obj)
    c = o.shape[-1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=o.device).reshape(c)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=o.device).reshape(c)

    def finish(x: torch.Tensor) -> torch.Tensor:
        return _finish(x, flip, mean_t, std_t, out_dtype, channels_last)

    if mode == "none":
        return finish(o)
    m = _as_float_mask(mask)
    x = _as_float_image(ctx)
    if mode == "single":
        return finish(m * o + (1.0 - m) * x)
    if mode == "pair":
        return finish(o), finish(m * o + (1.0 - m) * x)
    return finish(m * o), finish((1.0 - _as_float_mask(ctx_mask)) * x)


ATTENTION_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_attention_args(q, k, v, prior, num_heads) -> Tuple[int, int, int, int, int]:
    """ValueError naming the argument for bad shapes/dtypes; returns (B, C, D, Kc, head_dim)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise ValueError(f"q must be (B, C, D) label queries, got shape {tuple(getattr(q, 'shape', ()))}")
    b, c, d = q.shape
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != d:
            raise ValueError(f"{name} must be (Kc, D={d}) confounders shared over the batch, got shape "
                             f"{tuple(getattr(t, 'shape', ()))}")
    kc = k.shape[0]
    if v.shape[0] != kc:
        raise ValueError(f"v must have as many rows as k ({kc}), got {v.shape[0]}")
    if kc == 0:
        raise ValueError("k must hold at least one confounder (Kc >= 1), got Kc = 0")
    if not isinstance(prior, torch.Tensor) or tuple(prior.shape) != (kc,):
        raise ValueError(f"prior must be a ({kc},) tensor (one weight per confounder), got shape "
                         f"{tuple(getattr(prior, 'shape', ()))}")
    if not isinstance(num_heads, int) or num_heads < 1 or d % num_heads:
        raise ValueError(f"num_heads must be a positive int dividing D={d}, got {num_heads!r}")
    if q.dtype not in ATTENTION_DTYPES:
        raise ValueError(f"q must be one of {ATTENTION_DTYPES}, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    if not prior.is_floating_point():
        raise ValueError(f"prior must be floating, got {prior.dtype}")
    for name, t in (("k", k), ("v", v), ("prior", prior)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    return b, c, d, kc, d // num_heads


def causal_attention_ref(
    q: torch.Tensor,  # (B, C, D) label-specific features as queries
    k: torch.Tensor,  # (Kc, D) confounder keys, shared over the batch
    v: torch.Tensor,  # (Kc, D) confounder values
    prior: torch.Tensor,  # (Kc,) P(z), cluster frequencies
    num_heads: int,
    scale: Optional[float] = None,
    return_attn: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Intervention cross-attention: E_z[.] ~ softmax(Q K^T * scale) @ (P(z) * V), per head.

    D is split into ``num_heads`` heads of D/H; scale defaults to 1/sqrt(D/H). Computed in the
    inputs' dtype (the prior is cast to it). Returns out (B, C, D) and, if asked, the attention
    probabilities (B, H, C, Kc).
    """
    b, c, d, kc, dh = check_attention_args(q, k, v, prior, num_heads)
    h = num_heads
    if scale is None:
        scale = dh ** -0.5
    qh = q.reshape(b, c, h, dh).transpose(1, 2)  # (B, H, C, dh)
    kh = k.reshape(kc, h, dh).transpose(0, 1)  # (H, Kc, dh)
    vh = (prior.to(v.dtype)[:, None] * v).reshape(kc, h, dh).transpose(0, 1)  # (H, Kc, dh)
    attn = torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1)  # (B, H, C, Kc)
    out = (attn @ vh).transpose(1, 2).reshape(b, c, d)  # (B, C, D)
    return (out, attn) if return_attn else out
