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
    if mode not in COMPOSITE_MODES:
        raise ValueError(f"composite mode must be one of {COMPOSITE_MODES}, got {mode!r}")
    o = _as_float_image(obj)
    c = o.shape[-1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=o.device).reshape(c)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=o.device).reshape(c)

    def finish(x: torch.Tensor) -> torch.Tensor:
        return _finish(x, flip, mean_t, std_t, out_dtype, channels_last)

    if mode == "none":
        return finish(o)
    if ctx is None:
        raise ValueError(f"composite mode {mode!r} needs a context image")
    m = _as_float_mask(mask)
    x = _as_float_image(ctx)
    if mode == "single":
        return finish(m * o + (1.0 - m) * x)
    if mode == "pair":
        return finish(o), finish(m * o + (1.0 - m) * x)
    if ctx_mask is None:
        raise ValueError("composite mode 'double' needs the context's own mask (ctx_mask)")
    return finish(m * o), finish((1.0 - _as_float_mask(ctx_mask)) * x)
