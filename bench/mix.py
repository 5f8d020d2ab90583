"""CIT alone vs CIT + Mixup vs CIT + CutMix (and Obj+Bg + each) on the synthetic benchmark.

    python bench/mix.py --versions V2 V4 --results-md bench/RESULTS.md

Every run uses the Table IV recipe (cit_fast/configs/table4.yaml: ResNet-20, same epochs and
schedule); only the intervention plan and the batch-level mix differ. Prints test top-1 per run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cit_fast.table4 import append_results, run_many

SETTINGS = {  # name -> overrides
    "Obj+Bg": ["intervention.plan=none"],
    "Obj+Bg+Mixup": ["intervention.plan=none", "mix.mode=mixup", "mix.alpha=0.2"],
    "Obj+Bg+CutMix": ["intervention.plan=none", "mix.mode=cutmix", "mix.alpha=1.0"],
    "CIT": ["intervention.plan=stratify_c"],
    "CIT+Mixup": ["intervention.plan=stratify_c", "mix.mode=mixup", "mix.alpha=0.2"],
    "CIT+CutMix": ["intervention.plan=stratify_c", "mix.mode=cutmix", "mix.alpha=1.0"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--versions", nargs="+", default=["V2", "V4"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--out-dir", default="runs/mix")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--results-md", default="")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = p.parse_args()
    runs = {f"{s}@{v}": [f"data.synthetic_version={v}", *SETTINGS[s], f"out_dir={Path(args.out_dir) / f'{s}-{v}'}",
                         "threads=1", *args.overrides]
            for v in args.versions for s in args.settings}
    t0 = time.perf_counter()
    acc = run_many(runs, args.jobs)
    lines = ["| setting | " + " | ".join(args.versions) + " |", "|---|" + "---|" * len(args.versions)]
    for s in args.settings:
        lines.append(f"| {s} | " + " | ".join(f"{acc[f'{s}@{v}']:.1f}" for v in args.versions) + " |")
    table = "\n".join(lines)
    print(f"\nTest top-1 (%), synthetic benchmark, ResNet-20 ({(time.perf_counter() - t0) / 60:.1f} min):\n\n{table}")
    if args.results_md:
        append_results(args.results_md, "CIT with Mixup / CutMix (synthetic benchmark)",
                       "python " + " ".join(sys.argv), table)


if __name__ == "__main__":
    main()
