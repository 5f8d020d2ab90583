"""The AOT gate in CI: the kernels compiled for sm_90 and sm_80 on this CPU (bench/kernels_aot.py).

The CI subset (``--subset ci``: every composite mode, layout and output dtype; attention at the
model's Kc=100 in fp32 and bf16, head dims 64 and 128, the smallest and largest Kc with
return_attn) compiles in about a minute on 2 cores, cached under build/kernels_aot for reruns; the
whole table (``python bench/kernels_aot.py``, every autotuning candidate too) takes many minutes
and is recorded in bench/RESULTS.md. Rules: every case compiles; zero spills; on sm_90 every
attention dot is a wgmma (bf16, fp16, and fp32 through tf32 or tf32x3), on sm_80 an mma; the composite
loads and stores pixels at least 8 bytes at a time (one byte load left: the sample's flip flag).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import kernels_aot  # noqa: E402

from cit_fast.kernels import _causal_attention  # noqa: E402


pytestmark_gate = pytest.mark.slow  # the compiling tests (about a minute cold, seconds cached)


@pytest.fixture(scope="module")
def ci_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "ci.json"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "CIT_FAST_KERNELS")}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "kernels_aot.py"), "--subset", "ci", "--json", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return json.loads(out.read_text())


def _launches(table, op):
    return [(r, ln) for r in table["results"] if r["op"] == op for ln in r["launches"]]


@pytestmark_gate
def test_every_case_compiles(ci_table):
    results = ci_table["results"]
    assert len(results) == 2 * (len(kernels_aot.CI_COMPOSITE) + len(kernels_aot.CI_ATTENTION) + len(kernels_aot.CI_TF32X3)
                              + len(kernels_aot.CI_DPRIOR))
    for r in results:
        assert not r.get("error"), f"{r['arch']} {r['case']}: {r['error']}"
        want = ["_composite_packed_kernel"] if r["op"] == "composite" else \
            ["_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkv_kernel", "_attn_bwd_reduce_kernel"]
        assert [ln["kernel"] for ln in r["launches"]] == want, r["case"]


@pytestmark_gate
def test_zero_spills(ci_table):
    """No launch spills. Candidates may (the register estimates are estimates); pick_config drops those."""
    spills = [f"{r['arch']} {r['case']} {ln['kernel']}: {ln['spill_stores']} B"
              for r in ci_table["results"] for ln in r["launches"] if ln["spill_stores"] or ln["spill_loads"]]
    assert not spills, spills


class _FakeCompiled:
    def __init__(self, spills):
        self.n_spills = spills


@pytest.mark.parametrize("device", ["meta", "cuda"])
def test_pick_config_never_picks_a_spilling_candidate(device, monkeypatch):
    from cit_fast.kernels import _triton_compat as tc

    monkeypatch.setattr(tc, "_CHOSEN", {})
    monkeypatch.setenv("CIT_FAST_AUTOTUNE", "0")
    spills = {"a": 8, "b": 0, "c": 0}
    warmed = []

    def warm(cfg):
        warmed.append(cfg)
        return _FakeCompiled(spills[cfg])

    dev = torch.device(device) if device == "meta" else torch.device("cuda", 0)
    assert tc.pick_config(("k", device), ["a", "b", "c"], dev, warm, lambda cfg: None) == "b"
    assert tc.pick_config(("k", device), ["a", "b", "c"], dev, warm, lambda cfg: 1 / 0) == "b"  # cached
    if device == "meta":
        assert warmed == ["a", "b"]  # lazily: the first clean one
    # every candidate spills: the preferred one (a launch that spills beats no launch)
    assert tc.pick_config(("all", device), ["a"], dev, warm, lambda cfg: None) == "a"
    spills.update(b=4, c=4)
    assert tc.pick_config(("all2", device), ["a", "b", "c"], dev, warm, lambda cfg: None) == "a"


@pytestmark_gate
def test_attention_dots_on_tensor_cores(ci_table):
    for r, ln in _launches(ci_table, "attention"):
        if ln["kernel"] == "_attn_bwd_reduce_kernel":
            assert ln["dots"] == []
            continue
        want = kernels_aot.tensor_core_dots(r["arch"], r["params"])
        assert ln["dots"] and set(ln["dots"]) <= want, f"{r['arch']} {r['case']} {ln['kernel']}: {ln['dots']}"
        if r["params"].get("precision") != "tf32x3":
            assert want == {"wgmma" if r["arch"] == "sm_90" else "mma"}
        if r["params"]["dtype"] == "float32":
            assert ln["constexprs"]["PRECISION"] == r["params"].get("precision", "tf32")


@pytestmark_gate
def test_composite_accesses_at_least_8_bytes(ci_table):
    for r, ln in _launches(ci_table, "composite"):
        narrow_ld = {w: n for w, n in ln["ld"].items() if int(w) < 8}
        narrow_st = {w: n for w, n in ln["st"].items() if int(w) < 8}
        assert narrow_st == {}, (r["case"], ln["st"])
        assert narrow_ld == ({"1": 1} if r["params"]["flip"] else {}), (r["case"], ln["ld"])
        assert sum(ln["ld"].values()) >= (1 if r["params"]["mode"] == "none" else 3)


@pytestmark_gate
def test_grids_fill_whole_waves(ci_table):
    """The persistent composite: exactly one wave. The dK/dV split: its waves at least 3/4 full
    (waves / ceil(waves)), which one wave at most cannot always give (a chunk just over half the GPU)."""
    for r, ln in _launches(ci_table, "composite"):
        assert 0.99 <= ln["waves"] <= 1.0 + 1e-9, (r["case"], ln["waves"])
    for r, ln in _launches(ci_table, "attention"):
        if ln["kernel"] == "_attn_bwd_dkv_kernel":
            fill = ln["waves"] / math.ceil(ln["waves"] - 1e-9)
            assert fill >= 0.75, (r["arch"], r["case"], ln["grid"], ln["waves"])


@pytest.mark.parametrize("m_blocks,n_blocks,heads,slots", [
    (80, 7, 8, 108),   # one chunk = 56 programs on 108 slots: the largest one-wave split idles half the GPU
    (80, 7, 8, 132), (80, 4, 8, 108), (80, 1, 8, 132), (160, 7, 8, 108), (80, 64, 8, 132), (3, 7, 8, 108)])
def test_dkv_split_minimizes_the_wave_model(m_blocks, n_blocks, heads, slots):
    split = _causal_attention._split(m_blocks, n_blocks, heads, slots)
    assert 1 <= split <= m_blocks
    over = _causal_attention._DKV_PROGRAM_OVERHEAD_BLOCKS

    def waves_time(s):
        return math.ceil(s * n_blocks * heads / slots) * (math.ceil(m_blocks / s) + over)

    best = min(waves_time(s) for s in range(1, m_blocks + 1))
    assert waves_time(split) == best
    one_wave = max(1, min(m_blocks, slots // (n_blocks * heads)))  # the old rule
    assert waves_time(split) <= waves_time(one_wave)
    if (m_blocks, n_blocks, heads, slots) == (80, 7, 8, 108):
        assert waves_time(split) < 0.7 * waves_time(one_wave)


def test_dkv_split_on_the_interpreter_exercises_partials():
    assert _causal_attention._split(5, 3, 2, None) == 2 and _causal_attention._split(1, 3, 2, None) == 1


@pytestmark_gate
def test_gate_rules_agree(ci_table):
    assert ci_table["failures"] == [] and kernels_aot.gate_failures(ci_table["results"]) == []


# ----------------------------------------------------------------------------------------------
# The harness's own parsers and arithmetic (no compiling)
# ----------------------------------------------------------------------------------------------
def test_memory_widths_from_ptx():
    ptx = """
    @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
    ld.global.b8 %rs1, [%rd2];
    @!%p2 st.global.v2.b16 [ %rd3 + 0 ], { %rs2, %rs3 };
    st.global.b32 [%rd4], %r5;
    cp.async.cg.shared.global [ %r6 + 0 ], [ %rd5 + 0 ], 0x10, %r7;
    cp.async.ca.shared.global [ %r8 + 0 ], [ %rd6 + 0 ], 8, %r9;
    ld.shared.v4.b32 { %r1, %r2, %r3, %r4 }, [ %r10 ];
    """.replace("0x10", "16")
    ld, st = kernels_aot._mem_widths(ptx)
    assert ld == {"16": 2, "1": 1, "8": 1} and st == {"4": 2}


def test_dot_lowering_from_ttgir():
    ttgir = """#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [4, 1]}>
#mma1 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 1]}>
    %1 = tt.dot %a, %b, %c : tensor<64x16xf32, #x> * tensor<16x64xf32, #y> -> tensor<64x64xf32, #mma>
    %2 = ttng.warp_group_dot %a, %b, %c {isAsync = true} : tensor<64x16xbf16, #x> -> tensor<64x64xf32, #mma1>
    %3:2 = ttng.warp_group_dot_wait %2, %b {pendings = 0 : i32} : tensor<64x64xf32, #mma1>
    %4 = tt.dot %a, %b, %c : tensor<64x16xf32, #x> * tensor<16x64xf32, #y> -> tensor<64x64xf32, #blocked1>
"""
    dots, waits0 = kernels_aot._dot_lowering(ttgir)
    assert dots == ["mma", "wgmma", "fma"] and waits0 == 1


def test_occupancy_rule():
    h100 = kernels_aot.ARCHS["sm_90"]
    assert kernels_aot.resident_ctas(255, 0, 4, h100) == 2  # 256 regs x 128 threads = half the file
    assert kernels_aot.resident_ctas(32, 0, 4, h100) == 16  # 64 warps per SM
    assert kernels_aot.resident_ctas(64, 100 * 1024, 4, h100) == 2  # 228 KB of shared memory
    assert kernels_aot.resident_ctas(16, 0, 1, h100) == 32  # CTA limit
