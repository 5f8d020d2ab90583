#!/usr/bin/env python
"""Intervention plans at scale: seconds and peak memory per plan kind and dataset size, one core.

    python bench/plans.py                          # 0.13M / 1.28M / 14M samples, every kind
    python bench/plans.py --sizes 1.28M --repeats 3 --kinds stratify_b
    python bench/plans.py --no-write               # print only; default appends to bench/RESULTS.md

Every rank recomputes the epoch's plan at the epoch start (pipelines build the next one in the
background while the current epoch trains); this measures one plan, on generated labels:
  0.13M  ImageNet-1k/10 (1,000 classes)      1.28M  ImageNet-1k (1,000 classes)
  14M    ImageNet-21k (21,841 classes)
labels uniform over the classes, the stratum = the class, the bias B uniform over --bias-values
values per sample (stratify_b). Kinds: none, random, stratify_c, stratify_b, and the decode-reuse
plans (balanced batches of --batch-size on --world ranks) of stratify_c and random.
Time: the least of --repeats runs (the machine may be shared: the load average is printed);
peak memory: numpy's allocations during one run (tracemalloc), the inputs excluded.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cit_fast.data.plans.balanced import make_balanced_plan  # noqa: E402
from cit_fast.data.plans.intervention import make_plan  # noqa: E402

SIZES = {"0.13M": (128_000, 1000), "1.28M": (1_281_167, 1000), "14M": (14_197_122, 21841),
         "10k": (10_000, 100)}  # (10k: the smoke test's)
KINDS = ("none", "random", "stratify_c", "stratify_b", "reuse stratify_c", "reuse random")


def plan_fn(kind: str, strata: np.ndarray, bias: np.ndarray, batch_size: int, world: int) -> Callable[[int], object]:
    if kind.startswith("reuse "):
        base = kind.split()[1]
        return lambda epoch: make_balanced_plan(base, strata, 0, epoch, batch_size, world)
    return lambda epoch: make_plan(kind, strata, 0, epoch, bias=bias)


def measure(fn: Callable[[int], object], repeats: int) -> Dict[str, float]:
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(r + 1)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn(0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"s": min(times), "peak_mib": peak / 2**20}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["0.13M", "1.28M", "14M"], choices=list(SIZES))
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per cell; the least is reported")
    ap.add_argument("--bias-values", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256, help="per rank, decode-reuse plans")
    ap.add_argument("--world", type=int, default=8, help="ranks, decode-reuse plans")
    ap.add_argument("--goal", type=float, default=6.0, help="seconds allowed per plan at the largest size")
    ap.add_argument("--results-md", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="do not append to --results-md")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    header = [f"date: {dt.datetime.now().isoformat(timespec='seconds')}",
              f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
              f"numpy {np.__version__}, python {platform.python_version()}; one thread (numpy is single-threaded here)",
              f"load average at start: {load}", f"command: {command}"]
    print("\n".join(header), flush=True)
    cells: Dict[str, Dict[str, Dict[str, float]]] = {}
    for size in args.sizes:
        n, classes = SIZES[size]
        rng = np.random.default_rng(0)
        strata = rng.integers(0, classes, n)
        bias = rng.integers(0, args.bias_values, n)
        for kind in args.kinds:
            res = measure(plan_fn(kind, strata, bias, args.batch_size, args.world), args.repeats)
            cells.setdefault(kind, {})[size] = res
            print(f"  {size:>6} {kind:<17} {res['s']:7.2f} s  peak {res['peak_mib']:8.1f} MiB", flush=True)
        del strata, bias

    table = ["| plan | " + " | ".join(f"{s} s | {s} peak MiB" for s in args.sizes) + " |",
             "|---|" + "---:|---:|" * len(args.sizes)]
    for kind in args.kinds:
        table.append(f"| {kind} | " + " | ".join(f"{cells[kind][s]['s']:.2f} | {cells[kind][s]['peak_mib']:.0f}"
                                                 for s in args.sizes) + " |")
    largest = args.sizes[-1]
    worst = max(args.kinds, key=lambda k: cells[k][largest]["s"])
    verdict = (f"slowest at {largest}: {worst}, {cells[worst][largest]['s']:.2f} s "
               f"({'within' if cells[worst][largest]['s'] <= args.goal else 'over'} the {args.goal:.0f} s goal)")
    print("\n" + "\n".join(table) + "\n" + verdict)
    if not args.no_write:
        from cit_fast.utils import append_section

        path = Path(args.results_md)
        section = [f"\n## Intervention plans at scale ({dt.date.today().isoformat()}, bench/plans.py)\n",
                   *[f"- {line}" for line in header],
                   f"- labels uniform over the classes (0.13M/1.28M: 1,000; 14M: 21,841), stratum = class, "
                   f"bias uniform over {args.bias_values} values; decode-reuse plans: batch {args.batch_size} "
                   f"x {args.world} ranks; least of {args.repeats} run(s); peak = numpy allocations (tracemalloc)",
                   "", *table, "", f"{verdict}.", ""]
        append_section(path, "\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
