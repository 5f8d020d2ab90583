"""Triton composite vs the PyTorch reference: every mode, input kind, flip, layout and output dtype."""
from __future__ import annotations

import time

import pytest
import torch

from cit_fast import kernels
from cit_fast.kernels import COMPOSITE_MODES, composite, composite_ref, use_triton
from tests.helpers import assert_close
from tests.kernels.tolerance import assert_kernel_close

# (N, H, W): tiny, ragged, and one that spans several tiles in both H and W with ragged edges.
SHAPES = [(1, 7, 5), (3, 33, 17), (2, 70, 45)]
_SLOW = pytest.mark.slow  # make test-fast keeps one shape of each matrix (ragged, more than one tile)


def _shapes(shapes, fast):
    return [pytest.param(s, id="x".join(map(str, s)), marks=() if s == fast else _SLOW) for s in shapes]

OUT_DTYPES = [  # dtype, atol, rtol
    (torch.float32, 1e-5, 1e-5),
    (torch.float16, 1e-3, 0.0),
    (torch.bfloat16, 8e-3, 0.0),
]


def _inputs(n, h, w, kind, device, seed=0):
    """obj, mask, ctx, ctx_mask, flip; kind 'uint8' (0..255) or 'float32' (0..1)."""
    g = torch.Generator().manual_seed(seed)
    obj = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)
    ctx = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)
    mask = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=g)
    ctx_mask = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=g)
    if kind == "float32":
        obj, ctx, mask, ctx_mask = (t.float() / 255 for t in (obj, ctx, mask, ctx_mask))
    flip = torch.arange(n) % 2 == 0  # mixed: sample 0 flipped, sample 1 not, ...
    return [t.to(device) for t in (obj, mask, ctx, ctx_mask, flip)]


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("dtype, atol, rtol", OUT_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("flip", [False, True], ids=["noflip", "flip"])
@pytest.mark.parametrize("kind", ["uint8", "float32"])
@pytest.mark.parametrize("mode", COMPOSITE_MODES)
@pytest.mark.parametrize("shape", _shapes(SHAPES, (3, 33, 17)))
def test_composite_matches_reference(shape, mode, kind, flip, channels_last, dtype, atol, rtol, device):
    obj, mask, ctx, ctx_mask, flips = _inputs(*shape, kind, device)
    kw = dict(mode=mode, flip=flips if flip else None, channels_last=channels_last)
    got = _as_tuple(composite(obj, mask, ctx, ctx_mask, backend="triton", out_dtype=dtype, **kw))
    ref32 = _as_tuple(composite_ref(obj, mask, ctx, ctx_mask, out_dtype=torch.float32, **kw))
    ref_lp = _as_tuple(composite_ref(obj, mask, ctx, ctx_mask, out_dtype=dtype, **kw))
    assert len(got) == len(ref32) == (2 if mode in ("double", "pair") else 1)
    n, h, w = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for i, (a, r32, rlp) in enumerate(zip(got, ref32, ref_lp)):
        assert a.shape == (n, 3, h, w) and a.device.type == device.type
        assert a.is_contiguous(memory_format=fmt), f"output {i} not in {fmt}"
        assert a.stride() == rlp.stride()
        assert_kernel_close(a, rlp, r32, dtype, atol, rtol, f"{mode} output {i}")
        if device.type == "cpu":  # interpreter: the reference's fp32 ops in its order -> same bits
            assert torch.equal(a, rlp), f"{mode} output {i}: not bitwise equal to composite_ref"


# Widths that are multiples of 8 take the packed kernel (32-bit words, whole octets of pixels):
# one octet; 3 octets a row over 9 rows; 5 a row over 13 rows (a ragged last tile per image).
PACKED_SHAPES = [(1, 3, 8), (3, 9, 24), (2, 13, 40)]


@pytest.fixture
def packed_calls(monkeypatch):
    """Counts launches of the packed kernel (and still runs it)."""
    from cit_fast.kernels import _composite

    calls = []
    real = _composite._launch_packed
    monkeypatch.setattr(_composite, "_launch_packed", lambda *a, **k: calls.append(a[7]) or real(*a, **k))
    return calls


@pytest.mark.parametrize("dtype, atol, rtol", OUT_DTYPES[::2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("flip", [False, True], ids=["noflip", "flip"])
@pytest.mark.parametrize("mode", COMPOSITE_MODES)
@pytest.mark.parametrize("shape", _shapes(PACKED_SHAPES, (2, 13, 40)))
def test_packed_kernel_matches_reference(shape, mode, flip, channels_last, dtype, atol, rtol, device, packed_calls):
    obj, mask, ctx, ctx_mask, flips = _inputs(*shape, "uint8", device, seed=21)
    kw = dict(mode=mode, flip=flips if flip else None, channels_last=channels_last)
    got = _as_tuple(composite(obj, mask, ctx, ctx_mask, backend="triton", out_dtype=dtype, **kw))
    ref32 = _as_tuple(composite_ref(obj, mask, ctx, ctx_mask, out_dtype=torch.float32, **kw))
    ref_lp = _as_tuple(composite_ref(obj, mask, ctx, ctx_mask, out_dtype=dtype, **kw))
    assert packed_calls == [mode]
    for i, (a, r32, rlp) in enumerate(zip(got, ref32, ref_lp)):
        assert a.stride() == rlp.stride()
        assert_kernel_close(a, rlp, r32, dtype, atol, rtol, f"{mode} output {i}")
        if device.type == "cpu":
            assert torch.equal(a, rlp), f"{mode} output {i}: not bitwise equal to composite_ref"


def test_packed_kernel_bool_masks_and_half_output(device, packed_calls):
    obj, mask, ctx, ctx_mask, flips = _inputs(3, 5, 16, "uint8", device, seed=22)
    mask, ctx_mask = mask > 127, ctx_mask > 127
    for mode in COMPOSITE_MODES:
        kw = dict(mode=mode, flip=flips, out_dtype=torch.float16, channels_last=mode in ("pair", "none"))
        got = _as_tuple(composite(obj, mask, ctx, ctx_mask, backend="triton", **kw))
        for i, (a, r) in enumerate(zip(got, _as_tuple(composite_ref(obj, mask, ctx, ctx_mask, **kw)))):
            assert torch.equal(a, r) if device.type == "cpu" else (a.float() - r.float()).abs().max() < 4e-3, mode
    assert packed_calls == list(COMPOSITE_MODES)


def test_generic_kernel_takes_what_packing_cannot(device, packed_calls):
    """A width not a multiple of 8, a strided object, float images: the per-pixel kernel."""
    obj, mask, ctx, _, flips = _inputs(2, 6, 20, "uint8", device, seed=23)
    strided = obj.flip(1)  # negative row stride
    fobj = obj.float() / 255
    for o, c, w in ((obj[:, :, :-2], ctx[:, :, :-2], 18), (strided, ctx, 20), (fobj, ctx, 20)):
        got = composite(o, mask[:, :, :w], c, mode="single", flip=flips, backend="triton")
        assert torch.equal(got, composite_ref(o, mask[:, :, :w], c, mode="single", flip=flips)) or device.type != "cpu"
    assert packed_calls == []


def test_flip_really_flips(device):
    """Guards the reference too: flipping the inputs by hand == the flip flag."""
    obj, mask, ctx, _, _ = _inputs(2, 6, 5, "uint8", device, seed=3)
    flip = torch.tensor([True, False], device=device)
    got = composite(obj, mask, ctx, mode="single", flip=flip, backend="triton")
    by_hand = composite_ref(obj.flip(2), mask.flip(2), ctx.flip(2), mode="single")
    plain = composite_ref(obj, mask, ctx, mode="single")
    assert_close(got[0], by_hand[0], 1e-5, 1e-5, "flipped sample")
    assert_close(got[1], plain[1], 1e-5, 1e-5, "unflipped sample")


def test_mixed_dtypes_strides_and_tensor_stats(device):
    """uint8 object + fp16 context, bool mask + fp32 ctx mask, non-contiguous views, strided int flip,
    mean/std as tensors, single-channel image with its own statistics."""
    g = torch.Generator().manual_seed(1)
    n, h, w = 3, 9, 11
    obj = torch.randint(0, 256, (n, w, h, 3), dtype=torch.uint8, generator=g).transpose(1, 2)  # strided
    ctx = torch.rand(n, h, w, 4, generator=g).half()[..., 1:]  # channel slice: stride 4
    mask = torch.rand(n, h, w, generator=g) > 0.5
    ctx_mask = torch.rand(n, h, w, generator=g)
    flip = torch.tensor([1, 7, 0, 7, 1, 7])[::2]  # integer 0/1, strided
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    obj, ctx, mask, ctx_mask = (t.to(device) for t in (obj, ctx, mask, ctx_mask))
    for mode in COMPOSITE_MODES:
        kw = dict(mode=mode, flip=flip, mean=mean, std=std, channels_last=True)
        got = _as_tuple(composite(obj, mask, ctx, ctx_mask, backend="triton", **kw))
        ref = _as_tuple(composite_ref(obj, mask, ctx, ctx_mask, **kw))
        for i, (a, r) in enumerate(zip(got, ref)):
            assert_close(a, r, 2e-5, 1e-5, f"{mode} output {i}")
    grey = obj[..., :1]
    got = composite(grey, None, mode="none", mean=(0.5,), std=(0.25,), backend="triton")
    assert_close(got, composite_ref(grey, None, mode="none", mean=(0.5,), std=(0.25,)), 1e-5, 1e-5, "grey")


def test_empty_batch(device):
    obj, mask, ctx, _, _ = _inputs(1, 4, 4, "uint8", device)
    out = composite(obj[:0], mask[:0], ctx[:0], mode="single", backend="triton")
    assert out.shape == (0, 3, 4, 4)


def test_dispatch(monkeypatch, device):
    obj, mask, ctx, _, _ = _inputs(2, 5, 4, "uint8", device)
    cpu = torch.zeros(1)
    monkeypatch.delenv("CIT_FAST_KERNELS", raising=False)
    assert not use_triton(cpu) and use_triton(cpu, "triton") and not use_triton(cpu, "torch")
    monkeypatch.setenv("CIT_FAST_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton(cpu)
    if torch.cuda.is_available():
        assert use_triton(cpu.cuda())
    with pytest.raises(ValueError, match="backend"):
        use_triton(cpu, "cuda")
    a = composite(obj, mask, ctx, backend="triton")
    b = composite(obj, mask, ctx, backend="torch")
    assert_close(a, b, 1e-5, 1e-5, "triton vs torch backend")


BAD_CALLS = [  # (id, overrides, message regex)
    ("mode", dict(mode="triple"), "mode"),
    ("obj-3d", dict(obj=lambda o: o[0]), "obj must be an \\(N, H, W, C\\)"),
    ("obj-dtype", dict(obj=lambda o: o.to(torch.int16)), "obj must be uint8"),
    ("mask-shape", dict(mask=lambda m: m[:, :-1]), "mask must have shape"),
    ("mask-dtype", dict(mask=lambda m: m.to(torch.int32)), "mask must be uint8"),
    ("no-ctx", dict(ctx=None), "needs ctx"),
    ("ctx-shape", dict(ctx=lambda c: c[..., :2]), "ctx must have shape"),
    ("double-no-ctx-mask", dict(mode="double", ctx_mask=None), "needs ctx_mask"),
    ("flip-len", dict(flip=lambda f: f[:1]), "flip must be a \\(2,\\)"),
    ("flip-float", dict(flip=lambda f: f.float()), "flip must be bool"),
    ("mean-len", dict(mean=(0.5, 0.5)), "mean must have one value per channel"),
    ("out-dtype", dict(out_dtype=torch.int32), "out_dtype"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("bad", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_arguments_raise_value_error(bad, backend, device):
    obj, mask, ctx, ctx_mask, flip = _inputs(2, 4, 3, "uint8", device)
    args = dict(obj=obj, mask=mask, ctx=ctx, ctx_mask=ctx_mask)
    kw = dict(mode="single", flip=flip)
    for key, val in bad[1].items():
        target = args if key in args else kw
        target[key] = val(target[key]) if callable(val) else val
    with pytest.raises(ValueError, match=bad[2]):
        composite(args["obj"], args["mask"], args["ctx"], args["ctx_mask"], backend=backend, **kw)


def test_custom_op_opcheck(device):
    """Schema, fake (meta) implementation and AOT dispatch of cit_fast::composite."""
    from cit_fast.kernels._composite import _composite_op  # noqa: F401  (registers the op)

    obj, mask, ctx, ctx_mask, flip = _inputs(2, 5, 6, "uint8", device)
    for mode, cl in (("pair", True), ("double", False)):
        args = (obj, mask, ctx, ctx_mask if mode == "double" else None, flip, mode, [0.4, 0.5, 0.6],
                [0.2, 0.2, 0.3], torch.bfloat16, cl)
        torch.library.opcheck(torch.ops.cit_fast.composite.default, args)


@pytest.mark.slow
def test_torch_compile_consumes_composite(device):
    """A compiled training-style step: composite (custom op) -> channels_last conv net, fullgraph."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 2)).to(device).to(memory_format=torch.channels_last)
    obj, mask, ctx, _, flip = _inputs(2, 12, 10, "uint8", device)

    def step(obj, mask, ctx, flip):
        x = composite(obj, mask, ctx, mode="single", flip=flip, channels_last=True, backend="triton")
        return model(x)

    t0 = time.perf_counter()
    compiled = torch.compile(step, fullgraph=True)
    got = compiled(obj, mask, ctx, flip)
    elapsed = time.perf_counter() - t0
    assert_close(got, step(obj, mask, ctx, flip), 1e-4, 1e-4, "compiled step")
    # A second batch reuses the graph (no recompile for the same shapes).
    obj2, mask2, ctx2, _, flip2 = _inputs(2, 12, 10, "uint8", device, seed=5)
    assert_close(compiled(obj2, mask2, ctx2, flip2), step(obj2, mask2, ctx2, flip2), 1e-4, 1e-4, "2nd")
    print(f"torch.compile of composite + tiny net: {elapsed:.1f} s")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_realistic_batch_on_gpu(dtype):
    """224^2 batch, every mode, against the reference (values rounded once: <= 1 ulp apart)."""
    obj, mask, ctx, ctx_mask, flip = _inputs(16, 224, 224, "uint8", torch.device("cuda"))
    for mode in COMPOSITE_MODES:
        kw = dict(mode=mode, flip=flip, out_dtype=dtype, channels_last=True)
        got = _as_tuple(kernels.composite(obj, mask, ctx, ctx_mask, **kw))  # auto -> Triton on CUDA
        ref = _as_tuple(composite_ref(obj, mask, ctx, ctx_mask, **kw))
        for a, r in zip(got, ref):
            assert_close(a, r, 2e-2 if dtype == torch.bfloat16 else 4e-3, 0.0, mode)


def test_public_names_survive_lazy_imports():
    """Importing the Triton modules must not shadow the package's functions of the same name."""
    import cit_fast.kernels._causal_attention  # noqa: F401
    import cit_fast.kernels._composite  # noqa: F401

    assert callable(kernels.composite) and callable(kernels.causal_attention)
    assert kernels.composite.__module__ == kernels.causal_attention.__module__ == "cit_fast.kernels"
