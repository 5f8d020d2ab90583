#!/usr/bin/env python
"""One command for a machine with a GPU (``make gpu-check``): everything that needs CUDA, with
every figure appended to bench/RESULTS.md under the device's name and the date.

    python bench/gpu_check.py                # ~8 minutes on one H100/H200
    python bench/gpu_check.py --dry-run      # print the steps and commands; runs anywhere
    python bench/gpu_check.py --only kernels --only train-1gpu

Steps (each a subprocess with a time limit; a failing step is recorded and the others still run):
  cuda-tests   pytest -m cuda: the kernels against their references on the GPU, DALI GPU decoding
  kernels      bench/kernels.py: Triton vs eager / torch.compile / SDPA, % of peak, the targets,
               and the fp32 precision table from the real kernels
  pipeline     bench/pipeline.py --device cuda: DALI mixed (nvJPEG) decoding, the Triton composite
  pipeline-imagenet  bench/pipeline.py --case imagenet --device cuda: ImageNet-like JPEGs, random-resized
               crops with CIT compositing (DALI: ROI decoding of each window on the GPU) vs torchvision's
               standard loader without compositing
  train-1gpu   a short bf16 channels-last training (ResNet-20 on the embedded benchmark, the
               intervention composite through the Triton kernel), one process
  train-nccl   the same on 2 processes over NCCL (DDP); needs 2 GPUs (NCCL takes one per process)
Without CUDA it prints one line saying so and exits 1.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Step:
    name: str
    cmd: List[str]
    timeout_s: int
    needs_gpus: int = 1
    why: str = ""


def steps(python: str, gpus: int) -> List[Step]:
    bench = ROOT / "bench"
    return [
        Step("cuda-tests", [python, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"], 150),
        Step("kernels", [python, str(bench / "kernels.py"), "--rep", "100"], 210),
        Step("pipeline", [python, str(bench / "pipeline.py"), "--device", "cuda", "--images", "512", "--repeats", "2",
                          "--batch-size", "64", "--workers", "4", "--no-write"], 75),
        Step("pipeline-imagenet", [python, str(bench / "pipeline.py"), "--case", "imagenet", "--device", "cuda",
                                   "--images", "384", "--repeats", "2", "--batch-size", "64", "--workers", "4",
                                   "--no-write"], 75),
        Step("train-1gpu", [python, str(Path(__file__).resolve()), "--train-worker", "--steps", "60"], 90),
        Step("train-nccl", [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(Path(__file__).resolve()), "--train-worker", "--steps", "60"], 120, needs_gpus=2,
             why="NCCL takes one GPU per process"),
    ]


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_step(step: Step, gpus: int) -> dict:
    if gpus < step.needs_gpus:
        return {"name": step.name, "status": f"skipped ({step.why}; {gpus} GPU(s) visible)", "seconds": 0.0,
                "output": ""}
    t0 = time.perf_counter()
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    try:
        res = subprocess.run(step.cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=step.timeout_s)
        status = "passed" if res.returncode == 0 else f"FAILED (exit {res.returncode})"
        output = res.stdout + ("\n" + res.stderr if res.returncode else "")
    except subprocess.TimeoutExpired as e:
        status = f"FAILED (over {step.timeout_s} s)"
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    return {"name": step.name, "status": status, "seconds": time.perf_counter() - t0, "output": output}


def report(results: List[dict], device: str, started: str) -> List[str]:
    lines = [f"\n## GPU check on {device} ({started}, bench/gpu_check.py)\n",
             "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']:.0f} |" for r in results]
    for r in results:
        if not r["output"].strip():
            continue
        keep = r["output"] if r["name"] in ("kernels", "pipeline", "pipeline-imagenet") else _tail(r["output"], 25)
        lines += ["", f"### {r['name']}", "", "```", keep.rstrip(), "```"]
    return lines + [""]


# ----------------------------------------------------------------------------------------------
# The training step (run as its own process: one GPU, or one rank of a torchrun job)
# ----------------------------------------------------------------------------------------------
def train_worker(n_steps: int, batch_size: int, device_type: str) -> int:
    """device_type "cuda" (the check) or "cpu" (its smoke test, gloo between processes)."""
    import torch
    import torch.distributed as dist

    from cit_fast.data.pipelines.contract import PipelineSpec
    from cit_fast.data.synthetic.benchmark import make_cit_benchmark
    from cit_fast.data.pipelines.torch_pipeline import TorchPipeline
    from cit_fast.models.registry import create_model

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    gpu = device_type == "cuda"
    if gpu:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if gpu else torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if gpu else "gloo", **({"device_id": device} if gpu else {}))
    data = make_cit_benchmark("V2", train_per_class=400, test_per_class=10)["train"]
    spec = PipelineSpec(batch_size=batch_size, plan="stratify_c", hflip=True, crop_padding=4, rank=rank, world_size=world,
                        device=device, out_dtype=torch.bfloat16, channels_last=True)
    pipe = TorchPipeline(data, spec)
    model = create_model("resnet20", num_classes=10).to(device, memory_format=torch.channels_last)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if gpu else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    done, t0, seen, losses = 0, None, 0, []
    epoch = 0
    while done < n_steps:
        pipe.set_epoch(epoch)
        for batch in pipe:
            x = batch.image
            assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), batch.label.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == 10:  # warm-up (cudnn autotuning, Triton compiles) excluded from the rate
                if gpu:
                    torch.cuda.synchronize(device)  # sync: once, to start the clock
                t0, seen = time.perf_counter(), 0
            elif t0 is not None:
                seen += x.shape[0]
            if done % 20 == 0:
                losses.append(float(loss))  # host sync: every 20 steps only
            if done >= n_steps:
                break
        epoch += 1
    if gpu:
        torch.cuda.synchronize(device)
    rate = seen * world / (time.perf_counter() - t0) if t0 else float("nan")
    if rank == 0:
        print(f"train: resnet20, bf16 autocast, channels_last, stratify_c composite "
              f"({'Triton' if gpu else 'PyTorch reference'}), {world} process(es)"
              f"{' over ' + ('NCCL' if gpu else 'gloo') if world > 1 else ''}: {done} steps, {rate:.0f} samples/s after 10 warm-up steps, "
              f"loss every 20 steps {', '.join(f'{v:.3f}' for v in losses)}")
    if world > 1:
        dist.destroy_process_group()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the steps and their commands, run nothing")
    ap.add_argument("--only", action="append", default=[], help="run this step (repeatable)")
    ap.add_argument("--results-md", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="do not append to --results-md")
    ap.add_argument("--train-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=60, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_worker:
        return train_worker(args.steps, args.batch_size, args.device)

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    plan = steps(sys.executable, gpus)
    names = [s.name for s in plan]
    unknown = [o for o in args.only if o not in names]
    if unknown:
        ap.error(f"--only: unknown step(s) {unknown}; steps: {names}")
    if args.only:
        plan = [s for s in plan if s.name in args.only]
    if args.dry_run:
        for s in plan:
            need = f", needs {s.needs_gpus} GPUs" if s.needs_gpus > 1 else ""
            print(f"{s.name:<11} (limit {s.timeout_s} s{need}): {' '.join(shlex.quote(c) for c in s.cmd)}")
        print(f"total limit: {sum(s.timeout_s for s in plan)} s; results appended to {args.results_md}")
        return 0
    if not gpus:
        print("gpu-check: no CUDA GPU is visible (torch.cuda.is_available() is False); nothing was run",
              file=sys.stderr)
        return 1
    device = f"{torch.cuda.get_device_name(0)} x{gpus}"
    started = dt.datetime.now().isoformat(timespec="minutes")
    results = []
    for s in plan:
        print(f"gpu-check: {s.name} ...", flush=True)
        r = run_step(s, gpus)
        print(f"gpu-check: {s.name}: {r['status']} ({r['seconds']:.0f} s)", flush=True)
        if r["status"] != "passed" and r["output"]:
            print(_tail(r["output"], 15))
        results.append(r)
    lines = report(results, device, started)
    print("\n".join(lines))
    if not args.no_write:
        from cit_fast.utils import append_section

        path = Path(args.results_md)
        append_section(path, "\n".join(lines))
    return 0 if all(r["status"] == "passed" or r["status"].startswith("skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
