"""Fused intervention composite: blend + per-sample horizontal flip + normalize + layout + cast.

One read of every input pixel and one write of every output pixel, for a whole batch:
    none   -> normalize(obj)
    single -> normalize(m*obj + (1-m)*ctx)
    double -> normalize(m*obj), normalize((1-m_ctx)*ctx)
    pair   -> normalize(obj), normalize(m*obj + (1-m)*ctx)      (original and intervened, Eq. 12)
with normalize(x) = (x - mean) / std on x in 0..1. ``reference.composite_ref`` is the definition,
and the kernel does the same fp32 operations in the same order (x / 255, blend, (y - mean) / std):
under the interpreter the results are bitwise equal; on a GPU, Triton's fp32 division
(div.full, <= 2 ulp) and FMA contraction may move the last bit.

The launcher is wrapped as the custom op ``cit_fast::composite`` (with a fake implementation), so
``torch.compile`` treats it as one opaque node: a compiled model can consume its output, and a
compiled pipeline step can call it, without Dynamo tracing into Triton.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple, Union

import torch
import triton
import triton.language as tl

from ._triton_compat import interpreting, to_dtype
from .reference import IMAGENET_MEAN, IMAGENET_STD, check_composite_args

_MODE_IDS = {"none": 0, "single": 1, "double": 2, "pair": 3}
_N_OUT = {"none": 1, "single": 1, "double": 2, "pair": 2}


# ----------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------
@triton.jit
def _unit(x, IS_U8: tl.constexpr):
    """Loaded pixels/mask values -> fp32 in 0..1, with the reference's arithmetic (x / 255)."""
    if IS_U8:
        return x.to(tl.float32) / 255.0
    return x.to(tl.float32)


@triton.jit
def _composite_fwd_kernel(
    obj_ptr,  # (N, H, W, C) object image: uint8 0..255 or float 0..1, any strides
    ctx_ptr,  # (N, H, W, C) context image, same conventions; ignored in MODE 0
    mask_ptr,  # (N, H, W) object mask (uint8 0..255, bool as uint8, or float 0..1), 1 = object
    ctx_mask_ptr,  # (N, H, W) the context image's own mask; read in MODE 2 only
    flip_ptr,  # (N,) uint8, nonzero = flip this sample horizontally; read if HAS_FLIP
    norm_ptr,  # (2, C) fp32: row 0 = mean, row 1 = std
    out1_ptr,  # (N, C, H, W) first output (any strides: NCHW or channels_last)
    out2_ptr,  # (N, C, H, W) second output in MODE 2/3 (same strides as out1); ignored otherwise
    H, W,  # image height and width (pixels)
    tiles_w,  # number of BLOCK_W tiles along W
    tiles_per_img,  # tiles per image = cdiv(H, BLOCK_H) * tiles_w
    s_on, s_oh, s_ow, s_oc,  # obj strides (elements)
    s_xn, s_xh, s_xw, s_xc,  # ctx strides
    s_mn, s_mh, s_mw,  # mask strides
    s_kn, s_kh, s_kw,  # ctx_mask strides
    s_yn, s_yc, s_yh, s_yw,  # output strides, shared by out1 and out2
    C: tl.constexpr,  # channels (3)
    OBJ_U8: tl.constexpr,  # obj is uint8 0..255 (else float 0..1)
    CTX_U8: tl.constexpr,  # ctx is uint8 0..255
    MASK_U8: tl.constexpr,  # mask is uint8 0..255 (else bool-as-uint8 or float, 0..1)
    CTX_MASK_U8: tl.constexpr,  # ctx_mask is uint8 0..255
    MODE: tl.constexpr,  # 0 none, 1 single, 2 double, 3 pair
    HAS_FLIP: tl.constexpr,  # whether flip_ptr is given
    EMULATE_RNE: tl.constexpr,  # interpreter + bf16 output: round like a GPU (_triton_compat)
    BLOCK_H: tl.constexpr,  # rows per tile
    BLOCK_W: tl.constexpr,  # columns per tile
):
    # One program = one (BLOCK_H, BLOCK_W) tile of one sample, all channels, all outputs.
    pid = tl.program_id(0)
    n = pid // tiles_per_img
    t = pid % tiles_per_img
    h = (t // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]  # (BLOCK_H, 1)
    w = (t % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]  # (1, BLOCK_W)
    valid = (h < H) & (w < W)  # (BLOCK_H, BLOCK_W)
    if HAS_FLIP:
        # Output column w reads source column W-1-w; the whole sample flips, masks included.
        f = tl.load(flip_ptr + n)
        w_src = tl.where(f != 0, W - 1 - w, w)
    else:
        w_src = w
    n64 = n.to(tl.int64)  # batch offsets can pass 2**31 elements; in-image offsets cannot

    o_base = obj_ptr + n64 * s_on + h * s_oh + w_src * s_ow
    if MODE != 0:
        x_base = ctx_ptr + n64 * s_xn + h * s_xh + w_src * s_xw
        m = tl.load(mask_ptr + n64 * s_mn + h * s_mh + w_src * s_mw, mask=valid, other=0)
        m = _unit(m, MASK_U8)
    if MODE == 2:
        mc = tl.load(ctx_mask_ptr + n64 * s_kn + h * s_kh + w_src * s_kw, mask=valid, other=0)
        mc = _unit(mc, CTX_MASK_U8)
    y_off = n64 * s_yn + h * s_yh + w * s_yw  # (BLOCK_H, BLOCK_W) output pixel offsets

    for c in tl.static_range(C):
        mean = tl.load(norm_ptr + c)
        std = tl.load(norm_ptr + C + c)
        o = _unit(tl.load(o_base + c * s_oc, mask=valid, other=0), OBJ_U8)
        if MODE != 0:
            x = _unit(tl.load(x_base + c * s_xc, mask=valid, other=0), CTX_U8)
        if MODE == 0:
            y1 = o
        elif MODE == 1:
            y1 = m * o + (1.0 - m) * x
        elif MODE == 2:
            y1 = m * o
            y2 = (1.0 - mc) * x
        else:
            y1 = o
            y2 = m * o + (1.0 - m) * x
        y_ptr = y_off + c * s_yc
        out_t = out1_ptr.dtype.element_ty
        tl.store(out1_ptr + y_ptr, to_dtype((y1 - mean) / std, out_t, EMULATE_RNE), mask=valid)
        if MODE >= 2:
            tl.store(out2_ptr + y_ptr, to_dtype((y2 - mean) / std, out_t, EMULATE_RNE), mask=valid)


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------
def _composite_blocks(h: int, w: int) -> Tuple[int, int, int]:
    """(BLOCK_H, BLOCK_W, num_warps): ~1024 pixels a tile, the W tile chosen to pad least.

    Not tuned on a GPU yet (none was available); 224 -> 32x32 tiles with no padding.
    """
    cap = triton.next_power_of_2(w)
    block_w = min((bw for bw in (64, 32, 16, 8) if bw <= max(cap, 8)),
                  key=lambda bw: (triton.cdiv(w, bw) * bw - w, -bw))
    block_h = min(triton.next_power_of_2(h), max(1, 1024 // block_w))
    return block_h, block_w, 4


@functools.lru_cache(maxsize=16)
def _norm_table(mean: Tuple[float, ...], std: Tuple[float, ...], device: torch.device) -> torch.Tensor:
    """(2, C) fp32 [mean; std] on device, cached so a training step copies nothing H2D."""
    return torch.tensor([mean, std], dtype=torch.float32).to(device)


def _is_u8(t: Optional[torch.Tensor]) -> bool:
    # Of the caller's tensor, before any bool -> uint8 view (bool masks are already 0/1).
    return t is not None and t.dtype == torch.uint8


def _as_loadable(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    # bool -> uint8 view (0/1): the kernel converts loads with .to(fp32).
    return t.view(torch.uint8) if t is not None and t.dtype == torch.bool else t


def composite_forward(
    obj: torch.Tensor,  # (N, H, W, C)
    mask: Optional[torch.Tensor],  # (N, H, W)
    ctx: Optional[torch.Tensor],  # (N, H, W, C)
    ctx_mask: Optional[torch.Tensor],  # (N, H, W)
    flip: Optional[torch.Tensor],  # (N,) bool / integer, on obj's device
    mode: str,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
    channels_last: bool,
) -> List[torch.Tensor]:
    """Allocate the outputs and launch the kernel (no validation: see ``composite_triton``)."""
    n, h, w, c = obj.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    outs = [torch.empty((n, c, h, w), dtype=out_dtype, device=obj.device, memory_format=fmt)
            for _ in range(_N_OUT[mode])]
    if outs[0].numel() == 0:
        return outs
    out1 = outs[0]
    out2 = outs[1] if len(outs) == 2 else outs[0]
    # Unused inputs are replaced by obj (never read: MODE and HAS_FLIP gate every load).
    ctx_t = ctx if mode != "none" else obj
    mask_t = _as_loadable(mask) if mode != "none" else obj[..., 0]
    ctx_mask_t = _as_loadable(ctx_mask) if mode == "double" else mask_t
    flip_t = None
    if flip is not None:
        flip_t = flip.view(torch.uint8) if flip.dtype == torch.bool else (flip != 0).view(torch.uint8)
    norm = _norm_table(tuple(float(x) for x in mean), tuple(float(x) for x in std), obj.device)

    block_h, block_w, num_warps = _composite_blocks(h, w)
    tiles_w = triton.cdiv(w, block_w)
    tiles_per_img = triton.cdiv(h, block_h) * tiles_w
    grid = (n * tiles_per_img,)
    _composite_fwd_kernel[grid](
        obj, ctx_t, mask_t, ctx_mask_t, flip_t if flip_t is not None else obj, norm, out1, out2,
        h, w, tiles_w, tiles_per_img,
        *obj.stride(), *ctx_t.stride(), *mask_t.stride(), *ctx_mask_t.stride(),
        out1.stride(0), out1.stride(1), out1.stride(2), out1.stride(3),
        C=c, OBJ_U8=_is_u8(obj), CTX_U8=_is_u8(ctx_t),
        MASK_U8=_is_u8(mask if mode != "none" else None),
        CTX_MASK_U8=_is_u8(ctx_mask if mode == "double" else None),
        MODE=_MODE_IDS[mode], HAS_FLIP=flip_t is not None,
        EMULATE_RNE=interpreting(obj) and out_dtype == torch.bfloat16,
        BLOCK_H=block_h, BLOCK_W=block_w, num_warps=num_warps,
    )
    return outs


# ----------------------------------------------------------------------------------------------
# Custom op (no autograd: the composite is data preparation, nothing upstream needs gradients)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("cit_fast::composite", mutates_args=())
def _composite_op(
    obj: torch.Tensor,
    mask: Optional[torch.Tensor],
    ctx: Optional[torch.Tensor],
    ctx_mask: Optional[torch.Tensor],
    flip: Optional[torch.Tensor],
    mode: str,
    mean: List[float],
    std: List[float],
    out_dtype: torch.dtype,
    channels_last: bool,
) -> List[torch.Tensor]:
    return composite_forward(obj, mask, ctx, ctx_mask, flip, mode, mean, std, out_dtype, channels_last)


@_composite_op.register_fake
def _composite_fake(obj, mask, ctx, ctx_mask, flip, mode, mean, std, out_dtype, channels_last):
    n, h, w, c = obj.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [torch.empty((n, c, h, w), dtype=out_dtype, device=obj.device, memory_format=fmt)
            for _ in range(_N_OUT[mode])]


# ----------------------------------------------------------------------------------------------
# Functional entry point
# ----------------------------------------------------------------------------------------------
def composite_triton(
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
    """Triton version of ``reference.composite_ref`` (same arguments, same results).

    mean/std given as tensors are read to the host once per call (a device sync if on the GPU):
    pass Python floats in a training loop.
    """
    check_composite_args(obj, mask, ctx, ctx_mask, mode=mode, flip=flip, mean=mean, std=std,
                         out_dtype=out_dtype)
    if flip is not None:
        flip = flip.to(obj.device).contiguous()  # the kernel reads flip[n] at offset n
    mean = [float(x) for x in (mean.tolist() if isinstance(mean, torch.Tensor) else mean)]
    std = [float(x) for x in (std.tolist() if isinstance(std, torch.Tensor) else std)]
    outs = _composite_op(obj, mask if mode != "none" else None, ctx if mode != "none" else None,
                         ctx_mask if mode == "double" else None, flip, mode, mean, std, out_dtype,
                         bool(channels_last))
    return outs[0] if len(outs) == 1 else (outs[0], outs[1])
