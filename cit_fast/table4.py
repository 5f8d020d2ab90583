"""CIT Table IV on the embedded synthetic benchmark: 13 runs, printed as the paper's table.

Rows: baseline trained on the original data (grey border, one run for all versions), baseline on
the synthetic data, CIT Stratify-B and CIT Stratify-C|A, each for V1-V4; all tested on the
version's own test set (whose bias B no longer tells the class).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .config import SYNTHETIC_VERSIONS, load_config
from .train.loop import main
from .utils import append_section

VERSIONS = tuple(v for v in SYNTHETIC_VERSIONS if v != "original")  # the table's columns
ROWS = (("Baseline on Ori.", "original", "none"), ("Baseline on Syn.", None, "none"),
        ("CIT - Stratify B", None, "stratify_b"), ("CIT - Stratify C|A", None, "stratify_c"))
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "table4.yaml"


def _run_one(args: Tuple[str, List[str]]) -> Tuple[str, float, float]:
    name, overrides = args
    import torch

    torch.set_num_threads(1)
    cfg = load_config(str(DEFAULT_CONFIG), overrides)
    t0 = time.perf_counter()
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(cfg.out_dir) / "train.log", "w") as log, contextlib.redirect_stdout(log):
        res = main(cfg)  # per-epoch lines go to the run's own log, not the shared console
    return name, float(res["test_top1"]), time.perf_counter() - t0


def plan_runs(out_dir: Path, overrides: Sequence[str]) -> Dict[str, List[str]]:
    runs: Dict[str, List[str]] = {}
    for label, fixed_version, plan in ROWS:
        for v in ([fixed_version] if fixed_version else VERSIONS):
            key = f"{plan}-{v}"
            runs[key] = [f"data.synthetic_version={v}", f"intervention.plan={plan}",
                         f"out_dir={out_dir / key}", "threads=1", *overrides]
    return runs


def format_table(acc: Dict[str, float]) -> str:
    lines = ["| Training method | V1 | V2 | V3 | V4 |", "|---|---|---|---|---|"]
    for label, fixed_version, plan in ROWS:
        cells = [acc[f"{plan}-{fixed_version or v}"] for v in VERSIONS]
        lines.append(f"| {label.replace('|', chr(92) + '|')} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    diff = [acc[f"stratify_b-{v}"] - acc[f"stratify_c-{v}"] for v in VERSIONS]
    lines.append("| Stratify B - Stratify C\\|A | " + " | ".join(f"{d:+.1f}" for d in diff) + " |")
    return "\n".join(lines)


def run_many(runs: Dict[str, List[str]], jobs: int = 2, heartbeat_s: float = 30.0) -> Dict[str, float]:
    """Run named override lists (on the Table IV config) `jobs` at a time; name -> test top-1.

    Prints each run as it finishes with the count done / running / left and an ETA, and a line at
    least every ``heartbeat_s`` while runs are going (a Table IV run takes minutes on a CPU)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    acc: Dict[str, float] = {}
    t0 = time.perf_counter()
    durations: List[float] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(_run_one, item): item[0] for item in runs.items()}
        started = {name: t0 for name in list(runs)[:jobs]}
        while pending:
            done, _ = wait(pending, timeout=heartbeat_s, return_when=FIRST_COMPLETED)
            now = time.perf_counter()
            for fut in done:
                name, top1, secs = fut.result()
                del pending[fut]
                started.pop(name, None)
                acc[name] = top1
                durations.append(secs)
                for nxt in [n for n in runs if n not in acc and n not in started][:jobs - len(started)]:
                    started[nxt] = now
                print(f"  [{len(acc)}/{len(runs)}] {name:16s} test top-1 {top1:6.2f}%  ({secs:.0f} s)"
                      f"{_eta(len(runs) - len(acc), durations, jobs)}", flush=True)
            if not done:
                going = ", ".join(f"{n} {now - t:.0f} s" for n, t in started.items())
                print(f"  [{len(acc)}/{len(runs)} done] running: {going}{_eta(len(runs) - len(acc), durations, jobs)}",
                      flush=True)
    return acc


def _eta(left: int, durations: List[float], jobs: int) -> str:
    if not left or not durations:
        return ""
    secs = sum(durations) / len(durations) * left / max(jobs, 1)
    return f"; {left} left, about {secs / 60:.0f} min to go" if secs >= 90 else f"; {left} left, about {secs:.0f} s to go"


def append_results(results_md: str, title: str, cmd: str, body: str) -> None:
    """Append a dated section to a markdown results file, atomically."""
    append_section(Path(results_md),
                   f"\n## {title} - {date.today().isoformat()}, {os.cpu_count()}-core CPU\n\nCommand: `{cmd}`\n\n{body}\n")


def run_table4(out_dir: Path, overrides: Sequence[str] = (), jobs: int = 2,
               results_md: Optional[str] = None) -> Dict[str, float]:
    load_config(str(DEFAULT_CONFIG), overrides)  # fail fast on a bad override
    runs = plan_runs(out_dir, overrides)
    t0 = time.perf_counter()
    print(f"CIT Table IV: {len(runs)} runs, {jobs} at a time, results under {out_dir}", flush=True)
    acc = run_many(runs, jobs)
    minutes = (time.perf_counter() - t0) / 60
    table = format_table(acc)
    print("\nTest accuracy (%) on the synthetic CIT benchmark (embedded shapes, 10 classes, ResNet-20):\n")
    print(table)
    print(f"\n{len(runs)} runs in {minutes:.1f} min")
    if results_md:
        cmd = "cit-fast " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("cit-fast") else "make demo"
        append_results(results_md, f"CIT Table IV (synthetic V1-V4), {minutes:.1f} min", cmd, table)
    return acc
