"""Training throughput: 1 vs N processes (DDP / DeepSpeed), side by side in one run.

    python bench/train.py                       # CPU: 1 proc x 1 thread, 1 x 2, 2 x 1 (gloo)
    python bench/train.py --engines ddp deepspeed --model resnet20 --steps 60
    python bench/train.py --nproc 8 --device cuda   # on a GPU node

Each configuration is a real `cit-fast train` run under torchrun on the synthetic benchmark, with
a fixed number of steps per epoch; samples/s comes from the run's results.json (epoch 2, after a
warm-up epoch). Scaling efficiency = samples/s(N procs) / (N x samples/s(1 proc, same threads
per process)).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch


def run(nproc: int, threads: int, engine: str, args, out: Path) -> float:
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", str(nproc), "-m", "cit_fast.cli", "train",
           f"model.name={args.model}", f"data.batch_size={args.batch}", "optim.epochs=2",
           f"max_steps_per_epoch={args.steps}", "data.synthetic_train_per_class=400",
           "data.synthetic_test_per_class=10", "progress=false", f"threads={threads}", f"device={args.device}",
           f"dist.engine={engine}", "checkpoint_every=100", f"out_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": "cpu" if args.device == "cpu" else "cuda"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    hist = json.loads((out / "results.json").read_text())["history"]
    return float(hist[-1]["samples_per_s"])  # epoch 2: after warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", nargs="+", default=["ddp", "deepspeed"], choices=["ddp", "deepspeed"])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=64, help="micro-batch per process")
    p.add_argument("--steps", type=int, default=40, help="steps per epoch")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--results-md", default="", help="append the table to this markdown file")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    print(f"# bench/train.py  {date.today()}  {platform.node()}  {cores} CPU cores  torch {torch.__version__}"
          f"  device={args.device}\n# command: {' '.join(sys.argv)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines:
            base = run(1, 1, engine, args, Path(tmp) / f"{engine}-1x1")
            one_x_all = run(1, max(1, cores // 1), engine, args, Path(tmp) / f"{engine}-1xall") if cores > 1 else base
            multi = run(args.nproc, max(1, cores // args.nproc), engine, args, Path(tmp) / f"{engine}-{args.nproc}")
            eff = multi / (args.nproc * base)
            rows.append((engine, base, one_x_all, multi, eff))
    lines = [f"| engine | 1 proc x 1 thread | 1 proc x {cores} threads | {args.nproc} procs x "
             f"{max(1, cores // args.nproc)} thread(s) | {args.nproc} procs / 1 proc x {cores} threads | "
             f"scaling efficiency vs 1x1 |", "|---|---|---|---|---|---|"]
    for engine, base, one_all, multi, eff in rows:
        lines.append(f"| {engine} | {base:.0f} | {one_all:.0f} | {multi:.0f} | {multi / one_all:.2f}x | {eff:.0%} |")
    table = "\n".join(lines)
    print(f"\nsamples/s ({args.model}, micro-batch {args.batch}, {args.steps} steps/epoch):\n\n{table}")
    if args.results_md:
        from cit_fast.utils import append_section

        append_section(Path(args.results_md),
                       f"\n## Training throughput, 1 vs {args.nproc} processes - {date.today()}, {cores}-core CPU "
                       f"({args.device})\n\nCommand: `python {' '.join(sys.argv)}`\n\n{table}\n")


if __name__ == "__main__":
    main()
