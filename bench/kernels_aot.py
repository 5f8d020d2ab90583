#!/usr/bin/env python
"""Ahead-of-time compilation gate: how the Triton kernels would run on sm_90 / sm_80, on a CPU.

    python bench/kernels_aot.py                     # the full table, sm_90 and sm_80; prints it
    python bench/kernels_aot.py --subset ci --check # the CI subset; exit 1 if a gate rule fails
    python bench/kernels_aot.py --arch sm_90 --only attention --markdown
    python bench/kernels_aot.py --json out.json     # every launch's figures, for tests and diffs

The real launchers (``composite_forward``, ``causal_attention_forward`` / ``_backward``) are called
on ``meta`` tensors of training shapes; every launch they make is intercepted where
``JITFunction.run`` would compile it, specialised exactly as ``run`` does (same binder, same
``_pack_args``), and compiled with ``triton.compile`` for a CUDA target with the ptxas bundled in
the triton wheel. Nothing runs; no GPU is needed. Per launch it reports:

  regs       registers per thread (ptxas -v)          spill     spill-store bytes per thread (ptxas)
  smem       shared memory per CTA (Triton metadata)  CTAs/SM   resident CTAs per SM (regs, smem,
  waves      programs / (CTAs/SM * SMs)                          warps and CTA limits of the part)
  dots       how every tl.dot lowered (TTGIR): wgmma (Hopper warp-group MMA), mma (mma.sync v2),
             fma (no tensor cores)
  ld / st    global loads / stores per width in bytes (PTX: ld/st.global, cp.async)

Gate rules (--check, and tests/kernels/test_aot_gate.py): every case compiles; zero spills in what
launches; on sm_90 every attention dot is wgmma (bf16, fp16, and fp32 through tf32; tf32x3 may take
mma), on sm_80 mma; the composite's
common cases (uint8 images, W a multiple of 8) load and store pixels >= 8 bytes at a time.

Results are cached per case under --cache (keyed on the kernel sources, Triton's version, the target
and the case), so a second run over unchanged kernels takes seconds; a cold full table compiles
several hundred kernels (minutes on 2 cores), the CI subset a few dozen.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
HARNESS_VERSION = 3  # bump when what a record holds changes


@dataclass(frozen=True)
class Arch:
    """The parts the gate compiles for (datasheet limits; SMs of the SXM parts)."""

    name: str
    cc: int  # compute capability, e.g. 90
    sms: int  # streaming multiprocessors
    smem_per_sm: int  # bytes of shared memory an SM can give its CTAs
    smem_per_cta: int  # largest opt-in shared memory per CTA
    part: str


ARCHS = {
    "sm_90": Arch("sm_90", 90, 132, 228 * 1024, 227 * 1024, "H100/H200 SXM"),
    "sm_80": Arch("sm_80", 80, 108, 164 * 1024, 163 * 1024, "A100 SXM"),
}


def resident_ctas(regs: int, smem: int, num_warps: int, arch: Arch) -> int:
    """CTAs an SM holds at once: the launchers' own rule (kernels/_triton_compat.py)."""
    from cit_fast.kernels._triton_compat import Target, resident_ctas as rule

    return rule(regs, smem, num_warps, Target(arch.cc, arch.sms, arch.smem_per_sm, arch.smem_per_cta))


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------
COMPOSITE_SHAPE = (256, 224, 224)  # N, H, W: an ImageNet batch
ATTN_B, ATTN_HEADS = 64, 8
MODES = ("none", "single", "pair", "double")
OUT_DTYPES = ("float32", "bfloat16", "float16")
ATTN_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Case:
    op: str  # "composite" or "attention"
    params: Tuple[Tuple[str, object], ...]

    @property
    def p(self) -> Dict[str, object]:
        return dict(self.params)

    @property
    def label(self) -> str:
        p = self.p
        if self.op == "composite":
            return (f"composite {p['mode']:<6} {p['layout']} {p['out']:<8} "
                    f"{'flip' if p['flip'] else 'noflip'}")
        return (f"attn Lq={p['lq']:<3} Kc={p['kc']:<4} D={p['d']:<3} {p['dtype']:<8}"
                f"{' +attn' if p['return_attn'] else ''}{' tf32x3' if p.get('precision') else ''}"
                f"{' +dprior' if p.get('dprior') else ''}")


# The CI subset (tests/kernels/test_aot_gate.py, about a minute cold on 2 cores): every composite
# mode, both layouts, the three output dtypes; attention at the model's Kc=100 (fp32 and bf16, head
# dim 64 and 128), the smallest and largest Kc with return_attn, one Lq (Lq changes grids only).
CI_COMPOSITE = {("single", "nchw", "bfloat16", True), ("pair", "nhwc", "float32", True),
                ("double", "nchw", "float16", False), ("none", "nhwc", "bfloat16", False)}
CI_ATTENTION = {(80, 100, 64, "float32", False), (80, 100, 64, "bfloat16", False),
                (80, 100, 128, "float32", False), (80, 16, 128, "bfloat16", True),
                (80, 1024, 32, "float16", True)}
CI_TF32X3 = {(100, 64)}  # fp32 through tf32x3 (the table: Kc 100/1024 x every D, at Lq=80)
CI_DPRIOR = {(100, "float32")}  # a prior with a gradient (the table: Kc 100/1024 x fp32/bf16, D=64)


def composite_cases(subset: str) -> List[Case]:
    cases = []
    for mode in MODES:
        for layout in ("nchw", "nhwc"):
            for out in OUT_DTYPES:
                for flip in (False, True):
                    if subset == "ci" and (mode, layout, out, flip) not in CI_COMPOSITE:
                        continue
                    cases.append(Case("composite", (("mode", mode), ("layout", layout), ("out", out),
                                                    ("flip", flip))))
    return cases


def attention_cases(subset: str) -> List[Case]:
    """D is the head dim (the model dim is 8 * D); Lq the labels per image (M = 64 * Lq rows)."""
    cases = []
    for lq in (20, 80, 171):
        for kc in (16, 100, 1024):
            for d in (32, 64, 128):
                for dtype in ATTN_DTYPES:
                    for ret in (False, True):
                        if subset == "ci" and (lq, kc, d, dtype, ret) not in CI_ATTENTION:
                            continue
                        cases.append(Case("attention", (("lq", lq), ("kc", kc), ("d", d), ("dtype", dtype),
                                                        ("return_attn", ret))))
    for kc in (100, 1024):  # the accurate fp32 option
        for d in (32, 64, 128):
            if subset == "ci" and (kc, d) not in CI_TF32X3:
                continue
            cases.append(Case("attention", (("lq", 80), ("kc", kc), ("d", d), ("dtype", "float32"),
                                            ("return_attn", False), ("precision", "tf32x3"))))
    for kc in (100, 1024):  # the model's prior is a buffer; a prior that learns adds dprior
        for dtype in ("float32", "bfloat16"):
            if subset == "ci" and (kc, dtype) not in CI_DPRIOR:
                continue
            cases.append(Case("attention", (("lq", 80), ("kc", kc), ("d", 64), ("dtype", dtype),
                                            ("return_attn", False), ("dprior", True))))
    return cases


def all_cases(subset: str, only: Optional[str]) -> List[Case]:
    cases = []
    if only in (None, "composite"):
        cases += composite_cases(subset)
    if only in (None, "attention"):
        cases += attention_cases(subset)
    return cases


# ----------------------------------------------------------------------------------------------
# Compiling what a launcher launches
# ----------------------------------------------------------------------------------------------
@dataclass
class Launch:
    """One kernel launch of a case, compiled for one arch."""

    kernel: str
    grid: Tuple[int, int, int]
    num_warps: int
    num_stages: int
    constexprs: Dict[str, str]
    regs: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    smem: int = 0
    ctas_per_sm: int = 0
    waves: float = 0.0
    dots: List[str] = field(default_factory=list)
    ld: Dict[str, int] = field(default_factory=dict)  # width in bytes (str) -> instructions
    st: Dict[str, int] = field(default_factory=dict)
    wgmma_waits0: int = 0  # warp_group_dot_wait with pendings = 0 (nothing overlapped)
    compile_s: float = 0.0
    error: str = ""


class _Compiled:
    """What the patched JITFunction.run returns: enough of a CompiledKernel for the launchers."""

    def __init__(self, kernel, regs: int, spills: int):
        self._k = kernel
        self.metadata = kernel.metadata
        self.n_regs, self.n_spills = regs, spills
        self.asm = kernel.asm


_PTXAS_RE = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def _ptxas_figures(log: str, ptx: str, arch: Arch) -> Dict[str, int]:
    if "Used" not in log:  # Triton's cache served the kernel: ptxas did not run, run it here
        from triton.backends.nvidia.compiler import get_ptxas

        gpu = f"sm_{arch.cc}a" if arch.cc == 90 else f"sm_{arch.cc}"
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "k.ptx"
            src.write_text(ptx)
            res = subprocess.run([get_ptxas(arch.cc).path, "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu}",
                                  str(src), "-o", str(Path(tmp) / "k.o")], capture_output=True, text=True)
            log = res.stderr + res.stdout
    out = {}
    for key, rx in _PTXAS_RE.items():
        vals = [int(v) for v in rx.findall(log)]
        out[key] = max(vals) if vals else 0
    return out


def _dot_lowering(ttgir: str) -> Tuple[List[str], int]:
    """How each dot of the TTGIR lowered, and how many wgmma waits wait for everything."""
    versions = {m.group(1): int(m.group(2)) for m in
                re.finditer(r"^(#mma\d*) = #ttg\.nvidia_mma<\{versionMajor = (\d+)", ttgir, re.M)}
    dots = []
    for line in ttgir.splitlines():
        if "ttng.warp_group_dot " in line:
            dots.append("wgmma")
        elif re.search(r"= tt\.dot ", line):
            enc = re.search(r"-> tensor<[^,>]+, (#\w+)>", line)
            name = enc.group(1) if enc else ""
            ver = versions.get(name)
            dots.append("mma" if ver == 2 else "wgmma" if ver == 3 else "fma")
    waits0 = len(re.findall(r"warp_group_dot_wait .*pendings = 0 ", ttgir))
    return dots, waits0


_WIDTH_RE = re.compile(r"^[bsuf](8|16|32|64|128)$")


def _mem_widths(ptx: str) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Global loads and stores by width in bytes, from the PTX (cp.async counts as a load)."""
    ld, st = Counter(), Counter()
    for line in ptx.splitlines():
        s = line.strip()
        if s.startswith("@"):
            s = s.split(None, 1)[1] if " " in s else ""
        op = s.split(None, 1)[0] if s else ""
        if op.startswith("cp.async.") and ".shared.global" in op:
            m = re.search(r",\s*(\d+)\s*(?:,|;)", s)
            if m:
                ld[m.group(1)] += 1
            continue
        if not (op.startswith("ld.global") or op.startswith("st.global")):
            continue
        parts = op.split(".")
        vec = next((int(p[1:]) for p in parts if p in ("v2", "v4", "v8")), 1)
        bits = next((int(m.group(1)) for p in parts if (m := _WIDTH_RE.match(p))), 0)
        (ld if op.startswith("ld") else st)[str(vec * bits // 8)] += 1
    return dict(ld), dict(st)


_MEMO: Dict[Tuple[str, str], Tuple[Optional[_Compiled], Launch]] = {}  # (arch, launch key) -> compiled


class Capture:
    """Patches JITFunction.run so that launches compile for ``arch`` instead of running.

    Compiled kernels are remembered for the process: cases that launch the same specialisation
    (e.g. differing only in Lq) compile it once.
    """

    def __init__(self, arch: Arch, all_configs: bool = True):
        self.arch = arch
        self.all_configs = all_configs
        self.launches: List[Launch] = []
        self.candidates: List[Launch] = []  # compiled on request (autotuning candidates, occupancy)
        self._seen: set = set()

    def __enter__(self):
        import triton
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature

        target = GPUTarget("cuda", self.arch.cc, 32)
        backend = make_backend(target)
        binders = {}
        cap = self

        def run(fn, *args, grid, warmup, **kwargs):
            kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
            kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
            if fn not in binders:
                binders[fn] = create_function_from_signature(fn.signature, fn.params, backend)
            bound, spec, opts = binders[fn](*args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, spec, opts)
            names = [p.name for p in fn.params]
            cexpr = {names[k[0]]: str(v) for k, v in constexprs.items() if len(k) == 1}
            key = (cap.arch.name, json.dumps([fn.fn.__qualname__, str(signature), sorted(cexpr.items()), str(attrs),
                                              sorted((k, str(v)) for k, v in options.__dict__.items())]))
            if key not in _MEMO:
                rec = Launch(fn.fn.__name__, (1, 1, 1), options.num_warps, options.num_stages, cexpr)
                log = io.StringIO()
                t0 = time.perf_counter()
                old = knobs.nvidia.dump_ptxas_log
                knobs.nvidia.dump_ptxas_log = True
                try:
                    with contextlib.redirect_stdout(log):
                        kern = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                              options=options.__dict__)
                except Exception as e:  # noqa: BLE001 - a failed compile is a gate failure, recorded
                    rec.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                    _MEMO[key] = (None, rec)
                else:
                    rec.compile_s = time.perf_counter() - t0
                    fig = _ptxas_figures(log.getvalue(), kern.asm["ptx"], cap.arch)
                    rec.regs, rec.spill_stores = fig["regs"], fig["spill_stores"]
                    rec.spill_loads, rec.stack = fig["spill_loads"], fig["stack"]
                    rec.smem = int(kern.metadata.shared)
                    rec.ctas_per_sm = resident_ctas(rec.regs, rec.smem, rec.num_warps, cap.arch)
                    rec.dots, rec.wgmma_waits0 = _dot_lowering(kern.asm["ttgir"])
                    rec.ld, rec.st = _mem_widths(kern.asm["ptx"])
                    _MEMO[key] = (_Compiled(kern, rec.regs, rec.spill_stores), rec)
                finally:
                    knobs.nvidia.dump_ptxas_log = old
            compiled, proto = _MEMO[key]
            if warmup:  # a launcher asking for the compiled kernel (occupancy, autotune candidates)
                if key not in cap._seen:
                    cap._seen.add(key)
                    cap.candidates.append(proto)
                if compiled is None:
                    raise RuntimeError(f"{fn.fn.__name__}: {proto.error}")
                return compiled
            if callable(grid):
                grid = grid(bound)
            g = tuple(int(x) for x in grid) + (1,) * (3 - len(grid))
            rec = Launch(**{**asdict(proto), "grid": g})
            programs = g[0] * g[1] * g[2]
            rec.waves = programs / (rec.ctas_per_sm * cap.arch.sms) if rec.ctas_per_sm else float("inf")
            cap.launches.append(rec)
            return compiled

        self._JIT, self._old_run = JITFunction, JITFunction.run
        JITFunction.run = run
        from cit_fast.kernels import _triton_compat

        self._compat = _triton_compat
        _triton_compat.set_aot_target(_triton_compat.Target(
            cc=self.arch.cc, sms=self.arch.sms, smem_per_sm=self.arch.smem_per_sm,
            smem_per_cta=self.arch.smem_per_cta), all_configs=self.all_configs)
        return self

    def __exit__(self, *exc):
        self._JIT.run = self._old_run
        self._compat.set_aot_target(None)
        return False


def _launch_case(case: Case) -> None:
    """Call the real launchers on meta tensors, as training would."""
    import torch

    meta = torch.device("meta")
    p = case.p
    if case.op == "composite":
        from cit_fast.kernels._composite import composite_forward

        n, h, w = COMPOSITE_SHAPE
        img = torch.empty((n, h, w, 3), dtype=torch.uint8, device=meta)
        msk = torch.empty((n, h, w), dtype=torch.uint8, device=meta)
        flip = torch.empty((n,), dtype=torch.bool, device=meta) if p["flip"] else None
        mode = p["mode"]
        composite_forward(img, msk if mode != "none" else None, img if mode != "none" else None,
                          msk if mode == "double" else None, flip, mode, [0.485, 0.456, 0.406],
                          [0.229, 0.224, 0.225], getattr(torch, p["out"]), p["layout"] == "nhwc")
        return
    from cit_fast.kernels import _causal_attention as ca

    dt = getattr(torch, p["dtype"])
    b, c, kc, dh, heads = ATTN_B, p["lq"], p["kc"], p["d"], ATTN_HEADS
    d = dh * heads
    q = torch.empty((b, c, d), dtype=dt, device=meta)
    k = torch.empty((kc, d), dtype=dt, device=meta)
    v = torch.empty((kc, d), dtype=dt, device=meta)
    prior = torch.empty((kc,), dtype=torch.float32, device=meta)
    scale = dh ** -0.5
    prec = p.get("precision")
    kw = {"precision": prec} if prec else {}  # (older kernels, measured for comparison, had no precision)
    out, attn, lse = ca.causal_attention_forward(q, k, v, prior, heads, scale, p["return_attn"], **kw)
    dattn = torch.empty_like(attn) if p["return_attn"] else None
    # the model's prior is a buffer (no dprior); older kernels always computed it
    bkw = dict(kw, need_dprior=bool(p.get("dprior"))) \
        if "need_dprior" in ca.causal_attention_backward.__code__.co_varnames else {}
    ca.causal_attention_backward(q, k, v, prior, out, lse, torch.empty_like(out), dattn, heads, scale, **bkw)


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    """Of the kernel sources as first read by this process (the code it compiles)."""
    import triton

    h = hashlib.sha256(f"{HARNESS_VERSION} {triton.__version__}".encode())
    for f in sorted((ROOT / "kernels").glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_case(arch_name: str, case: Case, cache: Optional[str], all_configs: bool = True) -> Dict[str, object]:
    """Compile one case for one arch (cached): {'arch', 'case', 'launches' | 'error'}.

    all_configs: also compile every autotuning candidate (their launches are not listed: a
    failing one shows as the case's error or as a spill in the summary of --json)."""
    path = None
    if cache:
        key = hashlib.sha256(json.dumps([_source_hash(), arch_name, case.op, case.params,
                                         all_configs]).encode()).hexdigest()
        path = Path(cache) / f"{key[:24]}.json"
        if path.exists():
            return json.loads(path.read_text())
    res: Dict[str, object] = {"arch": arch_name, "op": case.op, "case": case.label, "params": case.p}
    t0 = time.perf_counter()
    try:
        with Capture(ARCHS[arch_name], all_configs) as cap:
            _launch_case(case)
        res["launches"] = [asdict(x) for x in cap.launches]
        res["candidates"] = [asdict(x) for x in cap.candidates]
        errors = [x.error for x in cap.launches if x.error]
        if errors:
            res["error"] = errors[0]
    except Exception as e:  # noqa: BLE001 - recorded: a case that cannot compile fails the gate
        msg = str(e).strip().splitlines()
        res["error"] = f"{type(e).__name__}: {msg[0][:300] if msg else ''}"
        res["launches"] = []
    res["seconds"] = time.perf_counter() - t0
    if path is not None and "error" not in res:
        from cit_fast.utils import atomic_write_text

        atomic_write_text(path, json.dumps(res))
    return res


def _run_chunk(args) -> List[Dict[str, object]]:
    arch_name, cases, cache, all_configs = args
    return [run_case(arch_name, c, cache, all_configs) for c in cases]


def run_all(archs: Sequence[str], cases: Sequence[Case], jobs: int, cache: Optional[str],
            all_configs: bool = True) -> List[Dict[str, object]]:
    work = [(a, c) for a in archs for c in cases]
    if jobs <= 1 or len(work) <= 1:
        return [run_case(a, c, cache, all_configs) for a, c in work]
    # cases that differ only in Lq launch the same kernels: one worker compiles them once
    groups: Dict[Tuple, List[Case]] = {}
    for a, c in work:
        groups.setdefault((a, tuple(kv for kv in c.params if kv[0] != "lq")), []).append(c)
    args = [(key[0], lst, cache, all_configs) for key, lst in groups.items()]
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        out = [r for chunk in pool.map(_run_chunk, args) for r in chunk]
    order = {(a, c.label): i for i, (a, c) in enumerate(work)}
    return sorted(out, key=lambda r: order[(r["arch"], r["case"])])


# ----------------------------------------------------------------------------------------------
# Gate rules and report
# ----------------------------------------------------------------------------------------------
def composite_is_common(params: Dict[str, object]) -> bool:
    """uint8 NHWC images whose width is a multiple of 8 (every table case: 224 wide)."""
    return COMPOSITE_SHAPE[2] % 8 == 0


def _narrow(counts: Dict[str, int]) -> int:
    return sum(n for w, n in counts.items() if int(w) < 8)


def tensor_core_dots(arch: str, params: Dict[str, object]) -> set:
    """How an attention dot may lower: wgmma on sm_90 (bf16, fp16, fp32 through tf32), mma on
    sm_80; tf32x3 on sm_90 may take mma.sync too (its split operands spill every wgmma tile at
    D=128: the launcher falls back to mma tiles that do not)."""
    if arch != "sm_90":
        return {"mma"}
    return {"wgmma", "mma"} if params.get("precision") == "tf32x3" else {"wgmma"}


def gate_failures(results: Iterable[Dict[str, object]]) -> List[str]:
    """Every rule the gate checks, as one line per failure."""
    fails = []
    for r in results:
        where = f"{r['arch']} {r['case']}"
        if r.get("error"):
            fails.append(f"{where}: does not compile: {r['error']}")
            continue
        for ln in r["launches"] + r.get("candidates", []):
            w = f"{where} {ln['kernel']}" + (f" (candidate {_tile(ln)})" if ln in r.get("candidates", []) else "")
            if (ln["spill_stores"] or ln["spill_loads"]) and ln in r["launches"]:
                # (a candidate ptxas spills is compiled, and dropped by pick_config: never launched)
                fails.append(f"{w}: spills {ln['spill_stores']} B stores / {ln['spill_loads']} B loads")
            if r["op"] == "attention":
                want = tensor_core_dots(r["arch"], r["params"])
                bad = [d for d in ln["dots"] if d not in want]
                if bad:
                    fails.append(f"{w}: dots lowered to {', '.join(sorted(set(bad)))}, not {' or '.join(sorted(want))}")
            elif composite_is_common(r["params"]) and ln in r["launches"]:
                # one narrow load is allowed: the per-sample flip flag (a byte)
                if _narrow(ln["ld"]) > 1 or _narrow(ln["st"]):
                    fails.append(f"{w}: narrow global accesses (< 8 B): loads {_narrow(ln['ld'])}, "
                                 f"stores {_narrow(ln['st'])} ({ln['ld']} / {ln['st']})")
    return fails


def _tile(ln: Dict[str, object]) -> str:
    ce = ln["constexprs"]
    tile = "x".join(ce[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_H", "BLOCK_W", "BLOCK") if k in ce)
    return (tile or "-") + f" w{ln['num_warps']}"


def _widths(counts: Dict[str, int]) -> str:
    return " ".join(f"{n}x{w}B" for w, n in sorted(counts.items(), key=lambda t: int(t[0]))) or "-"


def _dots(dots: List[str]) -> str:
    c = Counter(dots)
    return " ".join(f"{k}x{n}" for k, n in sorted(c.items())) or "-"


COLUMNS = ("case", "kernel", "tile", "grid", "warps", "regs", "spill B", "smem KB", "CTAs/SM", "waves", "dots", "ld", "st")


def rows(results: Iterable[Dict[str, object]]) -> List[List[str]]:
    out = []
    for r in results:
        if r.get("error") and not r["launches"]:
            out.append([f"{r['arch']} {r['case']}", "-", "-", "-", "-", "-", "-", "-", "-", "-", "ERROR",
                        r["error"][:60], ""])
            continue
        for ln in r["launches"]:
            g = ln["grid"]
            grid = "x".join(str(x) for x in (g[:2] if g[2] == 1 else g))
            out.append([f"{r['arch']} {r['case']}", ln["kernel"].strip("_").replace("kernel", "").strip("_"),
                        _tile(ln).split(" ")[0], grid,
                        str(ln["num_warps"]), str(ln["regs"]), str(ln["spill_stores"]), f"{ln['smem'] / 1024:.1f}",
                        str(ln["ctas_per_sm"]), f"{ln['waves']:.2f}", _dots(ln["dots"]) if ln["dots"] else "-",
                        _widths(ln["ld"]), _widths(ln["st"])])
    return out


def print_table(results, markdown: bool) -> str:
    table = rows(results)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in table]
    else:
        widths = [max(len(COLUMNS[i]), *(len(row[i]) for row in table)) if table else len(COLUMNS[i])
                  for i in range(len(COLUMNS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    text = "\n".join(lines)
    print(text)
    return text


def condensed(results: List[Dict[str, object]]) -> str:
    """A markdown table of the table: per arch and kernel (and attention dtype / composite mode and
    layout), the worst registers and spills over the cases, the range of waves, the dot lowering
    and the access widths seen."""
    groups: Dict[Tuple, List] = {}
    for r in results:
        p = r["params"]
        for ln in r["launches"]:
            kern = ln["kernel"].strip("_").replace("_kernel", "")
            if r["op"] == "composite":
                key = (r["arch"], kern, f"{p['mode']} {p['layout']}")
            else:
                key = (r["arch"], kern, p["dtype"] + (f" {p['precision']}" if p.get("precision") else "")
                       + (" +dprior" if p.get("dprior") else ""))
            groups.setdefault(key, []).append((r, ln))
    lines = ["| arch | kernel | variant | cases | regs (max) | spill B (max; launches) | smem KB (max) | "
             "CTAs/SM (min) | waves | dots | ld widths | st widths |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for (arch, kern, var), items in groups.items():
        lns = [ln for _, ln in items]
        spill = [ln["spill_stores"] for ln in lns]
        ld, st = Counter(), Counter()
        for ln in lns:
            ld.update(ln["ld"].keys())
            st.update(ln["st"].keys())
        waves = [ln["waves"] for ln in lns]
        lines.append(f"| {arch} | {kern} | {var} | {len(lns)} | {max(ln['regs'] for ln in lns)} | "
                     f"{max(spill)}; {sum(1 for x in spill if x)} | {max(ln['smem'] for ln in lns) / 1024:.1f} | "
                     f"{min(ln['ctas_per_sm'] for ln in lns)} | {min(waves):.2f}-{max(waves):.2f} | "
                     f"{', '.join(sorted({d for ln in lns for d in ln['dots']})) or '-'} | "
                     f"{' '.join(f'{w}B' for w in sorted(ld, key=int)) or '-'} | "
                     f"{' '.join(f'{w}B' for w in sorted(st, key=int)) or '-'} |")
    return "\n".join(lines)


def summary(results: List[Dict[str, object]]) -> str:
    launches = [(r, ln) for r in results for ln in r["launches"]]
    spilling = [(r, ln) for r, ln in launches if ln["spill_stores"]]
    worst = max(spilling, key=lambda t: t[1]["spill_stores"], default=None)
    dots = Counter(d for r, ln in launches if r["op"] == "attention" for d in ln["dots"])
    errors = sum(1 for r in results if r.get("error"))
    cands = {(r["arch"], ln["kernel"], json.dumps(ln["constexprs"], sort_keys=True)): ln
             for r in results for ln in r.get("candidates", [])}
    parts = [f"{len(results)} cases, {len(launches)} launches, {errors} failing to compile",
             f"{len(cands)} distinct configs compiled on request (autotuning candidates, occupancy), "
             f"{sum(1 for ln in cands.values() if ln['spill_stores'])} spill",
             f"{len(spilling)} launches spill" + (f" (worst {worst[1]['spill_stores']} B: {worst[0]['arch']} "
                                                  f"{worst[0]['case']} {worst[1]['kernel']})" if worst else ""),
             "attention dots: " + (", ".join(f"{k} {n}" for k, n in sorted(dots.items())) or "none")]
    return "; ".join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--subset", default="full", choices=["full", "ci"], help="the whole table or the CI subset")
    ap.add_argument("--only", choices=["composite", "attention"])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiling processes")
    ap.add_argument("--cache", default=str(ROOT / "build" / "kernels_aot"),
                    help="per-case result cache ('' = none)")
    ap.add_argument("--json", default="", help="write every record here")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--condensed", action="store_true", help="print one row per arch, kernel and variant")
    ap.add_argument("--from-json", default="", help="report a --json file of an earlier run (no compiling)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a gate rule fails")
    ap.add_argument("--all-configs", choices=["yes", "no", "auto"], default="auto",
                    help="also compile every autotuning candidate (auto: for the full table only)")
    args = ap.parse_args(argv)
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1":
        print("kernels_aot: triton was imported with TRITON_INTERPRET=1; run this as its own process",
              file=sys.stderr)
        return 2
    os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile, never interpret
    try:
        import triton
    except ImportError as e:
        print(f"kernels_aot: needs triton ({e})", file=sys.stderr)
        return 2
    cases = all_cases(args.subset, args.only)
    t0 = time.perf_counter()
    all_configs = args.all_configs == "yes" or (args.all_configs == "auto" and args.subset == "full")
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())["results"]
    else:
        results = run_all(args.arch, cases, args.jobs, args.cache or None, all_configs)
    secs = time.perf_counter() - t0
    print(f"# AOT gate: {args.subset} table, {', '.join(f'{a} ({ARCHS[a].part}, {ARCHS[a].sms} SMs)' for a in args.arch)}; "
          f"triton {triton.__version__}; {'every autotuning candidate compiled; ' if all_configs else ''}{secs:.1f} s")
    print(f"# command: {' '.join(shlex.quote(a) for a in ['python'] + sys.argv)}")
    if args.condensed:
        print(condensed(results))
    else:
        print_table(results, args.markdown)
    print("# " + summary(results))
    fails = gate_failures(results)
    if args.json:
        from cit_fast.utils import atomic_write_json

        atomic_write_json(Path(args.json), {"seconds": secs, "results": results, "failures": fails})
    if fails:
        print(f"# gate: {len(fails)} failures")
        for f in fails[:40]:
            print(f"#   {f}")
    else:
        print("# gate: pass")
    return 1 if (fails and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
