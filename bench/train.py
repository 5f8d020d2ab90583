"""Training throughput: 1 vs N processes (DDP / DeepSpeed), side by side in one run.

    python bench/train.py                       # CPU: 1 proc x 1 thread, 1 x 2, 2 x 1 (gloo)
    python bench/train.py --engines ddp deepspeed --model resnet20 --steps 60
    python bench/train.py --nproc 8 --device cuda   # on a GPU node
    python bench/train.py --mode accum          # DDP step time at grad_accum=4: no_sync vs reducing every micro-step
    python bench/train.py --mode overhead       # cit-fast train (plan none) vs a bare hand-written loop

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


# -- grad_accum under DDP: no_sync (reduce at the last micro-step) vs reducing every micro-step ----------
def _accum_worker(rank: int, world: int, port: int, args, out: str) -> None:
    import time

    import torch.distributed as dist

    from cit_fast.config import ModelConfig
    from cit_fast.models import build_model
    from cit_fast.train.distributed import DistEnv
    from cit_fast.train.engine import DDPEngine
    from types import SimpleNamespace

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    module = build_model(ModelConfig(name=args.model), 10)
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    cfg = SimpleNamespace(dist=SimpleNamespace(grad_accum=args.accum, grad_clip=0.0, precision="fp32"))
    engine = DDPEngine(cfg, DistEnv(rank, world, 0, torch.device("cpu")), module, opt,
                       torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    times = {True: [], False: []}
    for r in range(args.repeats * 2 + 1):  # interleaved: every other block the other mode; block 0 warms up
        every = bool(r % 2)
        engine.reduce_every_micro_step(every)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps * args.accum):
            engine.backward_step(torch.nn.functional.cross_entropy(engine.model(x), y))
        dist.barrier()
        if r:
            times[every].append((time.perf_counter() - t0) / args.steps)
    if rank == 0:
        Path(out).write_text(json.dumps({"every": times[True], "no_sync": times[False]}))
    dist.destroy_process_group()


def bench_accum(args) -> str:
    import socket
    import statistics

    import torch.multiprocessing as mp

    with socket.socket() as s_:
        s_.bind(("127.0.0.1", 0))
        port = s_.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "t.json")
        mp.spawn(_accum_worker, args=(args.nproc, port, args, out), nprocs=args.nproc, join=True)
        t = json.loads(Path(out).read_text())
    every, nosync = statistics.median(t["every"]), statistics.median(t["no_sync"])
    return (f"| gradients all-reduced | s per optimizer step (median of {args.repeats}) | runs |\n|---|---:|---|\n"
            f"| every micro-step (before) | {every:.3f} | {', '.join(f'{x:.3f}' for x in t['every'])} |\n"
            f"| last micro-step only, no_sync (after) | {nosync:.3f} | {', '.join(f'{x:.3f}' for x in t['no_sync'])} |\n\n"
            f"after / before: {nosync / every:.2f}x the step time ({args.model}, micro-batch {args.batch}, "
            f"grad_accum={args.accum}, {args.nproc} gloo processes x 1 thread, {args.steps} optimizer steps per block, "
            f"blocks interleaved)")


# -- overhead of `cit-fast train` over a bare hand-written loop (plan none) ------------------------------
BARE_LOOP = r"""
import sys, time, json, torch, numpy as np
from cit_fast.config import load_config, ModelConfig
from cit_fast.data.build import build_datasets
from cit_fast.models import build_model
model_name, batch, steps, threads, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), 0
torch.set_num_threads(threads)
cfg = load_config(None, ["data.synthetic_train_per_class=400", "data.synthetic_test_per_class=10"])
train, _ = build_datasets(cfg.data)
x_all = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
y_all = torch.from_numpy(train.labels.astype(np.int64))
torch.manual_seed(seed)
model = build_model(ModelConfig(name=model_name), train.num_classes)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
mean, std = torch.tensor([0.5] * 3).view(1, 3, 1, 1), torch.tensor([0.25] * 3).view(1, 3, 1, 1)
g = torch.Generator().manual_seed(seed)
rates = []
for epoch in range(2):
    perm = torch.randperm(len(y_all), generator=g)
    t0 = time.perf_counter()
    for s in range(steps):
        idx = perm[s * batch:(s + 1) * batch]
        x = (x_all[idx].float() / 255 - mean) / std
        loss = torch.nn.functional.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    rates.append(steps * batch / (time.perf_counter() - t0))
print(json.dumps({"samples_per_s": rates[-1]}))
"""


def run_bare(args, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-c", BARE_LOOP, args.model, str(args.batch), str(args.steps), str(threads)],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bare loop failed:\n{r.stderr[-4000:]}")
    return float(json.loads(r.stdout.strip().splitlines()[-1])["samples_per_s"])


def run_cit(args, threads: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "cit_fast.cli", "train", f"model.name={args.model}", f"data.batch_size={args.batch}",
           "optim.epochs=2", f"max_steps_per_epoch={args.steps}", "data.synthetic_train_per_class=400",
           "data.synthetic_test_per_class=10", "progress=false", f"threads={threads}", "device=cpu",
           "intervention.plan=none", "checkpoint_every=100", "eval_every=100", f"out_dir={out}"]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{r.stderr[-4000:]}")
    return float(json.loads((out / "results.json").read_text())["history"][-1]["samples_per_s"])


def bench_overhead(args) -> str:
    import statistics

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved: the machine's load hits both alike
            bare = run_bare(args, 1)
            cit = run_cit(args, 1, Path(tmp) / f"cit{r}")
            rows.append((bare, cit, cit / bare))
            print(f"  repeat {r + 1}: bare {bare:.0f}  cit-fast {cit:.0f}  ratio {cit / bare:.3f}", flush=True)
    med = statistics.median(x[2] for x in rows)
    lines = ["| repeat | bare loop samples/s | cit-fast train samples/s | cit-fast / bare |", "|---|---:|---:|---:|"]
    lines += [f"| {i + 1} | {b:.0f} | {c:.0f} | {q:.3f} |" for i, (b, c, q) in enumerate(rows)]
    return "\n".join(lines) + (f"\n\nmedian ratio {med:.3f} ({args.model}, batch {args.batch}, 1 process x 1 thread, "
                               f"plan none, epoch 2 of 2 x {args.steps} steps, {args.repeats} interleaved repeats)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="scaling", choices=["scaling", "accum", "overhead"])
    p.add_argument("--accum", type=int, default=4, help="--mode accum: micro-steps per optimizer step")
    p.add_argument("--repeats", type=int, default=3, help="--mode accum / overhead: interleaved repeats")
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
    if args.mode != "scaling":
        table = bench_accum(args) if args.mode == "accum" else bench_overhead(args)
        title = ("DDP gradient accumulation: no_sync vs reducing every micro-step" if args.mode == "accum"
                 else "Overhead of cit-fast train over a bare loop (plan none)")
        print(f"\n{table}")
        if args.results_md:
            from cit_fast.utils import append_section

            append_section(Path(args.results_md), f"\n## {title} - {date.today()}, {cores}-core CPU\n\n"
                                                  f"Command: `python {' '.join(sys.argv)}`\n\n{table}\n")
        return
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
