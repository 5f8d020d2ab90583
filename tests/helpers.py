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


def image_batch(image: torch.Tensor, label: torch.Tensor, index=None):
    """A composed single-branch batch by hand (data/pipelines/batch.py), samples numbered 0..B-1 unless given."""
    from cit_fast.data.pipelines.batch import ImageBatch

    index = torch.arange(len(image)) if index is None else index
    return ImageBatch(image=image, label=label, index=index, partner=index)


def assert_same_batch(a, b) -> None:
    """Two composed batches of the same kind hold equal tensors in every field."""
    import dataclasses

    assert type(a) is type(b), (type(a).__name__, type(b).__name__)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert (x is None) == (y is None), f.name
        if x is not None:
            assert torch.equal(x, y), f.name
