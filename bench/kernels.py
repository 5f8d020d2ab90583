#!/usr/bin/env python
"""Kernel benchmark: Triton vs eager reference vs torch.compile(reference) (vs SDPA for attention),
side by side in one run, with ratios.

    python bench/kernels.py                 # GPU: realistic shapes (composite 256x224^2, attention
                                            # B=64 C=80 Kc=100 D=512 H=8, fwd and fwd+bwd)
    python bench/kernels.py --quick         # small shapes; what runs on a CPU
    python bench/kernels.py --only attention --iters 50 --no-compile

Timing: warm-up, then CUDA events around --iters calls (on the CPU: median wall clock of
single calls). Peak memory: the
rise of torch.cuda.max_memory_allocated over what was allocated before the call (inputs excluded).
Composite GB/s counts the bytes the op must move (inputs read once, outputs written once), so
'% peak' is against the device's DRAM bandwidth from a small table of known parts. On a CPU the
Triton path is not timed (Triton needs CUDA; the interpreter is for tests).
"""
from __future__ import annotations

import argparse
import math
import platform
import shlex
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from cit_fast.kernels import causal_attention_ref, composite_ref

# DRAM bandwidth in GB/s by device-name substring, most specific first (vendor datasheets).
PEAK_BANDWIDTH_GBS = [
    ("GH200", 4000), ("H200", 4800), ("H100 PCIe", 2000), ("H100 NVL", 3900), ("H100", 3350),
    ("H800", 3350), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
    ("L40S", 864), ("L40", 864), ("L4", 300), ("A10G", 600), ("A10", 600), ("RTX 4090", 1008),
    ("RTX 3090", 936), ("V100", 900), ("T4", 320),
]


def peak_bandwidth(name: str) -> Optional[float]:
    for key, gbs in PEAK_BANDWIDTH_GBS:
        if key in name:
            return float(gbs)
    return None


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


def header(args, device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    peak = peak_bandwidth(name) if device.type == "cuda" else None
    print("# cit_fast kernel benchmark")
    print(f"# command : {' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}")
    print(f"# device  : {device.type}: {name}"
          + (f" (peak DRAM {peak:.0f} GB/s)" if peak else " (peak DRAM bandwidth unknown)"
             if device.type == "cuda" else f", {torch.get_num_threads()} threads"))
    print(f"# versions: torch {torch.__version__}, triton {triton_version()}, "
          f"cuda {torch.version.cuda}, python {platform.python_version()}")
    print(f"# timing  : {args.warmup} warm-up + {args.iters} timed calls"
          + (", CUDA events (mean)" if device.type == "cuda" else ", wall clock (median)"))
    if device.type != "cuda":
        print("# Triton  : needs CUDA -- not timed here (on the CPU it only runs interpreted, for tests)")
    print()


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------
def measure(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> Dict[str, float]:
    """ms per call and peak extra MiB (CUDA) of fn()."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(device)  # sync: the only one, after the timed loop
        return {"ms": start.elapsed_time(end) / iters, "mib": peak_mib}
    times = []
    for _ in range(iters):  # CPU: median of single calls, robust to a shared, noisy machine
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"ms": statistics.median(times) * 1e3, "mib": float("nan")}


def report(title: str, rows: Dict[str, Dict[str, float]], baseline: str, nbytes: Optional[int] = None,
           peak_gbs: Optional[float] = None) -> None:
    """One table: a row per implementation, speed-up relative to ``baseline`` (>1 = faster)."""
    print(title)
    cols = f"  {'impl':<22}{'ms':>10}"
    if nbytes:
        cols += f"{'GB/s':>10}{'% peak':>9}"
    cols += f"{'peak MiB':>11}   speed-up vs {baseline}"
    print(cols)
    base = rows.get(baseline, {}).get("ms")
    notes = []
    for impl, r in rows.items():
        if "error" in r:
            print(f"  {impl:<22}{'-':>10}   {r['error']}")
            continue
        line = f"  {impl:<22}{r['ms']:>10.3f}"
        if nbytes:
            gbs = nbytes / r["ms"] / 1e6
            pct = f"{100 * gbs / peak_gbs:.1f}" if peak_gbs else "n/a"
            line += f"{gbs:>10.1f}{pct:>9}"
        mib = "n/a" if math.isnan(r["mib"]) else f"{r['mib']:.1f}"
        line += f"{mib:>11}   " + (f"{base / r['ms']:.2f}x" if base else "-")
        print(line)
        if "compile_s" in r:
            notes.append(f"{impl}: first call (compile) took {r['compile_s']:.1f} s")
    for note in notes:
        print(f"  ({note})")
    print()


def try_measure(fn, device, args) -> Dict[str, float]:
    try:
        return measure(fn, device, args.warmup, args.iters)
    except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"error": f"failed: {type(e).__name__}: {msg[:100]}"}


# ----------------------------------------------------------------------------------------------
# Composite
# ----------------------------------------------------------------------------------------------
def bench_composite(args, device: torch.device, peak_gbs: Optional[float]) -> None:
    n, h, w = (8, 64, 64) if args.quick else (256, 224, 224)
    g = torch.Generator().manual_seed(0)
    obj = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g).to(device)
    ctx = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g).to(device)
    mask = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=g).to(device)
    ctx_mask = torch.randint(0, 256, (n, h, w), dtype=torch.uint8, generator=g).to(device)
    flip = (torch.rand(n, generator=g) < 0.5).to(device)
    compiled_ref = None if args.no_compile else torch.compile(composite_ref)
    for mode in args.modes:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            kw = dict(mode=mode, flip=flip, out_dtype=dtype, channels_last=True)
            n_out = 2 if mode in ("double", "pair") else 1
            px = n * h * w
            read = px * 3 + (px * 3 + px if mode != "none" else 0) + (px if mode == "double" else 0)
            nbytes = read + n_out * px * 3 * dtype.itemsize
            rows: Dict[str, Dict[str, float]] = {}
            if device.type == "cuda":
                from cit_fast.kernels._composite import composite_triton

                rows["triton"] = try_measure(lambda: composite_triton(obj, mask, ctx, ctx_mask, **kw),
                                             device, args)
            else:
                rows["triton"] = {"error": "needs CUDA (not timed on the CPU)"}
            rows["eager reference"] = try_measure(lambda: composite_ref(obj, mask, ctx, ctx_mask, **kw),
                                                  device, args)
            if compiled_ref is not None:
                t0 = time.perf_counter()
                try:
                    compiled_ref(obj, mask, ctx, ctx_mask, **kw)  # compile outside the timing
                    rows["compile(reference)"] = measure(lambda: compiled_ref(obj, mask, ctx, ctx_mask, **kw),
                                                         device, args.warmup, args.iters)
                    rows["compile(reference)"]["compile_s"] = time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001
                    rows["compile(reference)"] = {"error": f"failed: {type(e).__name__}: {str(e)[:100]}"}
            title = (f"composite mode={mode}: {n}x{h}x{w} uint8 -> {dtype_name} channels_last, "
                     f"flip mixed ({nbytes / 1e6:.1f} MB moved)")
            report(title, rows, "eager reference", nbytes, peak_gbs)


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


def bench_attention(args, device: torch.device) -> None:
    b, c, kc, d, heads = (4, 20, 30, 128, 4) if args.quick else (64, 80, 100, 512, 8)
    g = torch.Generator().manual_seed(0)
    dtypes = ["float32"] if device.type != "cuda" else args.attn_dtypes
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        q = torch.randn(b, c, d, generator=g).to(device, dtype).requires_grad_()
        k = torch.randn(kc, d, generator=g).to(device, dtype).requires_grad_()
        v = torch.randn(kc, d, generator=g).to(device, dtype).requires_grad_()
        prior = torch.softmax(torch.randn(kc, generator=g), 0).to(device).requires_grad_()
        grad_out = torch.randn(b, c, d, generator=g).to(device, dtype)
        impls: Dict[str, Callable] = {}
        if device.type == "cuda":
            from cit_fast.kernels._causal_attention import causal_attention_triton

            impls["triton"] = causal_attention_triton
        else:
            impls["triton"] = None
        impls["eager reference"] = causal_attention_ref
        if not args.no_compile:
            impls["compile(reference)"] = torch.compile(causal_attention_ref)
        impls["sdpa (prior in V)"] = sdpa_prior_in_v
        shape = f"B={b} C={c} Kc={kc} D={d} H={heads} {dtype_name}"
        for phase in ("fwd", "fwd+bwd"):
            rows = {}
            for name, fn in impls.items():
                if fn is None:
                    rows[name] = {"error": "needs CUDA (not timed on the CPU)"}
                    continue
                if phase == "fwd":
                    def call(fn=fn):
                        with torch.no_grad():
                            return fn(q, k, v, prior, heads)
                else:
                    def call(fn=fn):
                        out = fn(q, k, v, prior, heads)
                        return torch.autograd.grad(out, (q, k, v, prior), grad_out)
                rows[name] = try_measure(call, device, args)
            report(f"causal attention {phase}: {shape}", rows, "eager reference")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes (default on a CPU)")
    p.add_argument("--only", choices=["composite", "attention"], help="run one kernel's benchmark")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 10 GPU / 3 CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed calls (default 50 GPU / 20 CPU)")
    p.add_argument("--modes", nargs="+", default=["single", "pair"],
                   choices=["none", "single", "double", "pair"], help="composite modes")
    p.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"],
                   choices=["float32", "float16", "bfloat16"], help="composite output dtypes")
    p.add_argument("--attn-dtypes", nargs="+", default=["bfloat16"],
                   choices=["float32", "float16", "bfloat16"], help="attention dtypes (GPU; CPU: fp32)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile(reference) rows")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 gives steadier CPU figures on a shared machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        args.quick = True
    args.warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 3)
    args.iters = args.iters if args.iters is not None else (50 if device.type == "cuda" else 20)
    header(args, device)
    peak = peak_bandwidth(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if args.only in (None, "composite"):
        bench_composite(args, device, peak)
    if args.only in (None, "attention"):
        bench_attention(args, device)


if __name__ == "__main__":
    main()
