"""What the Triton launchers share: the interpreter's quirks, the target GPU, occupancy, and a
small autotuner.

Interpreter (TRITON_INTERPRET=1, Triton 3.8) vs GPU:
1. fp32 -> bf16 casts truncate in the interpreter (``_convert_float`` ignores the rounding mode for
   bf16); GPUs round to nearest even. ``to_dtype(..., EMULATE_RNE=True)`` rounds the fp32 bits
   first, after which the interpreter's truncation is exact.
2. ``tl.dot`` on bf16 operands multiplies their raw uint16 storage in the interpreter. The
   attention kernel hands bf16 operands to ``tl.dot`` as fp32 there (exact: bf16 -> fp32 is).
3. ``tl.dot``'s ``input_precision`` is ignored (NumPy fp32 matmul): tf32 is not emulated.

Target: launchers size grids to whole waves of the GPU they launch on (SM count, resident CTAs per
SM from the compiled kernel's registers and shared memory). ``bench/kernels_aot.py`` compiles for
a GPU that is not there: it sets an AOT target, and launchers called on ``meta`` tensors then
behave as on that GPU.

Autotuning (``pick_config``): each launcher lists a few configs for its key (Kc, head dim, dtype,
variant), already pruned by the register and shared-memory limits the AOT gate checks; on CUDA the
first call of a key compiles each survivor, drops those ptxas had to spill, times the rest once
(``triton.testing.do_bench``) and keeps the fastest (``CIT_FAST_AUTOTUNE=0``: the first one that
does not spill). On ``meta`` (the AOT gate) a launch takes the first survivor that does not spill;
with ``all_configs`` the gate compiles every survivor.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Optional, Sequence, TypeVar

import torch
import triton
import triton.language as tl

C = TypeVar("C")


def interpreting(t: torch.Tensor) -> bool:
    """Triton runs on CPU tensors only under the interpreter (meta tensors: the AOT gate)."""
    return t.device.type == "cpu"


@triton.jit
def to_dtype(x, DTYPE: tl.constexpr, EMULATE_RNE: tl.constexpr):
    """x -> DTYPE, rounding to nearest even. EMULATE_RNE: interpreter and DTYPE is bf16 (see 1.)."""
    if EMULATE_RNE:
        if x.dtype == tl.float32:
            bits = x.to(tl.uint32, bitcast=True)
            bits = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16) << 16
            x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


# ----------------------------------------------------------------------------------------------
# The GPU a launch is for
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    cc: int  # compute capability, e.g. 90
    sms: int  # streaming multiprocessors
    smem_per_sm: int  # bytes of shared memory an SM gives its CTAs
    smem_per_cta: int  # largest (opt-in) shared memory of one CTA


REGS_PER_SM, MAX_WARPS_PER_SM, MAX_CTAS_PER_SM, MAX_REGS_PER_THREAD = 65536, 64, 32, 255
_AOT: Dict[str, object] = {"target": None, "all_configs": False}


def set_aot_target(target: Optional[Target], all_configs: bool = False) -> None:
    """Make launches on ``meta`` tensors behave as on ``target`` (None: off). all_configs: compile
    every autotuning candidate, not only the one a launch uses."""
    _AOT["target"], _AOT["all_configs"] = target, bool(all_configs and target is not None)


def target_of(device: torch.device) -> Optional[Target]:
    """The GPU behind ``device``; the AOT target for ``meta``; None for the interpreter."""
    if device.type == "cuda":
        return _cuda_target(device.index if device.index is not None else torch.cuda.current_device())
    if device.type == "meta":
        return _AOT["target"]  # type: ignore[return-value]
    return None


_CUDA_TARGETS: Dict[int, Target] = {}


def _cuda_target(index: int) -> Target:
    if index not in _CUDA_TARGETS:
        p = torch.cuda.get_device_properties(index)
        per_sm = getattr(p, "shared_memory_per_multiprocessor", 0) or 228 * 1024
        per_cta = getattr(p, "shared_memory_per_block_optin", 0) or per_sm - 1024
        _CUDA_TARGETS[index] = Target(p.major * 10 + p.minor, p.multi_processor_count, per_sm, per_cta)
    return _CUDA_TARGETS[index]


def resident_ctas(regs: int, smem: int, num_warps: int, target: Target) -> int:
    """CTAs an SM holds at once (the CUDA occupancy calculator's rules for sm_80 / sm_90)."""
    per_warp = -(-regs * 32 // 256) * 256  # registers are allocated per warp in units of 256
    by_regs = REGS_PER_SM // (per_warp * num_warps) if regs else MAX_CTAS_PER_SM
    by_warps = MAX_WARPS_PER_SM // num_warps
    by_smem = target.smem_per_sm // (smem + 1024) if smem else MAX_CTAS_PER_SM  # 1 KB reserved per CTA
    return max(0, min(by_regs, by_warps, by_smem, MAX_CTAS_PER_SM))


_SLOTS: Dict[Hashable, int] = {}


def _binary_figure(compiled, name: str) -> int:
    """``n_regs`` / ``n_spills`` of a compiled kernel; a real CompiledKernel knows them once its
    binary is loaded (0 where the object does not tell)."""
    value = getattr(compiled, name, None)
    if value is None and hasattr(compiled, "_init_handles"):
        compiled._init_handles()
        value = getattr(compiled, name, None)
    return int(value or 0)


def wave_slots(kernel, key: Hashable, target: Target, args: Sequence, kwargs: Dict) -> int:
    """CTAs of ``kernel`` (with these constexprs) the whole GPU holds at once: one wave.

    Compiles the kernel once (``warmup``: Triton's cache, no launch) to read its registers and
    shared memory; cached per key.
    """
    if key not in _SLOTS:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
        regs = _binary_figure(compiled, "n_regs")
        ctas = resident_ctas(regs, int(compiled.metadata.shared), int(compiled.metadata.num_warps), target)
        _SLOTS[key] = max(1, ctas) * target.sms
    return _SLOTS[key]


_CHOSEN: Dict[Hashable, object] = {}
MAX_TIMED = 3  # clean candidates the autotuner times per key (in preference order)


def spills_of(compiled) -> int:
    """Spill bytes per thread of a compiled kernel (ptxas)."""
    return _binary_figure(compiled, "n_spills")


def pick_config(key: Hashable, candidates: Sequence[C], device: torch.device,
                warm: Callable[[C], object], timed: Callable[[C], Callable[[], None]]) -> C:
    """The config a launch of ``key`` uses (see the module doc).

    warm(cfg) compiles cfg without launching it and returns the compiled kernel; timed(cfg) returns
    a callable that launches it. The register estimates that pruned the candidates are estimates:
    ptxas has the last word, so a candidate that compiles with spills is never picked while one
    that does not is left (on ``meta``, the AOT gate: the first in preference order that does not
    spill; on CUDA, the fastest of the first MAX_TIMED that do not).
    """
    if not candidates:
        raise ValueError(f"no kernel config fits {key}")
    if len(candidates) == 1 or device.type not in ("cuda", "meta"):
        return candidates[0]
    if key in _CHOSEN:
        return _CHOSEN[key]  # type: ignore[return-value]
    # compiled in preference order until `want` do not spill (the AOT gate with all_configs
    # compiles what the autotuner on a GPU would)
    want = MAX_TIMED if device.type == "cuda" or _AOT["all_configs"] else 1
    clean = []
    for cfg in candidates:
        if spills_of(warm(cfg)) == 0:
            clean.append(cfg)
            if len(clean) == want:
                break
    clean = clean or list(candidates[:1])
    if device.type == "meta" or len(clean) == 1 or os.environ.get("CIT_FAST_AUTOTUNE", "1") == "0":
        _CHOSEN[key] = clean[0]
    else:
        from triton.testing import do_bench

        times = [do_bench(timed(cfg), warmup=5, rep=25) for cfg in clean]
        _CHOSEN[key] = clean[min(range(len(times)), key=times.__getitem__)]
    return _CHOSEN[key]  # type: ignore[return-value]
