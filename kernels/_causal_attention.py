"""Intervention cross-attention of the causal multi-label model, forward and backward in Triton.

    out = softmax(Q K^T * scale) @ (p[:, None] * V)        per head; E_z[.] in the VC R-CNN pattern

Q (B, C, D): label queries; K, V (Kc, D): the confounder dictionary, shared over the batch;
p (Kc,): its prior. D splits into H heads of DH = D/H. Since K and V are shared, the B*C query
rows are one long M axis: the forward is flash-attention over a short key axis (Kc <= a few
hundred, so one to four BLOCK_N tiles), with an online softmax and the prior folded into V as each
tile is loaded. ``reference.causal_attention_ref`` is the definition.

Backward (dO given; dA too when the probabilities were returned and used):
    Vp = p*V, P = softmax(S), dP = dO Vp^T + dA, delta = rowsum(dO*O) + rowsum(P*dA)
    dS = P * (dP - delta);  dQ = scale * dS K;  dK = scale * dS^T Q;  dVp = P^T dO
    dV = p * dVp;  dp = rowsum_D(dVp * V)
dQ is row-parallel (one kernel, no reductions). dK and dVp reduce over all M rows into only Kc
rows, so a second kernel splits M into SPLIT chunks, each writing an fp32 partial that the
launcher sums: deterministic, no atomics, and enough programs to fill the GPU although Kc is small.

The two launchers are custom ops (``cit_fast::causal_attention_fwd`` / ``_bwd``, with fake
versions) called by the autograd.Function, so ``torch.compile(fullgraph=True)`` of a model using
this op traces it as two opaque nodes instead of failing inside Triton's launcher.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from ._triton_compat import interpreting, to_dtype
from .reference import check_attention_args

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _mma(a, b, ELEM: tl.constexpr, DOT_T: tl.constexpr, PRECISION: tl.constexpr, RNE: tl.constexpr):
    """a @ b with operands rounded to the input dtype ELEM, fp32 accumulation.

    DOT_T is ELEM on GPUs, fp32 for bf16 under the interpreter; RNE: interpreter + bf16
    (both: see _triton_compat). Rounding through ELEM first keeps the GPU's numerics.
    """
    a = to_dtype(a, ELEM, RNE).to(DOT_T)
    b = to_dtype(b, ELEM, RNE).to(DOT_T)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _attn_fwd_kernel(
    q_ptr,  # (M, D) queries, M = B*C rows; head h owns columns [h*DH, (h+1)*DH)
    k_ptr,  # (KC, D) confounder keys
    v_ptr,  # (KC, D) confounder values
    p_ptr,  # (KC,) prior, any float dtype
    o_ptr,  # (M, D) output, ELEM
    lse_ptr,  # (H, M) fp32 out: log2 of the softmax denominator of scores in the exp2 domain
    a_ptr,  # (B, H, C, KC) out: attention probabilities, ELEM; written if RETURN_ATTN
    M, KC,  # query rows, confounders
    C_LABELS,  # labels per sample, to split row m into (b, c) for a_ptr
    s_qm, s_qd, s_km, s_kd, s_vm, s_vd, s_p,  # input strides (elements)
    s_om, s_od,  # output strides
    s_ab, s_ah, s_ac, s_ak,  # attention-probability strides
    qk_scale,  # scale * log2(e)
    DH: tl.constexpr,  # head dim
    ELEM: tl.constexpr,  # input dtype (tl.float32 / float16 / bfloat16)
    DOT_T: tl.constexpr,  # dtype handed to tl.dot (see _mma)
    PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee" for fp32 inputs (no TF32)
    RNE: tl.constexpr,  # interpreter + bf16: round fp32 -> bf16 like a GPU (_triton_compat)
    RETURN_ATTN: tl.constexpr,  # write the probabilities
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # confounders per inner step
    BLOCK_D: tl.constexpr,  # next_power_of_2(DH), >= 16
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,)
    offs_d = tl.arange(0, BLOCK_D)  # (BD,)
    m_ok = offs_m < M
    d_ok = offs_d < DH
    col = h * DH + offs_d
    q = tl.load(q_ptr + offs_m[:, None] * s_qm + col[None, :] * s_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)  # (BM, BD)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (exp2 domain)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running denominator
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, KC, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < KC
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + offs_n[:, None] * s_km + col[None, :] * s_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + offs_n[:, None] * s_vm + col[None, :] * s_vd, mask=kv_mask, other=0.0)
        pr = tl.load(p_ptr + offs_n * s_p, mask=n_ok, other=0.0).to(tl.float32)
        vp = v.to(tl.float32) * pr[:, None]  # (BN, BD) prior folded into V
        s = _mma(q, tl.trans(k), ELEM, DOT_T, PRECISION, RNE) * qk_scale  # (BM, BN)
        s = tl.where(n_ok[None, :], s, float("-inf"))  # ragged Kc tail
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has a valid column
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _mma(p, vp, ELEM, DOT_T, PRECISION, RNE)
        m_i = m_new
    acc = acc / l_i[:, None]
    lse = m_i + tl.log2(l_i)
    tl.store(o_ptr + offs_m[:, None] * s_om + col[None, :] * s_od, to_dtype(acc, ELEM, RNE),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + h * M + offs_m, lse, mask=m_ok)

    if RETURN_ATTN:
        # Second sweep over the (few) key tiles now that the denominator is known.
        b = (offs_m // C_LABELS).to(tl.int64)
        c = offs_m % C_LABELS
        a_row = b * s_ab + h * s_ah + c * s_ac  # (BM,)
        for start_n in range(0, KC, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_ok = offs_n < KC
            k = tl.load(k_ptr + offs_n[:, None] * s_km + col[None, :] * s_kd,
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            s = _mma(q, tl.trans(k), ELEM, DOT_T, PRECISION, RNE) * qk_scale
            p = tl.exp2(s - lse[:, None])
            tl.store(a_ptr + a_row[:, None] + offs_n[None, :] * s_ak, to_dtype(p, ELEM, RNE),
                     mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr,  # (M, D) queries
    k_ptr,  # (KC, D) keys
    v_ptr,  # (KC, D) values
    p_ptr,  # (KC,) prior
    o_ptr,  # (M, D) forward output
    do_ptr,  # (M, D) grad of the output (any strides; 0 for broadcast grads)
    da_ptr,  # (B, H, C, KC) grad of the probabilities; read if HAS_DA
    lse_ptr,  # (H, M) fp32 from the forward
    delta_ptr,  # (H, M) fp32 out: rowsum(dO*O) + rowsum(P*dA), reused by the dK/dV kernel
    dq_ptr,  # (M, D) out: grad of q, ELEM
    M, KC, C_LABELS,  # query rows, confounders, labels per sample
    s_qm, s_qd, s_km, s_kd, s_vm, s_vd, s_p,  # input strides
    s_om, s_od, s_dom, s_dod,  # output / output-grad strides
    s_ab, s_ah, s_ac, s_ak,  # dA strides
    s_dqm, s_dqd,  # dq strides
    qk_scale,  # scale * log2(e)
    sm_scale,  # scale
    DH: tl.constexpr,  # head dim
    ELEM: tl.constexpr,  # input dtype
    DOT_T: tl.constexpr,  # dtype handed to tl.dot
    PRECISION: tl.constexpr,  # tl.dot input_precision
    RNE: tl.constexpr,  # interpreter + bf16: round fp32 -> bf16 like a GPU (_triton_compat)
    HAS_DA: tl.constexpr,  # the probabilities have a gradient
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # confounders per inner step
    BLOCK_D: tl.constexpr,  # next_power_of_2(DH), >= 16
):
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    d_ok = offs_d < DH
    md_mask = m_ok[:, None] & d_ok[None, :]
    col = h * DH + offs_d
    q = tl.load(q_ptr + offs_m[:, None] * s_qm + col[None, :] * s_qd, mask=md_mask, other=0.0)
    o = tl.load(o_ptr + offs_m[:, None] * s_om + col[None, :] * s_od, mask=md_mask, other=0.0)
    do = tl.load(do_ptr + offs_m[:, None] * s_dom + col[None, :] * s_dod, mask=md_mask, other=0.0)
    lse = tl.load(lse_ptr + h * M + offs_m, mask=m_ok, other=0.0)  # (BM,)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BM,)
    if HAS_DA:
        b = (offs_m // C_LABELS).to(tl.int64)
        c = offs_m % C_LABELS
        a_row = b * s_ab + h * s_ah + c * s_ac
        for start_n in range(0, KC, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_ok = offs_n < KC
            k = tl.load(k_ptr + offs_n[:, None] * s_km + col[None, :] * s_kd,
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            s = _mma(q, tl.trans(k), ELEM, DOT_T, PRECISION, RNE) * qk_scale
            p = tl.where(n_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
            da = tl.load(da_ptr + a_row[:, None] + offs_n[None, :] * s_ak,
                         mask=m_ok[:, None] & n_ok[None, :], other=0.0)
            delta += tl.sum(p * da.to(tl.float32), 1)
    tl.store(delta_ptr + h * M + offs_m, delta, mask=m_ok)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, KC, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < KC
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + offs_n[:, None] * s_km + col[None, :] * s_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + offs_n[:, None] * s_vm + col[None, :] * s_vd, mask=kv_mask, other=0.0)
        pr = tl.load(p_ptr + offs_n * s_p, mask=n_ok, other=0.0).to(tl.float32)
        vp = v.to(tl.float32) * pr[:, None]  # (BN, BD)
        s = _mma(q, tl.trans(k), ELEM, DOT_T, PRECISION, RNE) * qk_scale  # (BM, BN)
        p = tl.where(n_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = _mma(do, tl.trans(vp), ELEM, DOT_T, PRECISION, RNE)  # (BM, BN)
        if HAS_DA:
            dp += tl.load(da_ptr + a_row[:, None] + offs_n[None, :] * s_ak,
                          mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq += _mma(ds, k, ELEM, DOT_T, PRECISION, RNE)
    tl.store(dq_ptr + offs_m[:, None] * s_dqm + col[None, :] * s_dqd, to_dtype(dq * sm_scale, ELEM, RNE),
             mask=md_mask)


@triton.jit
def _attn_bwd_dkv_kernel(
    q_ptr,  # (M, D) queries
    k_ptr,  # (KC, D) keys
    v_ptr,  # (KC, D) values
    p_ptr,  # (KC,) prior
    do_ptr,  # (M, D) grad of the output
    da_ptr,  # (B, H, C, KC) grad of the probabilities; read if HAS_DA
    lse_ptr,  # (H, M) fp32 from the forward
    delta_ptr,  # (H, M) fp32 from _attn_bwd_dq_kernel
    dk_part_ptr,  # (SPLIT, KC, D) fp32 out: this chunk's share of dK
    dvp_part_ptr,  # (SPLIT, KC, D) fp32 out: this chunk's share of d(p*V)
    M, KC, C_LABELS,  # query rows, confounders, labels per sample
    blocks_per_split,  # BLOCK_M row blocks each program reduces over
    s_qm, s_qd, s_km, s_kd, s_vm, s_vd, s_p,  # input strides
    s_dom, s_dod,  # output-grad strides
    s_ab, s_ah, s_ac, s_ak,  # dA strides
    qk_scale,  # scale * log2(e)
    sm_scale,  # scale
    D: tl.constexpr,  # model dim (row stride of the partial buffers)
    DH: tl.constexpr,  # head dim
    ELEM: tl.constexpr,  # input dtype
    DOT_T: tl.constexpr,  # dtype handed to tl.dot
    PRECISION: tl.constexpr,  # tl.dot input_precision
    RNE: tl.constexpr,  # interpreter + bf16: round fp32 -> bf16 like a GPU (_triton_compat)
    HAS_DA: tl.constexpr,  # the probabilities have a gradient
    BLOCK_M: tl.constexpr,  # query rows per inner step
    BLOCK_N: tl.constexpr,  # confounders per program
    BLOCK_D: tl.constexpr,  # next_power_of_2(DH), >= 16
):
    pid_n = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < KC
    d_ok = offs_d < DH
    nd_mask = n_ok[:, None] & d_ok[None, :]
    col = h * DH + offs_d
    k = tl.load(k_ptr + offs_n[:, None] * s_km + col[None, :] * s_kd, mask=nd_mask, other=0.0)
    v = tl.load(v_ptr + offs_n[:, None] * s_vm + col[None, :] * s_vd, mask=nd_mask, other=0.0)
    pr = tl.load(p_ptr + offs_n * s_p, mask=n_ok, other=0.0).to(tl.float32)
    vp = v.to(tl.float32) * pr[:, None]  # (BN, BD)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dvp = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, tl.cdiv(M, BLOCK_M))
    for mb in range(first, last):
        offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        md_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + offs_m[:, None] * s_qm + col[None, :] * s_qd, mask=md_mask, other=0.0)
        do = tl.load(do_ptr + offs_m[:, None] * s_dom + col[None, :] * s_dod, mask=md_mask, other=0.0)
        lse = tl.load(lse_ptr + h * M + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(delta_ptr + h * M + offs_m, mask=m_ok, other=0.0)
        # Transposed scores (BN, BM): keys on rows, so the reductions over M are dots.
        st = _mma(k, tl.trans(q), ELEM, DOT_T, PRECISION, RNE) * qk_scale
        pt = tl.where(m_ok[None, :], tl.exp2(st - lse[None, :]), 0.0)
        dvp += _mma(pt, do, ELEM, DOT_T, PRECISION, RNE)  # (BN, BD)
        dpt = _mma(vp, tl.trans(do), ELEM, DOT_T, PRECISION, RNE)  # (BN, BM)
        if HAS_DA:
            b = (offs_m // C_LABELS).to(tl.int64)
            c = offs_m % C_LABELS
            a_row = b * s_ab + h * s_ah + c * s_ac
            dpt += tl.load(da_ptr + a_row[None, :] + offs_n[:, None] * s_ak,
                           mask=n_ok[:, None] & m_ok[None, :], other=0.0).to(tl.float32)
        dst = pt * (dpt - delta[None, :])
        dk += _mma(dst, q, ELEM, DOT_T, PRECISION, RNE)
    part = split.to(tl.int64) * KC * D + offs_n[:, None] * D + col[None, :]
    tl.store(dk_part_ptr + part, dk * sm_scale, mask=nd_mask)
    tl.store(dvp_part_ptr + part, dvp, mask=nd_mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def _blocks(m: int, kc: int, dh: int) -> Tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps). Untuned: no GPU was available when written."""
    block_d = max(16, triton.next_power_of_2(dh))
    block_n = min(64, max(16, triton.next_power_of_2(kc)))
    block_m = min(64 if block_d <= 64 else 32, max(16, triton.next_power_of_2(m)))
    return block_m, block_n, block_d, 8 if block_d >= 128 else 4


def _dot_types(q: torch.Tensor):
    """(ELEM, DOT_T, PRECISION, RNE) constexprs for q's dtype and device."""
    elem = _TL_DTYPES[q.dtype]
    emulate = interpreting(q) and q.dtype == torch.bfloat16  # see _triton_compat
    dot_t = tl.float32 if emulate else elem
    # fp32 inputs must not be rounded to TF32: the reference (and the tests) use IEEE fp32.
    return elem, dot_t, "ieee" if q.dtype == torch.float32 else "tf32", emulate


def _bwd_split(m_blocks: int, n_blocks: int, heads: int, device: torch.device) -> int:
    """Row chunks for the dK/dV reduction: ~2 programs per SM on a GPU, 2 on the interpreter."""
    if device.type == "cuda":
        target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
        split = triton.cdiv(target, n_blocks * heads)
    else:
        split = 2  # keeps the partial-sum path exercised by the CPU tests
    return max(1, min(m_blocks, split))


def _check_triton_args(q, k, v, prior, num_heads):
    dims = check_attention_args(q, k, v, prior, num_heads)
    if q.dtype not in _TL_DTYPES:
        raise ValueError(f"q: the Triton path takes float32/float16/bfloat16, got {q.dtype}")
    return dims


def causal_attention_forward(q, k, v, prior, num_heads: int, scale: float, return_attn: bool):
    """Launch the forward kernel. Returns out (B, C, D), attn (B, H, C, Kc) or None, lse (H, M)."""
    b, c, d, kc, dh = _check_triton_args(q, k, v, prior, num_heads)
    m = b * c
    q2 = q.reshape(m, d)  # a view whenever q's (B, C) dims are mergeable
    out = torch.empty((b, c, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((num_heads, m), dtype=torch.float32, device=q.device)
    attn = (torch.empty((b, num_heads, c, kc), dtype=q.dtype, device=q.device) if return_attn
            else None)
    if m == 0:
        return out, attn, lse
    a_t = attn if attn is not None else out.view(b, 1, c, d)  # placeholder, never written
    block_m, block_n, block_d, num_warps = _blocks(m, kc, dh)
    elem, dot_t, precision, rne = _dot_types(q)
    o2 = out.view(m, d)
    grid = (triton.cdiv(m, block_m), num_heads)
    _attn_fwd_kernel[grid](
        q2, k, v, prior, o2, lse, a_t,
        m, kc, c,
        q2.stride(0), q2.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), prior.stride(0),
        o2.stride(0), o2.stride(1),
        *a_t.stride(),
        scale * _LOG2E,
        DH=dh, ELEM=elem, DOT_T=dot_t, PRECISION=precision, RNE=rne, RETURN_ATTN=return_attn,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps, num_stages=2,
    )
    return out, attn, lse


def causal_attention_backward(q, k, v, prior, out, lse, dout, dattn, num_heads: int, scale: float):
    """Launch the two backward kernels. Returns dq, dk, dv, dprior."""
    b, c, d = q.shape
    kc, dh = k.shape[0], d // num_heads
    m = b * c
    q2, o2 = q.reshape(m, d), out.reshape(m, d)
    do2 = dout.reshape(m, d)
    dq = torch.empty((m, d), dtype=q.dtype, device=q.device)
    if m == 0:
        return (dq.view(b, c, d), torch.zeros_like(k, memory_format=torch.contiguous_format),
                torch.zeros_like(v, memory_format=torch.contiguous_format), torch.zeros_like(prior))
    delta = torch.empty_like(lse)
    has_da = dattn is not None
    da = dattn if has_da else lse.view(1, 1, 1, -1)  # placeholder, never read
    block_m, block_n, block_d, num_warps = _blocks(m, kc, dh)
    elem, dot_t, precision, rne = _dot_types(q)
    common = dict(DH=dh, ELEM=elem, DOT_T=dot_t, PRECISION=precision, RNE=rne, HAS_DA=has_da,
                  BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps,
                  num_stages=2)
    in_strides = (q2.stride(0), q2.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                  prior.stride(0))
    m_blocks = triton.cdiv(m, block_m)
    _attn_bwd_dq_kernel[(m_blocks, num_heads)](
        q2, k, v, prior, o2, do2, da, lse, delta, dq,
        m, kc, c, *in_strides,
        o2.stride(0), o2.stride(1), do2.stride(0), do2.stride(1),
        *da.stride(), dq.stride(0), dq.stride(1),
        scale * _LOG2E, scale, **common,
    )
    n_blocks = triton.cdiv(kc, block_n)
    split = _bwd_split(m_blocks, n_blocks, num_heads, q.device)
    per_split = triton.cdiv(m_blocks, split)
    split = triton.cdiv(m_blocks, per_split)
    dk_part = torch.empty((split, kc, d), dtype=torch.float32, device=q.device)
    dvp_part = torch.empty_like(dk_part)
    _attn_bwd_dkv_kernel[(n_blocks, num_heads, split)](
        q2, k, v, prior, do2, da, lse, delta, dk_part, dvp_part,
        m, kc, c, per_split, *in_strides,
        do2.stride(0), do2.stride(1), *da.stride(),
        scale * _LOG2E, scale, D=d, **common,
    )
    dk = dk_part.sum(0)  # (Kc, D) fp32
    dvp = dvp_part.sum(0)  # (Kc, D) fp32: grad of p[:, None] * V
    dv = dvp * prior.float()[:, None]
    dprior = (dvp * v.float()).sum(1)  # the prior is shared by every head
    return dq.view(b, c, d), dk.to(k.dtype), dv.to(v.dtype), dprior.to(prior.dtype)


# ----------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile (Dynamo cannot trace the launchers), with fake versions
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("cit_fast::causal_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prior: torch.Tensor, num_heads: int,
            scale: float, return_attn: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> out (B, C, D), attn (B, H, C, Kc) or an empty (0,) tensor, lse (H, B*C) fp32."""
    out, attn, lse = causal_attention_forward(q, k, v, prior, num_heads, scale, return_attn)
    return out, attn if attn is not None else q.new_empty((0,)), lse


@_fwd_op.register_fake
def _fwd_fake(q, k, v, prior, num_heads, scale, return_attn):
    b, c, d = q.shape
    attn_shape = (b, num_heads, c, k.shape[0]) if return_attn else (0,)
    return (q.new_empty((b, c, d)), q.new_empty(attn_shape),
            q.new_empty((num_heads, b * c), dtype=torch.float32))


@torch.library.custom_op("cit_fast::causal_attention_bwd", mutates_args=())
def _bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prior: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, dout: torch.Tensor, dattn: Optional[torch.Tensor], num_heads: int,
            scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dq, dk, dv, dprior (contiguous, in the dtypes of q, k, v, prior)."""
    return causal_attention_backward(q, k, v, prior, out, lse, dout, dattn, num_heads, scale)


@_bwd_op.register_fake
def _bwd_fake(q, k, v, prior, out, lse, dout, dattn, num_heads, scale):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device),
            torch.empty(prior.shape, dtype=prior.dtype, device=prior.device))


# ----------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------
class CausalAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, prior, num_heads, scale, return_attn):
        out, attn, lse = _fwd_op(q, k, v, prior, num_heads, scale, return_attn)
        ctx.save_for_backward(q, k, v, prior, out, lse)
        ctx.num_heads, ctx.scale = num_heads, scale
        return (out, attn) if return_attn else out

    @staticmethod
    def backward(ctx, dout, dattn=None):
        q, k, v, prior, out, lse = ctx.saved_tensors
        dq, dk, dv, dprior = _bwd_op(q, k, v, prior, out, lse, dout, dattn, ctx.num_heads, ctx.scale)
        return dq, dk, dv, dprior, None, None, None


# ----------------------------------------------------------------------------------------------
# Functional entry point
# ----------------------------------------------------------------------------------------------
def causal_attention_triton(
    q: torch.Tensor,  # (B, C, D)
    k: torch.Tensor,  # (Kc, D)
    v: torch.Tensor,  # (Kc, D)
    prior: torch.Tensor,  # (Kc,)
    num_heads: int,
    scale: Optional[float] = None,
    return_attn: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Triton version of ``reference.causal_attention_ref`` (same arguments, same results)."""
    _, _, _, _, dh = _check_triton_args(q, k, v, prior, num_heads)
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(dh)
    return CausalAttentionFunction.apply(q, k, v, prior, num_heads, scale, bool(return_attn))
