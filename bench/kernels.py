#!/usr/bin/env python
"""Kernel benchmark: Triton vs eager reference vs torch.compile(reference) (vs SDPA for attention),
side by side in one run, with ratios, TFLOP/s / GB/s and % of the part's peak.

    python bench/kernels.py                       # GPU: composite 256x224^2 (NCHW fp32 and
                                                  # channels-last bf16), attention B=64 C=80 D=512 H=8
                                                  # at Kc 100 and 1024, fp32 and bf16, fwd and fwd+bwd
    python bench/kernels.py --precision-error     # tf32 / tf32x3 / ieee error vs float64 (emulated
                                                  # on a CPU, the real kernels on a GPU)
    python bench/kernels.py --quick               # small shapes; what runs on a CPU
    python bench/kernels.py --results-md bench/RESULTS.md   # also append the tables

Timing on a GPU: ``triton.testing.do_bench`` (L2 flushed before every call, CUDA events), whole
op as the caller sees it ("op"), and the op's CUDA-graph replay ("kernels": launch and Python
overhead removed, the GPU work alone); the spread is shown as p10 / median / p90 of the calls.
On a CPU: median wall clock of single calls, Triton not timed (it only runs interpreted there).
Attention FLOPs: fwd 4*M*Kc*D, fwd+bwd 14*M*Kc*D (M = B*C rows; the backward recomputes S and
does four more products); composite bytes: inputs read once, outputs written once. Peaks: vendor
datasheet figures (dense tensor-core TFLOP/s, DRAM GB/s) from a small table of known parts.
Targets for the first GPU run: composite >= 80 % of HBM bandwidth; attention fwd+bwd
>= 1.0x SDPA (prior folded into V) and >= 3x the eager reference at Kc 100 and 1024.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cit_fast.kernels import causal_attention_ref, composite_ref  # noqa: E402

# DRAM bandwidth in GB/s by device-name substring, most specific first (vendor datasheets).
PEAK_BANDWIDTH_GBS = [
    ("GH200", 4000), ("H200", 4800), ("H100 PCIe", 2000), ("H100 NVL", 3900), ("H100", 3350),
    ("H800", 3350), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
    ("L40S", 864), ("L40", 864), ("L4", 300), ("A10G", 600), ("A10", 600), ("RTX 4090", 1008),
    ("RTX 3090", 936), ("V100", 900), ("T4", 320),
]
# Dense tensor-core TFLOP/s (bf16/fp16, tf32) by device-name substring (vendor datasheets).
PEAK_TFLOPS = [
    ("GH200", 989, 494), ("H200", 989, 494), ("H100 PCIe", 756, 378), ("H100", 989, 494), ("H800", 989, 494),
    ("A100", 312, 156), ("L40S", 362, 183), ("L40", 181, 90), ("L4", 121, 60), ("A10", 125, 62),
    ("RTX 4090", 165, 83), ("V100", 125, 15.7), ("T4", 65, 8.1),
]
TARGET_HBM_PCT, TARGET_VS_SDPA, TARGET_VS_EAGER = 80.0, 1.0, 3.0


def _lookup(table, name: str):
    for row in table:
        if row[0] in name:
            return row[1:]
    return None


def peak_bandwidth(name: str) -> Optional[float]:
    r = _lookup(PEAK_BANDWIDTH_GBS, name)
    return float(r[0]) if r else None


def peak_tflops(name: str, dtype: torch.dtype) -> Optional[float]:
    r = _lookup(PEAK_TFLOPS, name)
    if not r:
        return None
    return float(r[1] if dtype == torch.float32 else r[0])


def triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception as e:  # noqa: BLE001 - report, don't fail the header
        return f"unavailable ({type(e).__name__})"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def header_lines(args, device: torch.device) -> List[str]:
    name = device_name(device)
    peak = peak_bandwidth(name) if device.type == "cuda" else None
    lines = [f"command : {' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}",
             f"date    : {dt.datetime.now().isoformat(timespec='seconds')}",
             f"device  : {device.type}: {name}" + (f" (peak DRAM {peak:.0f} GB/s)" if peak else
                                                    " (peak unknown)" if device.type == "cuda" else
                                                    f", {torch.get_num_threads()} threads"),
             f"versions: torch {torch.__version__}, triton {triton_version()}, cuda {torch.version.cuda}, "
             f"python {platform.python_version()}"]
    if device.type == "cuda":
        lines.append(f"timing  : triton.testing.do_bench (L2 flushed), {args.rep} ms per row; p10/median/p90; "
                     "'kernels' = CUDA-graph replay")
    else:
        lines.append(f"timing  : {args.warmup} warm-up + {args.iters} timed calls, wall clock median; "
                     "Triton not timed (interpreted only on a CPU)")
    return lines


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------
Stats = Dict[str, float]


def _graphed(fn: Callable[[], object]) -> Optional[Callable[[], None]]:
    """fn captured in a CUDA graph (its replay is the GPU work alone); None if it cannot be."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return g.replay
    except Exception:  # noqa: BLE001 - e.g. an op that syncs: report the op time only
        return None


def measure(fn: Callable[[], object], device: torch.device, args, kernels_only: bool = True) -> Stats:
    """ms per call: p10/median/p90 (GPU: whole op and CUDA-graph replay), peak extra MiB."""
    if device.type == "cuda":
        from triton.testing import do_bench

        fn()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)  # sync: outside the timed region
        mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        q = do_bench(fn, warmup=args.warmup_ms, rep=args.rep, quantiles=[0.1, 0.5, 0.9])
        out = {"p10": q[0], "ms": q[1], "p90": q[2], "mib": mib}
        replay = _graphed(fn) if kernels_only else None
        if replay is not None:
            kq = do_bench(replay, warmup=args.warmup_ms, rep=args.rep, quantiles=[0.1, 0.5, 0.9])
            out.update(k_p10=kq[0], k_ms=kq[1], k_p90=kq[2])
        return out
    for _ in range(args.warmup):
        fn()
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"p10": times[len(times) // 10], "ms": statistics.median(times), "p90": times[-1 - len(times) // 10],
            "mib": float("nan")}


def try_measure(fn, device, args, kernels_only=True) -> Stats:
    try:
        return measure(fn, device, args, kernels_only)
    except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"error": f"failed: {type(e).__name__}: {msg[:100]}"}


def table(title: str, rows: Dict[str, Stats], baseline: str, work: Optional[float], unit: str,
          peak: Optional[float]) -> List[str]:
    """A markdown table: one row per implementation; work / ms in ``unit`` (GB/s or TFLOP/s)."""
    scale = 1e6 if unit == "GB/s" else 1e9
    lines = [f"**{title}**", "",
             f"| impl | op ms (p10 / med / p90) | kernels ms (med) | {unit} | % peak | peak MiB | vs {baseline} |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = rows.get(baseline, {}).get("ms")
    for impl, r in rows.items():
        if "error" in r:
            lines.append(f"| {impl} | {r['error']} | | | | | |")
            continue
        ms = r.get("k_ms", r["ms"])
        rate = work / ms / scale if work else None
        pct = f"{100 * rate / peak:.1f}" if rate and peak else "n/a"
        mib = "n/a" if math.isnan(r["mib"]) else f"{r['mib']:.1f}"
        lines.append(f"| {impl} | {r['p10']:.3f} / {r['ms']:.3f} / {r['p90']:.3f} | "
                     f"{r['k_ms']:.3f} |" if "k_ms" in r else
                     f"| {impl} | {r['p10']:.3f} / {r['ms']:.3f} / {r['p90']:.3f} | - |")
        lines[-1] += (f" {rate:.1f} | {pct} | {mib} | " if rate else f" - | {pct} | {mib} | ") + \
            (f"{base / r['ms']:.2f}x |" if base else "- |")
    return lines + [""]


# ----------------------------------------------------------------------------------------------
# Composite
# ----------------------------------------------------------------------------------------------
def bench_composite(args, device: torch.device, out: List[str], verdicts: List[str]) -> None:
    n, h, w = (8, 64, 64) if args.quick else (256, 224, 224)
    g = torch.Generator().manual_seed(0)
    obj = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g).to(device)
    ctx = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g).to(device)
    mask = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=g).to(device)
    ctx_mask = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=g).to(device)
    flip = (torch.rand(n, generator=g) < 0.5).to(device)
    peak = peak_bandwidth(device_name(device)) if device.type == "cuda" else None
    compiled_ref = None if args.no_compile else torch.compile(composite_ref)
    for mode in args.modes:
        for dtype_name, channels_last in args.composite_outputs:
            dtype = getattr(torch, dtype_name)
            kw = dict(mode=mode, flip=flip, out_dtype=dtype, channels_last=channels_last)
            n_out = 2 if mode in ("double", "pair") else 1
            px = n * h * w
            read = px * 3 + (px * 3 + px if mode != "none" else 0) + (px if mode == "double" else 0)
            nbytes = read + n_out * px * 3 * dtype.itemsize
            rows: Dict[str, Stats] = {}
            if device.type == "cuda":
                from cit_fast.kernels._composite import composite_triton

                rows["triton"] = try_measure(lambda: composite_triton(obj, mask, ctx, ctx_mask, **kw), device, args)
            else:
                rows["triton"] = {"error": "needs CUDA (not timed on the CPU)"}
            rows["eager reference"] = try_measure(lambda: composite_ref(obj, mask, ctx, ctx_mask, **kw), device, args)
            if compiled_ref is not None:
                rows["compile(reference)"] = try_measure(lambda: compiled_ref(obj, mask, ctx, ctx_mask, **kw),
                                                         device, args)
            layout = "channels_last" if channels_last else "NCHW"
            out += table(f"composite mode={mode}: {n}x{h}x{w} uint8 -> {dtype_name} {layout}, flip mixed "
                         f"({nbytes / 1e6:.1f} MB moved)", rows, "eager reference", nbytes, "GB/s", peak)
            t = rows["triton"]
            if device.type == "cuda" and "error" not in t and peak:
                pct = 100 * nbytes / t.get("k_ms", t["ms"]) / 1e6 / peak
                verdicts.append(f"composite {mode} {dtype_name} {layout}: {pct:.1f} % of HBM peak "
                                f"({'met' if pct >= TARGET_HBM_PCT else 'not met'}: target {TARGET_HBM_PCT:.0f} %)")


# ----------------------------------------------------------------------------------------------
# Causal attention
# ----------------------------------------------------------------------------------------------
def sdpa_prior_in_v(q, k, v, prior, num_heads, scale=None, return_attn=False):
    """F.scaled_dot_product_attention with the prior folded into V (K/V broadcast over the batch)."""
    b, c, d = q.shape
    kc, dh = k.shape[0], d // num_heads
    qh = q.view(b, c, num_heads, dh).transpose(1, 2)  # (B, H, C, dh)
    kh = k.view(kc, num_heads, dh).transpose(0, 1).unsqueeze(0).expand(b, -1, -1, -1)  # (B, H, Kc, dh)
    vp = prior.to(v.dtype)[:, None] * v  # (Kc, D)
    vh = vp.view(kc, num_heads, dh).transpose(0, 1).unsqueeze(0).expand(b, -1, -1, -1)  # (B, H, Kc, dh)
    out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    return out.transpose(1, 2).reshape(b, c, d)


def bench_attention(args, device: torch.device, out: List[str], verdicts: List[str]) -> None:
    b, c, d, heads = (4, 20, 128, 4) if args.quick else (64, 80, 512, 8)
    kcs = [30] if args.quick else args.kc
    g = torch.Generator().manual_seed(0)
    dtypes = ["float32"] if device.type != "cuda" else args.attn_dtypes
    name = device_name(device)
    for kc in kcs:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            q = torch.randn(b, c, d, generator=g).to(device, dtype).requires_grad_()
            k = torch.randn(kc, d, generator=g).to(device, dtype).requires_grad_()
            v = torch.randn(kc, d, generator=g).to(device, dtype).requires_grad_()
            prior = torch.softmax(torch.randn(kc, generator=g), 0).to(device)  # a buffer, as in the model
            grad_out = torch.randn(b, c, d, generator=g).to(device, dtype)
            impls: Dict[str, Optional[Callable]] = {}
            if device.type == "cuda":
                from cit_fast.kernels._causal_attention import causal_attention_triton

                impls["triton"] = causal_attention_triton
            else:
                impls["triton"] = None
            impls["eager reference"] = causal_attention_ref
            if not args.no_compile:
                impls["compile(reference)"] = torch.compile(causal_attention_ref)
            impls["sdpa (prior in V)"] = sdpa_prior_in_v
            m = b * c
            flops = {"fwd": 4 * m * kc * d, "fwd+bwd": 14 * m * kc * d}
            peak = peak_tflops(name, dtype) if device.type == "cuda" else None
            for phase in ("fwd", "fwd+bwd"):
                rows: Dict[str, Stats] = {}
                for impl, fn in impls.items():
                    if fn is None:
                        rows[impl] = {"error": "needs CUDA (not timed on the CPU)"}
                        continue
                    if phase == "fwd":
                        def call(fn=fn):
                            with torch.no_grad():
                                return fn(q, k, v, prior, heads)
                    else:
                        def call(fn=fn):
                            o = fn(q, k, v, prior, heads)
                            return torch.autograd.grad(o, (q, k, v), grad_out)
                    rows[impl] = try_measure(call, device, args, kernels_only=phase == "fwd" or impl == "triton")
                shape = f"B={b} C={c} Kc={kc} D={d} H={heads} {dtype_name}" + \
                    (" (Triton: tf32)" if dtype == torch.float32 else "")
                out += table(f"causal attention {phase}: {shape}", rows, "eager reference", flops[phase],
                             "TFLOP/s", peak)
                t, s, e = rows.get("triton", {}), rows.get("sdpa (prior in V)", {}), rows.get("eager reference", {})
                if phase == "fwd+bwd" and device.type == "cuda" and all("ms" in r for r in (t, s, e)):
                    vs_s, vs_e = s["ms"] / t["ms"], e["ms"] / t["ms"]
                    ok = vs_s >= TARGET_VS_SDPA and vs_e >= TARGET_VS_EAGER
                    verdicts.append(f"attention fwd+bwd Kc={kc} {dtype_name}: {vs_s:.2f}x SDPA, {vs_e:.2f}x eager "
                                    f"({'met' if ok else 'not met'}: targets {TARGET_VS_SDPA:.1f}x / "
                                    f"{TARGET_VS_EAGER:.1f}x)")


# ----------------------------------------------------------------------------------------------
# fp32 precision: tf32 vs tf32x3 vs ieee
# ----------------------------------------------------------------------------------------------
def _tf32_trunc(x: torch.Tensor) -> torch.Tensor:
    """What the tensor cores read of an fp32 operand under tf32: 10 mantissa bits, the rest dropped."""
    return (x.view(torch.int32) & ~0x1FFF).view(torch.float32)


def _tf32_rna(x: torch.Tensor) -> torch.Tensor:
    """cvt.rna.tf32.f32: round to nearest, ties away (Triton's tf32x3 split)."""
    return ((x.view(torch.int32) + 0x1000) & ~0x1FFF).view(torch.float32)


def _emulated_mm(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    if precision == "ieee":
        return a @ b
    if precision == "tf32":
        return _tf32_trunc(a) @ _tf32_trunc(b)
    ah, bh = _tf32_rna(a), _tf32_rna(b)  # tf32x3: hi*hi + hi*lo + lo*hi
    return _tf32_rna(a - ah) @ bh + ah @ _tf32_rna(b - bh) + ah @ bh


def emulated_attention(q, k, v, prior, heads, dout, precision: str) -> List[torch.Tensor]:
    """out, dq, dk, dv of the kernels' math (prior folded into P), every product under precision."""
    b, c, d = q.shape
    dh = d // heads
    scale = dh ** -0.5
    mm = lambda x, y: _emulated_mm(x, y, precision)  # noqa: E731
    qh, kh, vh = q.view(b, c, heads, dh).transpose(1, 2), k.view(-1, heads, dh).transpose(0, 1), \
        v.view(-1, heads, dh).transpose(0, 1)
    p = torch.softmax(mm(qh, kh.transpose(-1, -2)) * scale, -1)
    pp = p * prior
    o = mm(pp, vh)
    do = dout.view(b, c, heads, dh).transpose(1, 2)
    ds = p * (mm(do, vh.transpose(-1, -2)) * prior - (o * do).sum(-1, keepdim=True))
    dq = mm(ds, kh) * scale
    dk = (mm(ds.transpose(-1, -2), qh) * scale).sum(0)
    dv = mm(pp.transpose(-1, -2), do).sum(0)
    return [o.transpose(1, 2).reshape(b, c, d), dq.transpose(1, 2).reshape(b, c, d),
            dk.transpose(0, 1).reshape(-1, d), dv.transpose(0, 1).reshape(-1, d)]


def precision_error(args, device: torch.device, out: List[str]) -> None:
    b, c, d, heads = (8, 20, 128, 4) if args.quick else (64, 80, 512, 8)
    real = device.type == "cuda"
    out += [f"**fp32 attention: max |x - ref64| / max |ref64| ({'the Triton kernels' if real else 'emulated in PyTorch: operands rounded as the tensor cores would'})**",
            "", "| Kc | precision | out | dq | dk | dv |", "|---:|---|---:|---:|---:|---:|"]
    g = torch.Generator().manual_seed(0)
    for kc in ([30] if args.quick else args.kc):
        q, k, v = (torch.randn(*s, generator=g) for s in ((b, c, d), (kc, d), (kc, d)))
        prior = torch.softmax(torch.randn(kc, generator=g), 0)
        dout = torch.randn(b, c, d, generator=g)
        ref = emulated_attention(q.double(), k.double(), v.double(), prior.double(), heads, dout.double(), "ieee")
        for prec in ("ieee", "tf32x3", "tf32"):
            if real:
                from cit_fast.kernels._causal_attention import causal_attention_triton

                ins = [t.to(device).requires_grad_() for t in (q, k, v)]
                o = causal_attention_triton(*ins, prior.to(device), heads, precision=prec)
                got = [o] + list(torch.autograd.grad(o, ins, dout.to(device)))
            else:
                got = emulated_attention(q, k, v, prior, heads, dout, prec)
            errs = [((x.detach().double().cpu() - r).abs().max() / r.abs().max()).item() for x, r in zip(got, ref)]
            out.append(f"| {kc} | {prec} | " + " | ".join(f"{e:.2e}" for e in errs) + " |")
    out.append("")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes (default on a CPU)")
    p.add_argument("--only", choices=["composite", "attention"], help="run one kernel's benchmark")
    p.add_argument("--precision-error", action="store_true", help="only the fp32 precision table")
    p.add_argument("--warmup", type=int, default=3, help="CPU: warm-up calls")
    p.add_argument("--iters", type=int, default=20, help="CPU: timed calls")
    p.add_argument("--warmup-ms", type=int, default=25, help="GPU: do_bench warm-up (ms)")
    p.add_argument("--rep", type=int, default=200, help="GPU: do_bench timed duration per row (ms)")
    p.add_argument("--modes", nargs="+", default=["single", "pair"], choices=["none", "single", "double", "pair"])
    p.add_argument("--kc", nargs="+", type=int, default=[100, 1024], help="attention: confounders")
    p.add_argument("--attn-dtypes", nargs="+", default=["float32", "bfloat16"],
                   choices=["float32", "float16", "bfloat16"], help="attention dtypes (GPU; CPU: fp32)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile(reference) rows")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--results-md", default="", help="append the tables to this markdown file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    if device.type != "cuda" and not args.precision_error:
        args.quick = True  # (the precision table runs at full size on a CPU: it is PyTorch math)
    # composite outputs: the pipeline's default (NCHW fp32) and the fast training layout
    args.composite_outputs = [("float32", False), ("bfloat16", True)]
    head = header_lines(args, device)
    print("\n".join("# " + h for h in head) + "\n", flush=True)
    out: List[str] = []
    verdicts: List[str] = []
    if args.precision_error:
        precision_error(args, device, out)
    else:
        if args.only in (None, "composite"):
            bench_composite(args, device, out, verdicts)
        if args.only in (None, "attention"):
            bench_attention(args, device, out, verdicts)
        if device.type == "cuda":
            precision_error(args, device, out)
    print("\n".join(out))
    for v in verdicts:
        print("target: " + v)
    if args.results_md:
        from cit_fast.utils import append_section

        path = Path(args.results_md)
        title = "fp32 attention precision" if args.precision_error else "Kernel benchmark"
        section = [f"\n## {title} on {device_name(device)} ({dt.date.today().isoformat()}, bench/kernels.py)\n",
                   *[f"- {h}" for h in head], "", *out, *[f"- target: {v}" for v in verdicts], ""]
        append_section(path, "\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
