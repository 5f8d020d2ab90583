"""Shared test helpers."""
from __future__ import annotations

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, name: str = "") -> None:
    """assert_allclose that reports where and by how much two tensors differ (xformers style)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().float().cpu()
    e = expected.detach().float().cpu()
    diff = (a - e).abs()
    tol = atol + rtol * e.abs()
    bad = diff > tol
    if bad.any():
        idx = tuple(int(i) for i in (bad.nonzero()[0]))
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ; max abs diff {diff.max():.3g} "
            f"(atol={atol}, rtol={rtol}); first at {idx}: got {a[idx]:.6g}, expected {e[idx]:.6g}")
