"""cit_fast.kernels: fused ops with a Triton path on CUDA and a PyTorch reference elsewhere.

Installed as ``cit_fast.kernels`` (setup.py maps this top-level folder). Triton is imported lazily,
so this package imports on any machine.

Layout: ``reference.py`` (PyTorch definitions, what the tests compare against), one private file
per Triton op (``_composite.py``, ``_causal_attention.py``: kernels, launchers, autograd/custom op),
and ``_composite_cpu.py`` (the composite's CPU path: the reference's arithmetic in fewer passes). The files are
private on purpose: a submodule named ``composite`` would, once imported, rebind the package
attribute ``kernels.composite`` from the function below to the module.
"""
from __future__ import annotations

import os

import torch

from ._composite_cpu import composite_cpu
from .reference import (COMPOSITE_MODES, IMAGENET_MEAN, IMAGENET_STD, causal_attention_ref,
                        composite_ref)

__all__ = ["composite", "composite_ref", "composite_cpu", "causal_attention", "causal_attention_ref", "COMPOSITE_MODES",
           "IMAGENET_MEAN", "IMAGENET_STD", "use_triton"]


def use_triton(t: torch.Tensor, backend: str = "auto") -> bool:
    """Whether an op on tensor ``t`` should take the Triton path.

    backend: "auto" (Triton on CUDA tensors, or everywhere when TRITON_INTERPRET=1 and
    CIT_FAST_KERNELS=triton), "triton" (force), "torch" (force the PyTorch path: composite_cpu on a CPU, the reference elsewhere).
    """
    if backend == "torch":
        return False
    if backend == "triton":
        return True
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if os.environ.get("CIT_FAST_KERNELS") == "torch":
        return False
    if t.is_cuda:
        return True
    return os.environ.get("CIT_FAST_KERNELS") == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def composite(obj, mask, ctx=None, ctx_mask=None, *, backend: str = "auto", **kw):
    """Blend + flip + normalize + layout + cast in one pass; see ``reference.composite_ref``.

    Triton on CUDA; on a CPU the fused PyTorch path (``composite_cpu``, equal to the reference
    within float32 rounding); the reference itself on any other device.
    """
    if use_triton(obj, backend):
        from ._composite import composite_triton  # lazy: needs triton

        return composite_triton(obj, mask, ctx, ctx_mask, **kw)
    if obj.device.type == "cpu":
        return composite_cpu(obj, mask, ctx, ctx_mask, **kw)
    return composite_ref(obj, mask, ctx, ctx_mask, **kw)


def causal_attention(q, k, v, prior, num_heads, scale=None, return_attn=False, *, backend: str = "auto",
                     precision=None):
    """softmax(Q K^T * scale) @ (prior * V) per head; see ``reference.causal_attention_ref``.

    Differentiable on both paths (Triton: forward and backward kernels). precision (Triton, fp32
    inputs): "tf32" (default: tensor cores), "tf32x3" or "ieee" (exact fp32); the reference path
    follows torch's own matmul settings.
    """
    if use_triton(q, backend):
        from ._causal_attention import causal_attention_triton  # lazy: needs triton

        return causal_attention_triton(q, k, v, prior, num_heads, scale, return_attn, precision)
    return causal_attention_ref(q, k, v, prior, num_heads, scale, return_attn)
