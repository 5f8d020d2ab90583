"""The composite on a CPU: the reference's arithmetic, in place, in its order.

``reference.composite_ref`` states the op plainly and allocates a full-size temporary for nearly
every step (each input to float, /255, the blend's products and sum, the flip, -mean, /std, the
transposing copy). Here each image is converted once, straight into its output layout (the NHWC
-> NCHW transpose happens inside that copy; a channels-last output is the NHWC buffer itself,
viewed as NCHW), and every later step runs in place on that buffer: the same float32 operations
in the same order, so the result is bitwise the reference's (tested), at about 2/3 of its CPU time
on a 224^2 batch (84 -> 55 ms for 32 images on one core). The flip moves whole rows, so it commutes with the
per-channel normalisation and is applied last, to the flagged samples only.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .reference import IMAGENET_MEAN, IMAGENET_STD, check_composite_args


def _to_float(img: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(N, H, W, C) image -> float32 (N, C, H, W) in 0..1 (uint8 / 255, as the reference), one copy.
    channels_last: NHWC storage (a channels-last NCHW view), else NCHW."""
    n, h, w, c = img.shape
    if channels_last:
        out = torch.empty((n, h, w, c), dtype=torch.float32, device=img.device)
        out.copy_(img)
        out = out.permute(0, 3, 1, 2)
    else:
        out = torch.empty((n, c, h, w), dtype=torch.float32, device=img.device)
        out.copy_(img.permute(0, 3, 1, 2))
    return out.div_(255.0) if img.dtype == torch.uint8 else out


def _mask(m: torch.Tensor) -> torch.Tensor:
    """(N, H, W) mask -> float32 (N, 1, H, W) in 0..1."""
    f = m.unsqueeze(1).to(torch.float32)
    return f.div_(255.0) if m.dtype == torch.uint8 else f


def composite_cpu(
    obj: torch.Tensor,
    mask: Optional[torch.Tensor],
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
    """Same contract and bits as ``reference.composite_ref`` (see there)."""
    check_composite_args(obj, mask, ctx, ctx_mask, mode=mode, flip=flip, mean=mean, std=std,
                         out_dtype=out_dtype)
    c = obj.shape[-1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=obj.device).reshape(1, c, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=obj.device).reshape(1, c, 1, 1)
    flipped = None
    if flip is not None:
        flipped = flip.to(device=obj.device, dtype=torch.bool).nonzero().flatten()
        if flipped.numel() == 0:
            flipped = None

    def finish(x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std in place, flipped, cast."""
        x.sub_(mean_t).div_(std_t)
        if flipped is not None:
            x[flipped] = x[flipped].flip(-1)
        if out_dtype != torch.float32:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            x = x.to(dtype=out_dtype, memory_format=fmt)
        return x

    o = _to_float(obj, channels_last)
    if mode == "none":
        return finish(o)
    x = _to_float(ctx, channels_last)
    m = _mask(mask)
    if mode == "double":
        return finish(o.mul_(m)), finish(x.mul_(1.0 - _mask(ctx_mask)))
    x.mul_(1.0 - m)  # (1 - m) * ctx
    if mode == "single":
        return finish(o.mul_(m).add_(x))  # m * obj + (1 - m) * ctx
    blend = x.add_(o * m)  # pair: the blend, before the original is normalised in place
    return finish(o), finish(blend)
