"""Low-precision bound used by the kernel tests (flash-attention's test_layer_norm.py pattern)."""
from __future__ import annotations

import torch

from tests.helpers import assert_close


def assert_kernel_close(actual: torch.Tensor, torch_lp: torch.Tensor, ref32: torch.Tensor, dtype: torch.dtype,
                        atol: float, rtol: float, name: str) -> None:
    """dtype: the precision the op ran in (a tensor may be fp32 within an fp16 op, e.g. a grad of
    an fp32 prior).

    fp32: elementwise atol/rtol against the fp32 reference.

    fp16/bf16: the kernel may be off the fp32 reference by at most twice what PyTorch itself is off
    in that dtype, plus atol + rtol * max|ref32|:
        max|actual - ref32| <= 2 * max|torch_lp - ref32| + atol + rtol * max|ref32|
    """
    assert actual.dtype == torch_lp.dtype, f"{name}: dtype {actual.dtype} != PyTorch's {torch_lp.dtype}"
    if dtype == torch.float32:
        assert_close(actual, ref32, atol, rtol, name)
        return
    assert actual.shape == ref32.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(ref32.shape)}"
    ref = ref32.detach().float()
    err = (actual.detach().float() - ref).abs().max().item()
    err_pt = (torch_lp.detach().float() - ref).abs().max().item()
    bound = 2 * err_pt + atol + rtol * ref.abs().max().item()
    assert err <= bound, (f"{name} ({dtype}): max |kernel - ref32| = {err:.3g} > bound {bound:.3g} "
                          f"(2 * torch {dtype} error {err_pt:.3g} + atol {atol} + rtol {rtol} * max|ref|)")
