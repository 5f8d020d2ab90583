"""Intervention cross-attention of the causal multi-label model, forward and backward in Triton.

    out = softmax(Q K^T * scale) @ (p[:, None] * V)        per head; E_z[.] in the VC R-CNN pattern

Q (B, C, D): label queries; K, V (Kc, D): the confounder dictionary, shared over the batch;
p (Kc,): its prior. D splits into H heads of DH = D/H. Since K and V are shared, the B*C query
rows are one long M axis: the forward is flash-attention over a short key axis (Kc <= a few
hundred, so one to four BLOCK_N tiles), with an online softmax. The prior is folded into the
probabilities, P' = P * p[None, :], so V goes from shared memory straight into the MMA
(``reference.causal_attention_ref`` is the definition).

Backward (dO given; dA too when the probabilities were returned and used):
    P = softmax(S), dP = (dO V^T) * p[None, :] + dA, delta = rowsum(dO*O) + rowsum(P*dA)
    dS = P * (dP - delta);  dQ = scale * dS K;  dK = scale * dS^T Q;  dV = (P * p)^T dO
    dp = colsum_M(P * (dO V^T)), summed over heads
Three launches: dQ (row-parallel, also writes delta); dK / dV / dp over SPLIT chunks of M (Kc is
small, so the M axis is split to fill the GPU: each chunk writes fp32 partials, deterministic, no
atomics); one reduction kernel that sums the partials, casts and writes dK, dV and dp (dp only
when the prior needs a gradient: the model's prior is a buffer).

Precision: fp16/bf16 inputs run on tensor cores with fp32 accumulation. fp32 inputs take
``precision`` = "tf32" by default: one tensor-core MMA per dot on operands the hardware truncates to
10 mantissa bits, measured 2.5e-3 of max|ref| off the float64 reference at the model's shapes
(PyTorch's default for fp32 convolutions is TF32 too); "tf32x3" splits each operand into hi + lo
parts for three MMAs (1e-6 of max|ref|, as exact as fp32, at 3x the MMAs and more registers: its
configs are smaller); "ieee" is exact fp32 FMA code, no tensor cores: what the tight fp32 tests
compare against the reference (bench/RESULTS.md, bench/kernels.py --precision-error).

Configs: ``_fwd_configs`` / ``_dq_configs`` / ``_dkv_configs`` list a few tile shapes per
(Kc, head dim, dtype, target), pruned by estimates of the registers and shared memory each needs;
``bench/kernels_aot.py`` compiles every survivor for sm_90 and sm_80 and checks there are no
spills, and ``pick_config`` times them on a GPU. Tiles and warps are not tuned on a GPU yet: none
was available when they were chosen (the AOT gate's figures are the only evidence).

The launchers are custom ops (``cit_fast::causal_attention_fwd`` / ``_bwd``, with fake versions)
called by the autograd.Function, so ``torch.compile(fullgraph=True)`` of a model using this op
traces it as two opaque nodes instead of failing inside Triton's launcher.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from ._triton_compat import Target, interpreting, pick_config, target_of, to_dtype, wave_slots
from .reference import check_attention_args

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
_LOG2E = 1.4426950408889634
PRECISIONS = ("tf32", "tf32x3", "ieee")
DEFAULT_FP32_PRECISION = "tf32"


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _mma(a, b, acc, ELEM: tl.constexpr, DOT_T: tl.constexpr, PRECISION: tl.constexpr, RNE: tl.constexpr):
    """acc + a @ b with operands rounded to the input dtype ELEM, fp32 accumulation.

    DOT_T is ELEM on GPUs, fp32 for bf16 under the interpreter; RNE: interpreter + bf16
    (both: see _triton_compat). Rounding through ELEM first keeps the GPU's numerics. Passing the
    accumulator lets the MMA accumulate in place (an async wgmma on Hopper).
    """
    a = to_dtype(a, ELEM, RNE).to(DOT_T)
    b = to_dtype(b, ELEM, RNE).to(DOT_T)
    return tl.dot(a, b, acc, input_precision=PRECISION)


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
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs: "tf32", "tf32x3", "ieee"
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
    zero = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start_n in range(0, KC, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < KC
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + offs_n[:, None] * s_km + col[None, :] * s_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + offs_n[:, None] * s_vm + col[None, :] * s_vd, mask=kv_mask, other=0.0)
        pr = tl.load(p_ptr + offs_n * s_p, mask=n_ok, other=0.0).to(tl.float32)  # (BN,)
        s = _mma(q, tl.trans(k), zero, ELEM, DOT_T, PRECISION, RNE) * qk_scale  # (BM, BN)
        s = tl.where(n_ok[None, :], s, float("-inf"))  # ragged Kc tail
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has a valid column
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = _mma(p * pr[None, :], v, acc, ELEM, DOT_T, PRECISION, RNE)  # prior folded into P
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
            s = _mma(q, tl.trans(k), zero, ELEM, DOT_T, PRECISION, RNE) * qk_scale
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
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs
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
    zero = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if HAS_DA:
        b = (offs_m // C_LABELS).to(tl.int64)
        c = offs_m % C_LABELS
        a_row = b * s_ab + h * s_ah + c * s_ac
        for start_n in range(0, KC, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_ok = offs_n < KC
            k = tl.load(k_ptr + offs_n[:, None] * s_km + col[None, :] * s_kd,
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            s = _mma(q, tl.trans(k), zero, ELEM, DOT_T, PRECISION, RNE) * qk_scale
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
        s = _mma(q, tl.trans(k), zero, ELEM, DOT_T, PRECISION, RNE) * qk_scale  # (BM, BN)
        p = tl.where(n_ok[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = _mma(do, tl.trans(v), zero, ELEM, DOT_T, PRECISION, RNE) * pr[None, :]  # dO (p*V)^T
        if HAS_DA:
            dp += tl.load(da_ptr + a_row[:, None] + offs_n[None, :] * s_ak,
                          mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
        ds = p * (dp - delta[:, None])
        dq = _mma(ds, k, dq, ELEM, DOT_T, PRECISION, RNE)
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
    part_ptr,  # (SPLIT, 2, KC, D) fp32 out: this chunk's shares of dK and of dV
    dpr_ptr,  # (SPLIT, H, KC) fp32 out: this chunk's share of dp, per head; if NEED_DPRIOR
    M, KC, C_LABELS, H,  # query rows, confounders, labels per sample, heads
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
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 inputs
    RNE: tl.constexpr,  # interpreter + bf16: round fp32 -> bf16 like a GPU (_triton_compat)
    HAS_DA: tl.constexpr,  # the probabilities have a gradient
    NEED_DPRIOR: tl.constexpr,  # the prior has a gradient
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
    pr = tl.load(p_ptr + offs_n * s_p, mask=n_ok, other=0.0).to(tl.float32)  # (BN,)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dpr = tl.zeros([BLOCK_N], tl.float32)
    zero = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
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
        st = _mma(k, tl.trans(q), zero, ELEM, DOT_T, PRECISION, RNE) * qk_scale
        pt = tl.where(m_ok[None, :], tl.exp2(st - lse[None, :]), 0.0)
        dv = _mma(pt * pr[:, None], do, dv, ELEM, DOT_T, PRECISION, RNE)  # (BN, BD): (P*p)^T dO
        dpt = _mma(v, tl.trans(do), zero, ELEM, DOT_T, PRECISION, RNE)  # (BN, BM): V dO^T
        if NEED_DPRIOR:
            dpr += tl.sum(pt * dpt, 1)
        dpt = dpt * pr[:, None]
        if HAS_DA:
            b = (offs_m // C_LABELS).to(tl.int64)
            c = offs_m % C_LABELS
            a_row = b * s_ab + h * s_ah + c * s_ac
            dpt += tl.load(da_ptr + a_row[None, :] + offs_n[:, None] * s_ak,
                           mask=n_ok[:, None] & m_ok[None, :], other=0.0).to(tl.float32)
        dst = pt * (dpt - delta[None, :])
        dk = _mma(dst, q, dk, ELEM, DOT_T, PRECISION, RNE)
    part = split.to(tl.int64) * 2 * KC * D + offs_n[:, None] * D + col[None, :]
    tl.store(part_ptr + part, dk * sm_scale, mask=nd_mask)
    tl.store(part_ptr + KC * D + part, dv, mask=nd_mask)
    if NEED_DPRIOR:
        tl.store(dpr_ptr + (split * H + h) * KC + offs_n, dpr, mask=n_ok)


@triton.jit
def _attn_bwd_reduce_kernel(
    part_ptr,  # (SPLIT, 2, KC, D) fp32 partial dK, dV
    dpr_ptr,  # (SPLIT, H, KC) fp32 partial dp; read if NEED_DPRIOR
    dk_ptr,  # (KC, D) out: dK in the keys' dtype, contiguous
    dv_ptr,  # (KC, D) out: dV, contiguous
    dprior_ptr,  # (KC,) out: dp in the prior's dtype; written if NEED_DPRIOR
    KC, D, SPLIT, H,  # confounders, model dim, chunks, heads
    NEED_DPRIOR: tl.constexpr,  # the prior has a gradient
    SPLIT_H_P2: tl.constexpr,  # next_power_of_2(SPLIT * H)
    BLOCK: tl.constexpr,  # elements of (KC, D) per program
    BLOCK_R: tl.constexpr,  # rows of dp per program
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # flat (KC * D) offsets: vectorised, no tails per row
    ok = offs < KC * D
    dk = tl.zeros([BLOCK], tl.float32)
    dv = tl.zeros([BLOCK], tl.float32)
    for s in range(0, SPLIT):
        base = part_ptr + s * 2 * KC * D  # the launcher keeps SPLIT * 2 * KC * D < 2**31
        dk += tl.load(base + offs, mask=ok, other=0.0)
        dv += tl.load(base + KC * D + offs, mask=ok, other=0.0)
    tl.store(dk_ptr + offs, dk.to(dk_ptr.dtype.element_ty), mask=ok)
    tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=ok)
    if NEED_DPRIOR and pid * BLOCK_R < KC:
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)  # (BR,) the programs' first rows cover KC
        sh = tl.arange(0, SPLIT_H_P2)
        vals = tl.load(dpr_ptr + sh[None, :] * KC + rows[:, None],
                       mask=(rows[:, None] < KC) & (sh[None, :] < SPLIT * H), other=0.0)
        tl.store(dprior_ptr + rows, tl.sum(vals, 1).to(dprior_ptr.dtype.element_ty), mask=rows < KC)


# ----------------------------------------------------------------------------------------------
# Configs: a few tile shapes per key, pruned by estimated registers and shared memory
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttnConfig:
    block_m: int  # query rows per tile
    block_n: int  # confounders per tile
    num_warps: int
    num_stages: int


REG_BUDGET = 176  # estimated fp32 tile registers per thread a config may use (ptxas needs the rest)


def _elem_bytes(dtype: torch.dtype, precision: str) -> int:
    """Bytes of an operand element; 8 stands for tf32x3's split operands (see _operands)."""
    if dtype == torch.float32:
        return 8 if precision == "tf32x3" else 4
    return 2


def _fits(regs: float, smem: float, target: Optional[Target]) -> bool:
    if target is None:
        return True
    return regs <= REG_BUDGET and smem <= target.smem_per_cta


def _p2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(x))


def _keep(cands: List[AttnConfig], regs_smem, target: Optional[Target]) -> List[AttnConfig]:
    """The candidates (in preference order) whose estimates fit the target; when none does, the
    one with the fewest estimated registers among those whose shared memory fits (a kernel that
    spills a little beats a launch that fails). ``pick_config`` then drops any that ptxas spills."""
    out, fallback = [], None
    for cfg in cands:
        regs, smem = regs_smem(cfg)
        if _fits(regs, smem, target):
            if cfg not in out:
                out.append(cfg)
        elif target is not None and smem <= target.smem_per_cta and (fallback is None or regs < fallback[0]):
            fallback = (regs, cfg)
    return out or ([fallback[1]] if fallback else [])


def _tiles(kc: int, sizes) -> List[int]:
    """Key-tile sizes to try: those <= next_power_of_2(Kc) (at least 16), largest first."""
    top = _p2(kc)
    return sorted({min(b, top) for b in sizes}, reverse=True)


def _operands(target: Target, e: int, *tiles: int) -> float:
    """Registers of MMA operand fragments: mma.sync (sm_80) reads both operands from registers,
    wgmma (sm_90) its B operand (and usually A) from shared memory. e = 8 for tf32x3, whose hi and
    lo parts pass through registers on both."""
    if e == 8:
        return 2 * sum(tiles)
    return 0.0 if target.cc >= 90 else sum(tiles) * e / 4


def _fwd_configs(m: int, kc: int, bd: int, dtype: torch.dtype, precision: str, return_attn: bool,
                 target: Optional[Target]) -> List[AttnConfig]:
    e = _elem_bytes(dtype, precision)
    if target is None:  # interpreter: small tiles, the ragged paths exercised
        return [AttnConfig(min(64, _p2(m)), min(64, _p2(kc)), 4, 1)]
    top = _p2(kc)
    prefs = [(64, 64, 4), (64, 128, 4), (128, 64, 8), (64, 32, 4), (128, 32, 8), (64, 16, 4)]
    prefs += [(64, 32, 8), (64, 16, 8)]  # two warp groups over 64 rows
    if target.cc < 90 or e == 8:  # mma.sync tiles (its operands in registers): fp32 D=128 on sm_80,
        prefs += [(32, 64, 4), (32, 32, 4), (32, 16, 4)]  # and tf32x3 D=128, which spills every wgmma tile
    cands = [AttnConfig(bm, min(bn, top), w, 2 if kc > min(bn, top) else 1) for bm, bn, w in prefs]

    def cost(cf):
        thr = 32 * cf.num_warps
        regs = (cf.block_m * bd + (4 if return_attn else 3) * cf.block_m * cf.block_n  # S, P, P * prior
                + _operands(target, e, cf.block_m * bd, cf.block_n * bd, cf.block_m * cf.block_n)) / thr
        smem = (cf.block_m * bd + cf.num_stages * 2 * cf.block_n * bd + cf.block_m * cf.block_n) * min(e, 4)
        return regs, smem
    return _keep(cands, cost, target)


def _dq_configs(m: int, kc: int, bd: int, dtype: torch.dtype, precision: str, has_da: bool,
                target: Optional[Target]) -> List[AttnConfig]:
    e = _elem_bytes(dtype, precision)
    if target is None:
        return [AttnConfig(min(64, _p2(m)), min(64, _p2(kc)), 4, 1)]
    top = _p2(kc)
    prefs = [(64, 64, 4), (64, 32, 4), (128, 64, 8), (128, 32, 8), (64, 16, 4)]
    if target.cc >= 90:
        prefs.insert(2, (64, 64, 8))  # (two warp groups; on sm_80 this layout needs 255 registers)
    prefs += [(64, 16, 8)]
    if target.cc < 90 or e == 8:  # Hopper's wgmma needs 64-row tiles; mma.sync can take 32 (fp32
        prefs += [(32, 32, 4), (32, 16, 4)]  # D=128 on sm_80 fits no other; tf32x3 D=128 on sm_90)
    cands = [AttnConfig(bm, min(bn, top), w, 2 if kc > min(bn, top) else 1) for bm, bn, w in prefs]

    def cost(cf):
        thr = 32 * cf.num_warps
        regs = (cf.block_m * bd * (1 + 2 * min(e, 4) / 4) + 4 * cf.block_m * cf.block_n
                + _operands(target, e, cf.block_n * bd, cf.block_m * cf.block_n)) / thr
        smem = (2 * cf.block_m * bd + cf.num_stages * 2 * cf.block_n * bd + cf.block_m * cf.block_n) * min(e, 4)
        return regs, smem
    return _keep(cands, cost, target)


def _dkv_configs(m: int, kc: int, bd: int, dtype: torch.dtype, precision: str, has_da: bool,
                 target: Optional[Target]) -> List[AttnConfig]:
    e = _elem_bytes(dtype, precision)
    if target is None:
        return [AttnConfig(min(64, _p2(m)), min(64, _p2(kc)), 4, 1)]
    # Hopper's wgmma takes 64 rows per warp group: dK/dV tiles are 64 key rows even for Kc = 16
    # (sm_80: 8 warps over 64 rows need 255 registers and spill; 16 query rows a step: the
    # smallest tile, for what spills at 32 (fp32 D=128 with return_attn, tf32x3 D=128))
    mma_tiles = [(bn, bm, w) for bn in _tiles(kc, (64, 32, 16)) for bm, w in ((64, 4), (32, 4), (16, 4))]
    if target.cc >= 90:
        tiles = [(64, bm, w) for bm, w in ((64, 4), (32, 4), (64, 8), (32, 8), (16, 8))]
        if e == 8:  # tf32x3 D=128 spills every wgmma tile: mma.sync ones after them
            tiles += mma_tiles
    else:
        tiles = mma_tiles
    cands = [AttnConfig(bm, bn, w, 2) for bn, bm, w in tiles]

    def cost(cf):
        thr = 32 * cf.num_warps
        regs = (cf.block_n * bd * (2 + 2 * min(e, 4) / 4) + 4 * cf.block_n * cf.block_m
                + _operands(target, e, cf.block_m * bd, cf.block_n * cf.block_m)) / thr
        smem = (2 * cf.block_n * bd + cf.num_stages * 2 * cf.block_m * bd + 2 * cf.block_n * cf.block_m) * min(e, 4)
        return regs, smem
    return _keep(cands, cost, target)


def _dot_types(q: torch.Tensor, precision: Optional[str]):
    """(ELEM, DOT_T, PRECISION, RNE) constexprs for q's dtype, device and fp32 precision."""
    elem = _TL_DTYPES[q.dtype]
    emulate = interpreting(q) and q.dtype == torch.bfloat16  # see _triton_compat
    dot_t = tl.float32 if emulate else elem
    if q.dtype != torch.float32:
        return elem, dot_t, "tf32", emulate  # (input_precision only matters for fp32 operands)
    return elem, dot_t, precision or DEFAULT_FP32_PRECISION, emulate


def _check_precision(precision: Optional[str]) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (or None for {DEFAULT_FP32_PRECISION!r}), "
                         f"got {precision!r}")


# Per-program fixed cost of the dK/dV kernel (load the K/V tile, write the fp32 partials), in
# units of one BLOCK_M row block of work: the split model below charges it once per program.
_DKV_PROGRAM_OVERHEAD_BLOCKS = 2


def _split(m_blocks: int, n_blocks: int, heads: int, slots: Optional[int]) -> int:
    """Row chunks of the dK/dV reduction, from a wave model of the GPU.

    One chunk launches n_blocks * heads programs; with ``slots`` resident at once, s chunks take
    ceil(s * programs / slots) waves of ceil(m_blocks / s) + overhead row blocks each. The split is
    the s that minimizes that (ties: the smaller s, so less workspace to reduce): a grid that fills
    its waves, not the largest split that fits in one (which, when one chunk is just over half the
    GPU, leaves half of it idle). 2 on the interpreter (the partial-sum path exercised).
    """
    if slots is None:
        return max(1, min(m_blocks, 2))
    programs = max(1, n_blocks * heads)

    def cost(s: int) -> int:
        return -(-s * programs // slots) * (-(-m_blocks // s) + _DKV_PROGRAM_OVERHEAD_BLOCKS)

    return min(range(1, max(1, m_blocks) + 1), key=lambda s: (cost(s), s))


def _check_triton_args(q, k, v, prior, num_heads):
    dims = check_attention_args(q, k, v, prior, num_heads)
    if q.dtype not in _TL_DTYPES:
        raise ValueError(f"q: the Triton path takes float32/float16/bfloat16, got {q.dtype}")
    return dims


# ----------------------------------------------------------------------------------------------
# Launchers (arguments checked once, by causal_attention_triton)
# ----------------------------------------------------------------------------------------------
def causal_attention_forward(q, k, v, prior, num_heads: int, scale: float, return_attn: bool,
                             precision: Optional[str] = None):
    """Launch the forward kernel. Returns out (B, C, D), attn (B, H, C, Kc) or None, lse (H, M)."""
    b, c, d = q.shape
    kc, dh = k.shape[0], d // num_heads
    m = b * c
    q2 = q.reshape(m, d)  # a view whenever q's (B, C) dims are mergeable
    out = torch.empty((b, c, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((num_heads, m), dtype=torch.float32, device=q.device)
    attn = (torch.empty((b, num_heads, c, kc), dtype=q.dtype, device=q.device) if return_attn
            else None)
    if m == 0:
        return out, attn, lse
    a_t = attn if attn is not None else out.view(b, 1, c, d)  # placeholder, never written
    elem, dot_t, prec, rne = _dot_types(q, precision)
    bd = _p2(dh)
    target = target_of(q.device)
    o2 = out.view(m, d)
    args = (q2, k, v, prior, o2, lse, a_t, m, kc, c,
            q2.stride(0), q2.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), prior.stride(0),
            o2.stride(0), o2.stride(1), *a_t.stride(), scale * _LOG2E)

    def kw(cfg):
        return dict(DH=dh, ELEM=elem, DOT_T=dot_t, PRECISION=prec, RNE=rne, RETURN_ATTN=return_attn,
                    BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=bd, num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages)

    def launch(cfg):
        return lambda: _attn_fwd_kernel[(triton.cdiv(m, cfg.block_m), num_heads)](*args, **kw(cfg))

    cands = _fwd_configs(m, kc, bd, q.dtype, prec, return_attn, target)
    key = ("fwd", kc, dh, q.dtype, prec, return_attn, target)
    cfg = pick_config(key, cands, q.device, lambda cf: _attn_fwd_kernel.warmup(*args, grid=(1,), **kw(cf)), launch)
    launch(cfg)()
    return out, attn, lse


def causal_attention_backward(q, k, v, prior, out, lse, dout, dattn, num_heads: int, scale: float,
                              need_dprior: bool = True, precision: Optional[str] = None):
    """Launch the three backward kernels. Returns dq, dk, dv, dprior ((0,) if not need_dprior)."""
    b, c, d = q.shape
    kc, dh = k.shape[0], d // num_heads
    m = b * c
    dev = q.device
    q2, o2 = q.reshape(m, d), out.reshape(m, d)
    do2 = dout.reshape(m, d)
    dq = torch.empty((m, d), dtype=q.dtype, device=dev)
    dk = torch.empty((kc, d), dtype=k.dtype, device=dev)
    dv = torch.empty((kc, d), dtype=v.dtype, device=dev)
    dprior = torch.empty((kc,) if need_dprior else (0,), dtype=prior.dtype, device=dev)
    if m == 0:
        return dq.view(b, c, d), dk.zero_(), dv.zero_(), dprior.zero_()
    has_da = dattn is not None
    elem, dot_t, prec, rne = _dot_types(q, precision)
    bd = _p2(dh)
    target = target_of(dev)
    in_strides = (q2.stride(0), q2.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                  prior.stride(0))
    common = dict(DH=dh, ELEM=elem, DOT_T=dot_t, PRECISION=prec, RNE=rne, HAS_DA=has_da)

    # dQ, and delta for the dK/dV kernel
    dq_cands = _dq_configs(m, kc, bd, q.dtype, prec, has_da, target)
    kv_cands = _dkv_configs(m, kc, bd, q.dtype, prec, has_da, target)
    delta = torch.empty((num_heads, m), dtype=torch.float32, device=dev)
    da = dattn if has_da else lse.view(1, 1, 1, -1)  # placeholder, never read
    dq_args = (q2, k, v, prior, o2, do2, da, lse, delta, dq, m, kc, c, *in_strides,
               o2.stride(0), o2.stride(1), do2.stride(0), do2.stride(1), *da.stride(), dq.stride(0), dq.stride(1),
               scale * _LOG2E, scale)

    def dq_kw(cfg):
        return dict(common, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=bd, num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages)

    def dq_launch(cfg):
        return lambda: _attn_bwd_dq_kernel[(triton.cdiv(m, cfg.block_m), num_heads)](*dq_args, **dq_kw(cfg))

    cfg = pick_config(("dq", kc, dh, q.dtype, prec, has_da, target), dq_cands, dev,
                      lambda cf: _attn_bwd_dq_kernel.warmup(*dq_args, grid=(1,), **dq_kw(cf)), dq_launch)
    dq_launch(cfg)()

    # dK, dV, dp partials over SPLIT row chunks: as many chunks as the wave model picks (_split)
    state = {}

    def kv_args(per_split, part, dpr):
        return (q2, k, v, prior, do2, da, lse, delta, part, dpr, m, kc, c, num_heads, per_split, *in_strides,
                do2.stride(0), do2.stride(1), *da.stride(), scale * _LOG2E, scale)

    def kv_kw(cfg):
        return dict(common, D=d, NEED_DPRIOR=need_dprior, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=bd,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    def kv_plan(cfg):
        """(split, rows per split, workspace) of cfg: the grid sized to full waves (_split)."""
        if cfg not in state:
            m_blocks, n_blocks = triton.cdiv(m, cfg.block_m), triton.cdiv(kc, cfg.block_n)
            slots = None
            if target is not None:
                probe = kv_args(m_blocks, delta, delta)
                slots = wave_slots(_attn_bwd_dkv_kernel, ("dkv", kc, dh, q.dtype, prec, has_da, need_dprior, cfg, target),
                                   target, probe, kv_kw(cfg))
            split = _split(m_blocks, n_blocks, num_heads, slots)
            per_split = triton.cdiv(m_blocks, split)
            split = triton.cdiv(m_blocks, per_split)
            ws = torch.empty(split * (2 * kc * d + (num_heads * kc if need_dprior else 0)), dtype=torch.float32,
                             device=dev)
            state[cfg] = (split, per_split, ws[: split * 2 * kc * d], ws[split * 2 * kc * d:] if need_dprior else ws)
        return state[cfg]

    def kv_launch(cfg):
        split, per_split, part, dpr = kv_plan(cfg)
        grid = (triton.cdiv(kc, cfg.block_n), num_heads, split)
        return lambda: _attn_bwd_dkv_kernel[grid](*kv_args(per_split, part, dpr), **kv_kw(cfg))

    def kv_warm(cfg):
        split, per_split, part, dpr = kv_plan(cfg)
        return _attn_bwd_dkv_kernel.warmup(*kv_args(per_split, part, dpr), grid=(1,), **kv_kw(cfg))

    cfg = pick_config(("dkv", kc, dh, q.dtype, prec, has_da, need_dprior, target), kv_cands, dev, kv_warm, kv_launch)
    kv_launch(cfg)()
    split, _, part, dpr = kv_plan(cfg)

    # one pass: sum the partials, cast, dp summed over chunks and heads
    if split * 2 * kc * d >= 2**31:
        raise ValueError(f"causal attention: Kc={kc} x D={d} is too large for the Triton backward")
    block = 1024
    n_prog = triton.cdiv(kc * d, block)
    block_r = max(16, triton.next_power_of_2(triton.cdiv(kc, n_prog)))
    _attn_bwd_reduce_kernel[(n_prog,)](
        part, dpr, dk, dv, dprior if need_dprior else dk, kc, d, split, num_heads,
        NEED_DPRIOR=need_dprior, SPLIT_H_P2=triton.next_power_of_2(split * num_heads), BLOCK=block,
        BLOCK_R=block_r, num_warps=4)
    return dq.view(b, c, d), dk, dv, dprior


# ----------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile (Dynamo cannot trace the launchers), with fake versions
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("cit_fast::causal_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prior: torch.Tensor, num_heads: int,
            scale: float, return_attn: bool, precision: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> out (B, C, D), attn (B, H, C, Kc) or an empty (0,) tensor, lse (H, B*C) fp32."""
    out, attn, lse = causal_attention_forward(q, k, v, prior, num_heads, scale, return_attn, precision)
    return out, attn if attn is not None else q.new_empty((0,)), lse


@_fwd_op.register_fake
def _fwd_fake(q, k, v, prior, num_heads, scale, return_attn, precision):
    b, c, d = q.shape
    attn_shape = (b, num_heads, c, k.shape[0]) if return_attn else (0,)
    return (q.new_empty((b, c, d)), q.new_empty(attn_shape),
            q.new_empty((num_heads, b * c), dtype=torch.float32))


@torch.library.custom_op("cit_fast::causal_attention_bwd", mutates_args=())
def _bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prior: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, dout: torch.Tensor, dattn: Optional[torch.Tensor], num_heads: int,
            scale: float, need_dprior: bool, precision: str
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dq, dk, dv, dprior (contiguous, in the dtypes of q, k, v, prior; dprior (0,) if not needed)."""
    return causal_attention_backward(q, k, v, prior, out, lse, dout, dattn, num_heads, scale, need_dprior,
                                     precision)


@_bwd_op.register_fake
def _bwd_fake(q, k, v, prior, out, lse, dout, dattn, num_heads, scale, need_dprior, precision):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device),
            torch.empty(prior.shape if need_dprior else (0,), dtype=prior.dtype, device=prior.device))


# ----------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------
class CausalAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, prior, num_heads, scale, return_attn, precision):
        out, attn, lse = _fwd_op(q, k, v, prior, num_heads, scale, return_attn, precision)
        ctx.save_for_backward(q, k, v, prior, out, lse)
        ctx.num_heads, ctx.scale, ctx.precision = num_heads, scale, precision
        ctx.set_materialize_grads(False)  # an unused attn output gets no (zero) gradient to read
        return (out, attn) if return_attn else out

    @staticmethod
    def backward(ctx, dout, dattn=None):
        q, k, v, prior, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        need_dprior = bool(ctx.needs_input_grad[3])  # the model's prior is a buffer: skipped
        dq, dk, dv, dprior = _bwd_op(q, k, v, prior, out, lse, dout, dattn, ctx.num_heads, ctx.scale,
                                     need_dprior, ctx.precision)
        return dq, dk, dv, dprior if need_dprior else None, None, None, None, None


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
    precision: Optional[str] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Triton version of ``reference.causal_attention_ref`` (same arguments, same results).

    precision: for fp32 inputs, "tf32" (default), "tf32x3" or "ieee" (see the module doc).
    """
    _, _, _, _, dh = _check_triton_args(q, k, v, prior, num_heads)
    _check_precision(precision)
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(dh)
    prec = (precision or DEFAULT_FP32_PRECISION) if q.dtype == torch.float32 else "tf32"
    return CausalAttentionFunction.apply(q, k, v, prior, num_heads, scale, bool(return_attn), prec)
