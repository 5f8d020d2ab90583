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

from ._triton_compat import interpreting, target_of, to_dtype, wave_slots
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


@triton.jit
def _bytes4(w):
    """The 4 bytes of 32-bit words w (little endian: byte 0 lowest), as fp32 0..255."""
    u = w.to(tl.uint32, bitcast=True)
    return ((u & 255).to(tl.float32), ((u >> 8) & 255).to(tl.float32), ((u >> 16) & 255).to(tl.float32),
            (u >> 24).to(tl.float32))


@triton.jit
def _load_octet_rgb(words_ptr, base, valid):
    """8 RGB pixels (24 bytes) at word offset base (even): three 8-byte loads -> 24 fp32 0..255,
    in byte order R0 G0 B0 R1 G1 B1 ... B7."""
    pair = tl.arange(0, 2)[None, :]
    m = valid[:, None]
    w0, w1 = tl.split(tl.load(words_ptr + base[:, None] + pair, mask=m, other=0))
    w2, w3 = tl.split(tl.load(words_ptr + base[:, None] + 2 + pair, mask=m, other=0))
    w4, w5 = tl.split(tl.load(words_ptr + base[:, None] + 4 + pair, mask=m, other=0))
    b0, b1, b2, b3 = _bytes4(w0)
    b4, b5, b6, b7 = _bytes4(w1)
    b8, b9, b10, b11 = _bytes4(w2)
    b12, b13, b14, b15 = _bytes4(w3)
    b16, b17, b18, b19 = _bytes4(w4)
    b20, b21, b22, b23 = _bytes4(w5)
    return (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, b16, b17, b18, b19,
            b20, b21, b22, b23)


@triton.jit
def _load_octet_mask(words_ptr, base, valid):
    """8 mask bytes at word offset base (even): one 8-byte load -> 8 fp32 0..255."""
    w0, w1 = tl.split(tl.load(words_ptr + base[:, None] + tl.arange(0, 2)[None, :], mask=valid[:, None], other=0))
    m0, m1, m2, m3 = _bytes4(w0)
    m4, m5, m6, m7 = _bytes4(w1)
    return m0, m1, m2, m3, m4, m5, m6, m7


@triton.jit
def _pack4(a, b, c, d):
    """(BLOCK,) x 4 -> (BLOCK, 4) with columns a, b, c, d (joins stay in one thread's registers)."""
    return tl.reshape(tl.join(tl.join(a, c), tl.join(b, d)), (a.shape[0], 4))


@triton.jit
def _pack8(v0, v1, v2, v3, v4, v5, v6, v7):
    """(BLOCK,) x 8 -> (BLOCK, 8) with columns v0 .. v7: one vector store per thread."""
    return tl.reshape(tl.join(_pack4(v0, v2, v4, v6), _pack4(v1, v3, v5, v7)), (v0.shape[0], 8))


@triton.jit
def _flip8(f, v0, v1, v2, v3, v4, v5, v6, v7):
    """Reverse the 8 pixels of an octet where f (a flipped sample)."""
    return (tl.where(f, v7, v0), tl.where(f, v6, v1), tl.where(f, v5, v2), tl.where(f, v4, v3),
            tl.where(f, v3, v4), tl.where(f, v2, v5), tl.where(f, v1, v6), tl.where(f, v0, v7))


@triton.jit
def _blend8(MODE: tl.constexpr, SECOND: tl.constexpr, o, x, m, mc):
    """One channel of 8 pixels: output 1 (SECOND=False) or 2 of MODE, before normalisation."""
    if MODE == 0:
        y = o
    elif MODE == 1:
        y = m * o + (1.0 - m) * x
    elif MODE == 2:
        if SECOND:
            y = (1.0 - mc) * x
        else:
            y = m * o
    else:
        if SECOND:
            y = m * o + (1.0 - m) * x
        else:
            y = o
    return y


@triton.jit
def _store_octets(out_ptr, o_idx, valid, hw8, y_r, y_g, y_b, mean_r, mean_g, mean_b, std_r, std_g, std_b,
                  NHWC: tl.constexpr, RNE: tl.constexpr):
    """Normalise and store 8 pixels x 3 channels per octet: NCHW, 3 vectors of 8 values (one
    per plane); NHWC, 3 vectors of 8 interleaved values. y_*: 8-tuples of fp32 (BLOCK,)."""
    out_t = out_ptr.dtype.element_ty
    r0, r1, r2, r3, r4, r5, r6, r7 = y_r
    g0, g1, g2, g3, g4, g5, g6, g7 = y_g
    c0, c1, c2, c3, c4, c5, c6, c7 = y_b
    m = valid[:, None]
    lane = tl.arange(0, 8)[None, :]
    if NHWC:
        base = (o_idx * 24)[:, None] + lane  # (BLOCK, 8): 24 interleaved values per octet
        v = _pack8((r0 - mean_r) / std_r, (g0 - mean_g) / std_g, (c0 - mean_b) / std_b, (r1 - mean_r) / std_r,
                   (g1 - mean_g) / std_g, (c1 - mean_b) / std_b, (r2 - mean_r) / std_r, (g2 - mean_g) / std_g)
        tl.store(out_ptr + base, to_dtype(v, out_t, RNE), mask=m)
        v = _pack8((c2 - mean_b) / std_b, (r3 - mean_r) / std_r, (g3 - mean_g) / std_g, (c3 - mean_b) / std_b,
                   (r4 - mean_r) / std_r, (g4 - mean_g) / std_g, (c4 - mean_b) / std_b, (r5 - mean_r) / std_r)
        tl.store(out_ptr + base + 8, to_dtype(v, out_t, RNE), mask=m)
        v = _pack8((g5 - mean_g) / std_g, (c5 - mean_b) / std_b, (r6 - mean_r) / std_r, (g6 - mean_g) / std_g,
                   (c6 - mean_b) / std_b, (r7 - mean_r) / std_r, (g7 - mean_g) / std_g, (c7 - mean_b) / std_b)
        tl.store(out_ptr + base + 16, to_dtype(v, out_t, RNE), mask=m)
    else:
        base = (o_idx * 8)[:, None] + lane  # (BLOCK, 8): 8 values of one plane per octet
        plane = hw8 * 8
        v = _pack8(r0, r1, r2, r3, r4, r5, r6, r7)
        tl.store(out_ptr + base, to_dtype((v - mean_r) / std_r, out_t, RNE), mask=m)
        v = _pack8(g0, g1, g2, g3, g4, g5, g6, g7)
        tl.store(out_ptr + plane + base, to_dtype((v - mean_g) / std_g, out_t, RNE), mask=m)
        v = _pack8(c0, c1, c2, c3, c4, c5, c6, c7)
        tl.store(out_ptr + 2 * plane + base, to_dtype((v - mean_b) / std_b, out_t, RNE), mask=m)


@triton.jit
def _unit8(IS_U8: tl.constexpr, v0, v1, v2, v3, v4, v5, v6, v7):
    """0..255 bytes -> 0..1 like the reference (x / 255); bool masks (0/1) stay as they are."""
    if IS_U8:
        return (v0 / 255.0, v1 / 255.0, v2 / 255.0, v3 / 255.0, v4 / 255.0, v5 / 255.0, v6 / 255.0, v7 / 255.0)
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _planes(b, f):
    """24 interleaved bytes R0 G0 B0 R1 ... -> (R, G, B) 8-tuples of fp32 0..1, mirrored where f."""
    r = _flip8(f, *_unit8(True, b[0], b[3], b[6], b[9], b[12], b[15], b[18], b[21]))
    g = _flip8(f, *_unit8(True, b[1], b[4], b[7], b[10], b[13], b[16], b[19], b[22]))
    bl = _flip8(f, *_unit8(True, b[2], b[5], b[8], b[11], b[14], b[17], b[20], b[23]))
    return r, g, bl


@triton.jit
def _blend_octet(MODE: tl.constexpr, SECOND: tl.constexpr, o, x, m, mc):
    """_blend8 over the 8 pixels of an octet (8-tuples)."""
    return (_blend8(MODE, SECOND, o[0], x[0], m[0], mc[0]), _blend8(MODE, SECOND, o[1], x[1], m[1], mc[1]),
            _blend8(MODE, SECOND, o[2], x[2], m[2], mc[2]), _blend8(MODE, SECOND, o[3], x[3], m[3], mc[3]),
            _blend8(MODE, SECOND, o[4], x[4], m[4], mc[4]), _blend8(MODE, SECOND, o[5], x[5], m[5], mc[5]),
            _blend8(MODE, SECOND, o[6], x[6], m[6], mc[6]), _blend8(MODE, SECOND, o[7], x[7], m[7], mc[7]))


@triton.jit
def _composite_packed_kernel(
    obj_ptr,  # (N*H*W*3/4,) int32: the (N, H, W, 3) uint8 object images, contiguous, as words
    ctx_ptr,  # the context images, same layout; ignored in MODE 0
    mask_ptr,  # (N*H*W/4,) int32: the (N, H, W) uint8/bool object masks, contiguous, as words
    ctx_mask_ptr,  # the contexts' own masks, same layout; read in MODE 2 only
    flip_ptr,  # (N,) uint8, nonzero = flip this sample horizontally; read if HAS_FLIP
    out1_ptr,  # (N, 3, H, W) first output, contiguous NCHW or channels_last
    out2_ptr,  # second output in MODE 2/3 (same layout); ignored otherwise
    mean_r, mean_g, mean_b,  # fp32 channel means
    std_r, std_g, std_b,  # fp32 channel standard deviations
    hw8,  # octets (8 pixels) per image = H * W / 8
    w8,  # octets per row = W / 8
    tiles_per_img,  # cdiv(hw8, BLOCK)
    n_tiles,  # N * tiles_per_img
    MASK_U8: tl.constexpr,  # mask is uint8 0..255 (else bool, 0/1)
    CTX_MASK_U8: tl.constexpr,  # ctx_mask is uint8 0..255
    MODE: tl.constexpr,  # 0 none, 1 single, 2 double, 3 pair
    HAS_FLIP: tl.constexpr,  # whether flip_ptr is given
    NHWC: tl.constexpr,  # channels_last outputs
    RNE: tl.constexpr,  # interpreter + bf16 output: round like a GPU (_triton_compat)
    BLOCK: tl.constexpr,  # octets per tile
):
    # Persistent: the grid is one wave of CTAs; each walks tiles (BLOCK octets of one image).
    # A thread owns whole octets: three 8-byte loads per image, one per mask, and 8-value vector
    # stores, instead of 1-byte loads at a 3-byte stride.
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        n = tile // tiles_per_img
        o_idx = (tile % tiles_per_img) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) octets of image n
        valid = o_idx < hw8
        if HAS_FLIP:
            f = tl.load(flip_ptr + n) != 0
            row = o_idx // w8
            src = tl.where(f, 2 * row * w8 + w8 - 1 - o_idx, o_idx)  # the mirrored octet of the row
        else:
            f = False
            src = o_idx
        n64 = n.to(tl.int64)
        img_w = n64 * hw8 * 6 + src * 6  # (BLOCK,) word offsets of the octets (8-byte aligned)
        msk_w = n64 * hw8 * 2 + src * 2
        o_r, o_g, o_b = _planes(_load_octet_rgb(obj_ptr, img_w, valid), f)
        if MODE != 0:
            x_r, x_g, x_b = _planes(_load_octet_rgb(ctx_ptr, img_w, valid), f)
            mk = _flip8(f, *_unit8(MASK_U8, *_load_octet_mask(mask_ptr, msk_w, valid)))
        else:
            x_r, x_g, x_b, mk = o_r, o_g, o_b, o_r
        if MODE == 2:
            mc = _flip8(f, *_unit8(CTX_MASK_U8, *_load_octet_mask(ctx_mask_ptr, msk_w, valid)))
        else:
            mc = mk
        out_img = n64 * hw8 * 24  # output elements per image: 3 * H * W
        _store_octets(out1_ptr + out_img, o_idx, valid, hw8, _blend_octet(MODE, False, o_r, x_r, mk, mc),
                      _blend_octet(MODE, False, o_g, x_g, mk, mc), _blend_octet(MODE, False, o_b, x_b, mk, mc),
                      mean_r, mean_g, mean_b, std_r, std_g, std_b, NHWC, RNE)
        if MODE >= 2:
            _store_octets(out2_ptr + out_img, o_idx, valid, hw8, _blend_octet(MODE, True, o_r, x_r, mk, mc),
                          _blend_octet(MODE, True, o_g, x_g, mk, mc), _blend_octet(MODE, True, o_b, x_b, mk, mc),
                          mean_r, mean_g, mean_b, std_r, std_g, std_b, NHWC, RNE)


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
    emulate = interpreting(obj) and out_dtype == torch.bfloat16
    if _packable(obj, mask_t, ctx_t, ctx_mask_t, mode):
        _launch_packed(obj, mask_t, ctx_t, ctx_mask_t, flip_t, out1, out2, mode, mean, std, emulate,
                       _is_u8(mask if mode != "none" else None), _is_u8(ctx_mask if mode == "double" else None))
        return outs
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
        MODE=_MODE_IDS[mode], HAS_FLIP=flip_t is not None, EMULATE_RNE=emulate,
        BLOCK_H=block_h, BLOCK_W=block_w, num_warps=num_warps,
    )
    return outs


PACKED_BLOCK = 128  # octets (8 pixels) per tile: one per thread of 4 warps (not tuned on a GPU yet)


def _packable(obj, mask, ctx, ctx_mask, mode: str) -> bool:
    """The common case: uint8 RGB images and uint8/bool masks, contiguous and 8-byte aligned, rows
    a multiple of 8 pixels wide (whole octets; a flip maps octets onto octets)."""
    n, h, w, c = obj.shape
    if c != 3 or w % 8:
        return False
    imgs = [obj] + ([ctx] if mode != "none" else [])
    masks = ([mask] if mode != "none" else []) + ([ctx_mask] if mode == "double" else [])
    for t in imgs + masks:
        if not t.is_contiguous() or (t.device.type != "meta" and t.data_ptr() % 8):
            return False
    return all(t.dtype == torch.uint8 for t in imgs) and all(t.dtype == torch.uint8 for t in masks)


def _words(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.int32)  # contiguous uint8, numel a multiple of 8: 32-bit words


def _launch_packed(obj, mask, ctx, ctx_mask, flip, out1, out2, mode, mean, std, emulate, mask_u8, ctx_mask_u8):
    n, h, w, _ = obj.shape
    hw8, w8 = h * w // 8, w // 8
    tiles_per_img = triton.cdiv(hw8, PACKED_BLOCK)
    n_tiles = n * tiles_per_img
    mean = [float(x) for x in mean]
    std = [float(x) for x in std]
    o = _words(obj)
    x = _words(ctx) if mode != "none" else o  # unused inputs: placeholders, never read
    m = _words(mask) if mode != "none" else o
    mc = _words(ctx_mask) if mode == "double" else m
    args = (o, x, m, mc, flip if flip is not None else obj, out1, out2, *mean, *std, hw8, w8, tiles_per_img,
            n_tiles)
    kw = dict(MASK_U8=mask_u8, CTX_MASK_U8=ctx_mask_u8, MODE=_MODE_IDS[mode], HAS_FLIP=flip is not None,
              NHWC=out1.stride(1) == 1, RNE=emulate, BLOCK=PACKED_BLOCK, num_warps=4)
    target = target_of(obj.device)
    if target is None:  # interpreter: a program per tile
        grid = (n_tiles,)
    else:  # persistent: one whole wave of CTAs walks the tiles
        key = ("composite", tuple(sorted(kw.items())), out1.dtype, target)
        grid = (min(n_tiles, wave_slots(_composite_packed_kernel, key, target, args, kw)),)
    _composite_packed_kernel[grid](*args, **kw)


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
