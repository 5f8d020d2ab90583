"""Where Triton's CPU interpreter (TRITON_INTERPRET=1, Triton 3.8) computes differently from a GPU,
and the small helpers the kernels use so that CPU tests check what the GPU computes.

1. fp32 -> bf16 casts truncate in the interpreter (``_convert_float`` ignores the rounding mode for
   bf16); GPUs round to nearest even. ``to_dtype(..., EMULATE_RNE=True)`` rounds the fp32 bits
   first, after which the interpreter's truncation is exact.
2. ``tl.dot`` on bf16 operands multiplies their raw uint16 storage in the interpreter. The
   attention kernel hands bf16 operands to ``tl.dot`` as fp32 there (exact: bf16 -> fp32 is).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def interpreting(t: torch.Tensor) -> bool:
    """Triton runs on non-CUDA tensors only under the interpreter."""
    return not t.is_cuda


@triton.jit
def to_dtype(x, DTYPE: tl.constexpr, EMULATE_RNE: tl.constexpr):
    """x -> DTYPE, rounding to nearest even. EMULATE_RNE: interpreter and DTYPE is bf16 (see 1.)."""
    if EMULATE_RNE:
        if x.dtype == tl.float32:
            bits = x.to(tl.uint32, bitcast=True)
            bits = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16) << 16
            x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)
