"""make gpu-check (bench/gpu_check.py) as far as a CPU can run it: the no-GPU line and exit code,
the planned steps, the training step on the CPU (one process and two over gloo), the report."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


def _run(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_cuda_one_line_and_nonzero_exit(tmp_path):
    res = _run("--results-md", str(tmp_path / "r.md"))
    assert res.returncode == 1
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "no CUDA GPU" in lines[0]
    assert not (tmp_path / "r.md").exists()


@pytest.mark.slow
def test_dry_run_lists_every_step_within_the_budget():
    res = _run("--dry-run")
    assert res.returncode == 0, res.stderr
    names = [ln.split()[0] for ln in res.stdout.splitlines()[:-1]]
    assert names == ["cuda-tests", "kernels", "pipeline", "pipeline-imagenet", "train-1gpu", "train-nccl"]
    assert "--device cuda" in res.stdout and "-m cuda" in res.stdout and "--nproc_per_node 2" in res.stdout
    assert "--case imagenet --device cuda" in res.stdout
    assert sum(s.timeout_s for s in gpu_check.steps(sys.executable, 1)) <= 12 * 60
    bad = _run("--dry-run", "--only", "nope")
    assert bad.returncode == 2 and "unknown step" in bad.stderr


@pytest.mark.slow
def test_train_step_runs_on_cpu_one_and_two_processes():
    res = _run("--train-worker", "--device", "cpu", "--steps", "12", "--batch-size", "16")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "1 process(es): 12 steps" in res.stdout and "channels_last" in res.stdout
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(SCRIPT), "--train-worker", "--device", "cpu", "--steps", "12", "--batch-size", "8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 process(es) over gloo: 12 steps" in two.stdout


def test_report_has_every_step_and_the_figures():
    results = [{"name": "kernels", "status": "passed", "seconds": 12.3, "output": "| impl | ms |\n| triton | 1.0 |"},
               {"name": "train-nccl", "status": "skipped (NCCL takes one GPU per process; 1 GPU(s) visible)",
                "seconds": 0.0, "output": ""}]
    lines = gpu_check.report(results, "NVIDIA H200 x1", "2026-01-01T10:00")
    text = "\n".join(lines)
    assert "## GPU check on NVIDIA H200 x1 (2026-01-01T10:00" in text
    assert "| kernels | passed | 12 |" in text and "| train-nccl | skipped" in text and "| triton | 1.0 |" in text
