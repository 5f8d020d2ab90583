"""Causal (intervention) cross-attention: reference gradcheck, Triton forward/backward vs reference."""
from __future__ import annotations

import math

import pytest
import torch

from cit_fast.kernels import causal_attention, causal_attention_ref
from tests.helpers import assert_close
from tests.kernels.tolerance import assert_kernel_close

# (B, C, Kc, H, head_dim): one key / three labels; 81 labels over 2 row blocks with 13 keys;
# 100 keys over 2 ragged key tiles with 3 heads; head dims 24 and 40 (not powers of two); the
# model's head dim 64 with Kc = 64 and 128, exact multiples of the key tile (no ragged tail).
SHAPES = [(1, 3, 1, 1, 24), (2, 81, 13, 2, 40), (2, 3, 100, 3, 24), (2, 20, 64, 2, 64), (1, 7, 128, 1, 64)]
DTYPES = [  # dtype, atol, rtol (fp32: elementwise; fp16/bf16: see tolerance.assert_kernel_close)
    (torch.float32, 2e-5, 1e-4),
    (torch.float16, 1e-3, 1e-3),
    (torch.bfloat16, 8e-3, 8e-3),
]
NAMES = ("out", "attn", "dq", "dk", "dv", "dprior")


def _make(b, c, kc, h, dh, seed=0):
    """fp32 CPU tensors: q, k, v, prior, one shared grad_output and grad_attn."""
    g = torch.Generator().manual_seed(seed)
    d = h * dh
    q = torch.randn(b, c, d, generator=g)
    k = torch.randn(kc, d, generator=g)
    v = torch.randn(kc, d, generator=g)
    prior = torch.rand(kc, generator=g) + 0.05
    prior = prior / prior.sum()
    grad_out = torch.randn(b, c, d, generator=g)
    grad_attn = torch.randn(b, h, c, kc, generator=g)
    return q, k, v, prior, grad_out, grad_attn


def _triton(*args, **kw):
    """The Triton path; fp32 in exact IEEE arithmetic (the default tf32 is checked separately)."""
    kw.setdefault("precision", "ieee")
    return causal_attention(*args, backend="triton", **kw)


def _run(fn, q, k, v, prior, h, dtype, device, grad_out, grad_attn, return_attn, **kw):
    """Forward + backward; q, k, v cast to dtype (prior stays fp32). Returns NAMES (attn None if
    not returned)."""
    ins = [t.detach().to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]
    ins.append(prior.detach().to(device).requires_grad_())
    res = fn(*ins, h, return_attn=return_attn, **kw)
    out, attn = res if return_attn else (res, None)
    grads = [grad_out.to(device=device, dtype=out.dtype)]
    outs = [out]
    if return_attn:
        outs.append(attn)
        grads.append(grad_attn.to(device=device, dtype=attn.dtype))
    torch.autograd.backward(outs, grads)
    return [out, attn] + [t.grad for t in ins]


def test_reference_gradcheck():
    q, k, v, prior, _, _ = _make(2, 3, 5, 2, 4, seed=1)
    ins = [t.double().requires_grad_() for t in (q, k, v, prior)]
    assert torch.autograd.gradcheck(lambda *a: causal_attention_ref(*a, 2), ins)
    assert torch.autograd.gradcheck(lambda *a: causal_attention_ref(*a, 2, 0.7, return_attn=True), ins)


def test_reference_matches_per_head_loop():
    b, c, kc, h, dh = 2, 3, 5, 2, 4
    q, k, v, prior, _, _ = (t.double() for t in _make(b, c, kc, h, dh, seed=2))
    out, attn = causal_attention_ref(q, k, v, prior, h, return_attn=True)
    for i in range(h):
        cols = slice(i * dh, (i + 1) * dh)
        a = torch.softmax(q[..., cols] @ k[:, cols].T / math.sqrt(dh), dim=-1)  # (B, C, Kc)
        assert_close(attn[:, i], a, 1e-12, 1e-12, f"attn head {i}")
        assert_close(out[..., cols], a @ (prior[:, None] * v[:, cols]), 1e-12, 1e-12, f"out head {i}")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("return_attn", [False, True], ids=["out", "out+attn"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}C{}Kc{}H{}d{}".format(*s))
def test_triton_forward_backward(shape, return_attn, dtype, atol, rtol, device):
    b, c, kc, h, dh = shape
    q, k, v, prior, grad_out, grad_attn = _make(*shape)
    args = (q, k, v, prior, h)
    rest = (device, grad_out, grad_attn, return_attn)
    tri = _run(_triton, *args, dtype, *rest)
    ref32 = _run(causal_attention_ref, *args, torch.float32, *rest)
    ref_lp = _run(causal_attention_ref, *args, dtype, *rest)
    for name, t, r32, rlp in zip(NAMES, tri, ref32, ref_lp):
        if name == "attn" and not return_attn:
            assert t is None
            continue
        assert_kernel_close(t, rlp, r32, dtype, atol, rtol, name)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[:2])
def test_triton_strided_inputs_broadcast_grads_and_scale(dtype, atol, rtol, device):
    """Non-contiguous q/k/v, an fp16/fp32 prior of another dtype, an explicit scale, and expanded
    (stride-0) output gradients from .sum()."""
    b, c, kc, h, dh = 3, 5, 7, 2, 24
    d = h * dh
    g = torch.Generator().manual_seed(4)
    q_base = torch.randn(c, b, d, generator=g)
    k_base = torch.randn(d, kc, generator=g)
    v_base = torch.randn(kc, 2 * d, generator=g)
    prior = (torch.rand(kc, generator=g) + 0.1).double()

    def run(fn, dt):
        qb, kb, vb = (t.detach().to(device=device, dtype=dt).requires_grad_()
                      for t in (q_base, k_base, v_base))
        p = prior.detach().to(device=device, dtype=torch.float32 if dt == torch.float32 else torch.float16)
        p.requires_grad_()
        q, k, v = qb.transpose(0, 1), kb.T, vb[:, ::2]  # (B, C, D), (Kc, D), (Kc, D), all strided
        out, attn = fn(q, k, v, p, h, 0.3, return_attn=True)
        (out.float().sum() + attn.float().pow(2).sum()).backward()
        return [out, attn, qb.grad.transpose(0, 1), kb.grad.T, vb.grad[:, ::2], p.grad]

    tri = run(_triton, dtype)
    ref32 = run(causal_attention_ref, torch.float32)
    ref_lp = run(causal_attention_ref, dtype)
    for name, t, r32, rlp in zip(NAMES, tri, ref32, ref_lp):
        assert_kernel_close(t, rlp, r32, dtype, atol, rtol, name)


def test_triton_backward_is_deterministic(device):
    """dK/dV reduce through per-chunk partials, not atomics: two runs agree bit for bit."""
    q, k, v, prior, grad_out, grad_attn = _make(2, 81, 13, 2, 40, seed=7)
    r1 = _run(_triton, q, k, v, prior, 2, torch.float32, device, grad_out, grad_attn, True)
    r2 = _run(_triton, q, k, v, prior, 2, torch.float32, device, grad_out, grad_attn, True)
    for name, a, b in zip(NAMES, r1, r2):
        assert torch.equal(a, b), name


def test_dispatch_and_default_scale(device):
    q, k, v, prior, _, _ = (t.to(device) for t in _make(1, 4, 6, 2, 24, seed=3))
    ref = causal_attention(q, k, v, prior, 2, backend="torch")
    assert_close(ref, causal_attention_ref(q, k, v, prior, 2, scale=24 ** -0.5), 1e-6, 1e-6, "default scale")
    tri = causal_attention(q, k, v, prior, 2, backend="triton", precision="ieee")
    assert_close(tri, ref, 2e-5, 1e-4, "triton vs torch backend")


@pytest.mark.parametrize("precision, atol, rtol", [("tf32x3", 2e-5, 1e-4), ("tf32", 2e-2, 2e-2)])
def test_fp32_tensor_core_precisions(precision, atol, rtol, device):
    """fp32 on tensor cores: tf32x3 as close to the fp32 reference as IEEE, tf32 (the default)
    within 2e-2 of max|ref| (on a GPU; the interpreter computes every dot in fp32)."""
    shape = (2, 20, 64, 2, 64)
    q, k, v, prior, grad_out, grad_attn = _make(*shape, seed=11)
    rest = (torch.float32, device, grad_out, grad_attn, True)
    got = _run(_triton, q, k, v, prior, 2, *rest, precision=precision)
    default = _run(lambda *a, **kw: causal_attention(*a, backend="triton", **kw), q, k, v, prior, 2, *rest)
    ref = _run(causal_attention_ref, q, k, v, prior, 2, *rest)
    for name, t, d, r in zip(NAMES, got, default, ref):
        assert_close(t, r, atol * max(1.0, float(r.abs().max())), rtol, f"{precision} {name}")
        if precision == "tf32":
            assert torch.equal(t, d), f"the default precision is tf32 ({name})"


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_large_logits_stay_finite_and_exact(dtype, atol, rtol, device):
    """|logits| in the thousands (scale x 40 on q and k): the online softmax subtracts the running
    max, so nothing overflows and probabilities saturate as the reference's do. Bound: four times
    PyTorch's own error in the same dtype against float64, plus atol + rtol * max|ref|: a logit of
    3000 has an fp32 ulp of 2.4e-4, which both make, and the kernel rounds once more in the exp2
    domain (s * log2(e)), as flash attention does (measured: dq 2.3x PyTorch's error)."""
    shape = (2, 9, 70, 2, 32)
    q, k, v, prior, grad_out, grad_attn = _make(*shape, seed=12)
    q, k = q * 40, k * 40
    rest = (device, grad_out, grad_attn, True)
    tri = _run(_triton, q, k, v, prior, 2, dtype, *rest)
    ref64 = _run(causal_attention_ref, q, k, v, prior.double(), 2, torch.float64, *rest)
    ref_lp = _run(causal_attention_ref, q, k, v, prior, 2, dtype, *rest)
    for name, t, r64, rlp in zip(NAMES, tri, ref64, ref_lp):
        assert torch.isfinite(t).all(), f"{name}: not finite"
        ref = r64.detach().cpu()
        err = (t.detach().double().cpu() - ref).abs().max().item()
        bound = 4 * (rlp.detach().double().cpu() - ref).abs().max().item() + atol + rtol * ref.abs().max().item()
        assert err <= bound, f"{name} ({dtype}): error {err:.3g} > bound {bound:.3g}"


def test_prior_gradient_skipped_when_not_needed(device):
    """The model's prior is a buffer: no dprior is computed, the other gradients are unchanged."""
    q, k, v, prior, grad_out, _ = _make(2, 11, 37, 2, 24, seed=13)
    ins = [t.detach().to(device).requires_grad_() for t in (q, k, v)]
    out = _triton(*ins, prior.to(device), 2)
    grads = torch.autograd.grad(out, ins, grad_out.to(device))
    full = _run(_triton, q, k, v, prior, 2, torch.float32, device, grad_out, None, False)
    for name, a, b in zip(("dq", "dk", "dv"), grads, full[2:5]):
        assert torch.equal(a, b), name
    p = prior.to(device).requires_grad_()
    _triton(*[t.detach() for t in ins], p, 2).sum().backward()
    assert p.grad is not None and p.grad.shape == prior.shape


def test_unused_attention_output_gets_no_gradient_pass(device):
    """return_attn=True with only the output in the loss: the same gradients as without attn."""
    q, k, v, prior, grad_out, _ = _make(2, 5, 9, 1, 16, seed=14)
    results = []
    for return_attn in (True, False):
        ins = [t.detach().to(device).requires_grad_() for t in (q, k, v, prior)]
        res = _triton(*ins, 1, return_attn=return_attn)
        out = res[0] if return_attn else res
        results.append(torch.autograd.grad(out, ins, grad_out.to(device)))
    for name, a, b in zip(NAMES[2:], *results):
        assert torch.equal(a, b), name


def test_bad_precision_is_one_line(device):
    q, k, v, prior, _, _ = (t.to(device) for t in _make(1, 2, 3, 1, 16))
    with pytest.raises(ValueError, match="precision must be one of"):
        causal_attention(q, k, v, prior, 1, backend="triton", precision="fp64")


@pytest.mark.slow
def test_custom_ops_opcheck(device):
    """Schemas and fake (meta) implementations of the forward and backward ops."""
    from cit_fast.kernels._causal_attention import _bwd_op, _fwd_op  # noqa: F401  (registers them)

    q, k, v, prior, grad_out, grad_attn = (t.to(device) for t in _make(2, 5, 7, 2, 16, seed=5))
    for return_attn in (False, True):
        fwd_args = (q, k, v, prior, 2, 0.25, return_attn, "ieee")
        torch.library.opcheck(torch.ops.cit_fast.causal_attention_fwd.default, fwd_args)
        out, _, lse = torch.ops.cit_fast.causal_attention_fwd(*fwd_args)
        for need_dprior in (True, False):
            bwd_args = (q, k, v, prior, out, lse, grad_out, grad_attn if return_attn else None, 2, 0.25,
                        need_dprior, "ieee")
            torch.library.opcheck(torch.ops.cit_fast.causal_attention_bwd.default, bwd_args)


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_backward(device):
    """The causal head compiled as one graph: attention (custom ops) + a linear head, fwd and bwd."""
    q, k, v, prior, _, _ = _make(2, 5, 7, 2, 16, seed=6)
    head = torch.nn.Linear(32, 3).to(device)

    def step(q, k, v, prior):
        out, attn = causal_attention(q, k, v, prior, 2, return_attn=True, backend="triton")
        return head(out).square().mean() + attn.max(-1).values.mean()

    def grads(fn):
        ins = [t.detach().to(device).requires_grad_() for t in (q, k, v, prior)]
        loss = fn(*ins)
        return [loss] + list(torch.autograd.grad(loss, ins))

    got = grads(torch.compile(step, fullgraph=True))
    want = grads(step)
    for name, a, b in zip(("loss", "dq", "dk", "dv", "dprior"), got, want):
        assert_close(a, b, 1e-5, 1e-4, name)


BAD_CALLS = [  # (id, change q/k/v/prior/num_heads, message regex)
    ("q-2d", dict(q=lambda q: q[0]), "q must be \\(B, C, D\\)"),
    ("k-dim", dict(k=lambda k: k[:, :-1]), "k must be \\(Kc, D=8\\)"),
    ("v-rows", dict(v=lambda v: v[:-1]), "v must have as many rows as k"),
    ("no-keys", dict(k=lambda k: k[:0], v=lambda v: v[:0], prior=lambda p: p[:0]), "Kc >= 1"),
    ("prior-shape", dict(prior=lambda p: p[:, None]), "prior must be a \\(5,\\)"),
    ("prior-int", dict(prior=lambda p: p.long()), "prior must be floating"),
    ("heads", dict(num_heads=3), "num_heads must be a positive int dividing D=8"),
    ("k-dtype", dict(k=lambda k: k.half()), "k must have q's dtype"),
    ("q-int", dict(q=lambda q: q.long(), k=lambda k: k.long(), v=lambda v: v.long()), "q must be one of"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("bad", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_arguments_raise_value_error(bad, backend, device):
    q, k, v, prior, _, _ = _make(2, 3, 5, 2, 4)
    args = dict(q=q.to(device), k=k.to(device), v=v.to(device), prior=prior.to(device), num_heads=2)
    for key, change in bad[1].items():
        args[key] = change(args[key]) if callable(change) else change
    with pytest.raises(ValueError, match=bad[2]):
        causal_attention(**args, backend=backend)


def test_triton_rejects_float64(device):
    q, k, v, prior, _, _ = (t.double().to(device) for t in _make(1, 2, 3, 1, 16))
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        causal_attention(q, k, v, prior, 1, backend="triton")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_realistic_shape_on_gpu(dtype, atol, rtol):
    """The model's shape: B=64, C=80 labels, Kc=100 confounders, D=512, 8 heads; auto dispatch."""
    shape = (64, 80, 100, 8, 64)
    q, k, v, prior, grad_out, grad_attn = _make(*shape)
    rest = (torch.device("cuda"), grad_out, grad_attn, True)
    tri = _run(causal_attention, q, k, v, prior, 8, dtype, *rest)
    ref32 = _run(causal_attention_ref, q, k, v, prior, 8, torch.float32, *rest)
    ref_lp = _run(causal_attention_ref, q, k, v, prior, 8, dtype, *rest)
    for name, t, r32, rlp in zip(NAMES, tri, ref32, ref_lp):
        assert_kernel_close(t, rlp, r32, dtype, atol, rtol, name)
