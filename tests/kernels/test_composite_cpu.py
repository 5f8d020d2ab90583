"""The composite's CPU path (kernels/_composite_cpu.py) vs the reference, bitwise: every mode, input
kind, flip, layout and output dtype; strides, mixed inputs, errors."""
from __future__ import annotations

import pytest
import torch

from cit_fast.kernels import COMPOSITE_MODES, composite, composite_cpu, composite_ref
from tests.kernels.test_composite import _inputs as kernel_inputs, _shapes

SHAPES = [(1, 7, 5), (3, 33, 17), (5, 16, 24)]
OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(n, h, w, kind, seed=0):
    """obj, mask, ctx, ctx_mask, flip as the Triton tests make them; kind 'bool masks' too."""
    obj, mask, ctx, ctx_mask, flip = kernel_inputs(n, h, w, "uint8" if kind == "bool masks" else kind,
                                                   torch.device("cpu"), seed)
    if kind == "bool masks":
        mask, ctx_mask = mask > 127, ctx_mask > 127
    return obj, mask, ctx, ctx_mask, flip


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("flip", [False, True], ids=["noflip", "flip"])
@pytest.mark.parametrize("kind", ["uint8", "float32", "bool masks"])
@pytest.mark.parametrize("mode", COMPOSITE_MODES)
@pytest.mark.parametrize("shape", _shapes(SHAPES, (3, 33, 17)))
def test_bitwise_equal_to_reference(shape, mode, kind, flip, channels_last, dtype):
    obj, mask, ctx, ctx_mask, flips = _inputs(*shape, kind)
    kw = dict(mode=mode, flip=flips if flip else None, channels_last=channels_last, out_dtype=dtype)
    got, ref = _tuple(composite_cpu(obj, mask, ctx, ctx_mask, **kw)), _tuple(composite_ref(obj, mask, ctx, ctx_mask, **kw))
    assert len(got) == len(ref) == (2 if mode in ("double", "pair") else 1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for i, (a, r) in enumerate(zip(got, ref)):
        assert a.dtype == dtype and a.shape == r.shape and a.stride() == r.stride(), (i, a.stride(), r.stride())
        assert a.is_contiguous(memory_format=fmt)
        assert torch.equal(a, r), f"{mode} output {i}: max diff {(a.float() - r.float()).abs().max()}"


def test_flip_is_applied_per_sample():
    obj, mask, ctx, _, _ = _inputs(2, 6, 5, "uint8", seed=3)
    got = composite_cpu(obj, mask, ctx, mode="single", flip=torch.tensor([True, False]))
    by_hand = composite_ref(obj.flip(2), mask.flip(2), ctx.flip(2), mode="single")
    plain = composite_ref(obj, mask, ctx, mode="single")
    assert torch.equal(got[0], by_hand[0]) and torch.equal(got[1], plain[1])
    assert not torch.allclose(got[0], plain[0])


def test_mixed_inputs_strides_and_tensor_stats():
    """uint8 object + fp16 context (blended in 0..1), bool + fp32 masks, strided views, integer flip,
    mean/std as tensors, and a one-channel image with its own statistics."""
    g = torch.Generator().manual_seed(1)
    n, h, w = 3, 9, 11
    obj = torch.randint(0, 256, (n, w, h, 3), dtype=torch.uint8, generator=g).transpose(1, 2)
    ctx = torch.rand(n, h, w, 4, generator=g).half()[..., 1:]
    mask = torch.rand(n, h, w, generator=g) > 0.5
    ctx_mask = torch.rand(n, h, w, generator=g)
    flip = torch.tensor([1, 7, 0, 7, 1, 7])[::2]
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    for mode in COMPOSITE_MODES:
        for cl in (False, True):
            kw = dict(mode=mode, flip=flip, mean=mean, std=std, channels_last=cl)
            for i, (a, r) in enumerate(zip(_tuple(composite_cpu(obj, mask, ctx, ctx_mask, **kw)),
                                           _tuple(composite_ref(obj, mask, ctx, ctx_mask, **kw)))):
                assert a.stride() == r.stride() and torch.equal(a, r), f"{mode} output {i}"
    grey = obj[..., :1]
    assert torch.equal(composite_cpu(grey, None, mode="none", mean=(0.5,), std=(0.25,)),
                       composite_ref(grey, None, mode="none", mean=(0.5,), std=(0.25,)))


def test_inputs_are_left_alone_and_empty_batches_work():
    obj, mask, ctx, ctx_mask, flips = _inputs(2, 4, 8, "float32")
    before = [t.clone() for t in (obj, mask, ctx, ctx_mask)]
    for mode in COMPOSITE_MODES:
        composite_cpu(obj, mask, ctx, ctx_mask, mode=mode, flip=flips)
    assert all(torch.equal(a, b) for a, b in zip(before, (obj, mask, ctx, ctx_mask)))
    assert composite_cpu(obj[:0], mask[:0], ctx[:0], mode="single").shape == (0, 3, 4, 8)


def test_dispatch_and_errors():
    obj, mask, ctx, _, flips = _inputs(2, 4, 8, "uint8")
    assert torch.equal(composite(obj, mask, ctx, flip=flips), composite_cpu(obj, mask, ctx, flip=flips))
    assert torch.equal(composite(obj, mask, ctx, flip=flips, backend="torch"), composite_cpu(obj, mask, ctx, flip=flips))
    with pytest.raises(ValueError, match="ctx must have shape"):
        composite_cpu(obj, mask, ctx[:, :2], mode="single")
    with pytest.raises(ValueError, match="needs ctx_mask"):
        composite_cpu(obj, mask, ctx, mode="double")
