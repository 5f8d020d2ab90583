#!/usr/bin/env python
"""Data pipeline benchmark: samples/s of the compositing data path, side by side in one run.

    python bench/pipeline.py                       # 400 JPEG+PNG images 320x256 -> 224, 2 workers
    python bench/pipeline.py --images 800 --batch-size 64 --workers 4 --repeats 5
    python bench/pipeline.py --device cuda         # DALI mixed (nvJPEG) decoding, GPU composite
    python bench/pipeline.py --no-write            # print only; default appends to bench/RESULTS.md

Generates a folder dataset (images/<class>/*.jpg, masks/<class>/*.png) in a temporary directory and
measures, each with intervention plan stratify_c and the same number of workers:
  (a) baseline      a naive torchvision-style DataLoader: per sample, PIL-decode the object, its
                    mask and the context partner separately, resize each, blend and normalise in
                    numpy, to a tensor; default collation;
  (b) torch         cit_fast's TorchPipeline (whole-batch fetches, each image decoded once per
                    batch, batched resizing), decode reuse off/on;
  (c) dali          cit_fast's DaliPipeline (DALI decoding and resizing, max(1, workers) threads),
                    decode reuse off/on.
(b) and (c) end in ``compose``, i.e. ``kernels.composite`` (on a CPU ``composite_cpu``, run over
cache-sized chunks), as training runs them (the torch pipeline after its loader, the DALI one on a
CPU in a helper thread): every end-to-end configuration yields model inputs, normalised float32
(B, 3, S, S) composites on --device. For comparison, (b) and (c) with decode reuse stopping at the
raw batches, the host data path that feeds an accelerator (where compose is the Triton kernel).

Timing: per configuration one epoch, the first --warmup batches (worker start-up, pipeline build)
untimed; --repeats rounds with the configurations interleaved. samples/s and ms/batch: the median
round; "vs baseline": the median over rounds of the ratio to the same round's baseline (the
machine may be shared, and its load drifts between rounds). CPU ms/sample: user+system time of
this process and its workers over the whole epoch (warm-up included), the least of the rounds:
the work each pipeline does, whatever else runs on the machine.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch
from PIL import Image

from cit_fast.data.plans.intervention import make_plan
from cit_fast.data.pipelines.contract import PipelineSpec
from cit_fast.data.sources import load_folder
from cit_fast.utils import append_section

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------------
# data


def make_dataset(root: Path, n_images: int, n_classes: int, width: int, height: int, seed: int = 0) -> Path:
    """JPEG photos-alike (smooth colour fields, texture, an object) + PNG object masks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for k in range(n_images):
        c = f"class{k % n_classes:02d}"
        (root / "images" / c).mkdir(parents=True, exist_ok=True)
        (root / "masks" / c).mkdir(parents=True, exist_ok=True)
        f = rng.uniform(15, 60, 3)
        bg = np.stack([np.sin(x / f[j] + rng.random() * 6) * np.cos(y / f[(j + 1) % 3] + rng.random() * 6)
                       for j in range(3)], -1) * 70 + 128
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        rx, ry = rng.uniform(0.12, 0.3) * width, rng.uniform(0.12, 0.3) * height
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        obj = rng.uniform(30, 225, 3) + 25 * np.sin(x / rng.uniform(3, 8))[..., None]
        img = np.where(inside[..., None], obj, bg) + rng.normal(0, 8, (height, width, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / c / f"{k:05d}.jpg",
                                                                   quality=90)
        Image.fromarray(inside.astype(np.uint8) * 255).save(root / "masks" / c / f"{k:05d}.png")
    return root


# ---------------------------------------------------------------------------------------------
# (a) the naive baseline


class NaiveComposite(torch.utils.data.Dataset):
    """One sample per __getitem__: three PIL decodes, three resizes, a numpy blend."""

    def __init__(self, images: List[str], masks: List[str], labels: np.ndarray, order: np.ndarray,
                 partner: np.ndarray, size: int):
        self.images, self.masks, self.labels = images, masks, labels
        self.order, self.partner, self.size = order, partner, size
        self.mean = np.asarray(MEAN, np.float32)
        self.std = np.asarray(STD, np.float32)

    def __len__(self) -> int:
        return len(self.order)

    def _rgb(self, path: str) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR), np.float32)

    def __getitem__(self, k: int):
        i = int(self.order[k])
        j = int(self.partner[i])
        obj = self._rgb(self.images[i]) / 255
        ctx = self._rgb(self.images[j]) / 255
        with Image.open(self.masks[i]) as im:
            m = np.asarray(im.convert("L").resize((self.size, self.size), Image.BILINEAR), np.float32)[..., None] / 255
        x = (m * obj + (1 - m) * ctx - self.mean) / self.std  # (S, S, 3)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), int(self.labels[i])


def baseline_batches(samples, args, epoch: int) -> Iterator[torch.Tensor]:
    plan = make_plan("stratify_c", samples.strata, 0, epoch)
    ds = NaiveComposite(samples.images, samples.masks, samples.labels, plan.order, plan.partner, args.size)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False, drop_last=True,
                                         num_workers=args.workers, pin_memory=args.device == "cuda")
    for x, _ in loader:
        yield x.to(args.device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# (b), (c) ours


def pipeline_batches(kind: str, reuse: bool, how: str = "pipeline") -> Callable:
    """how: "pipeline" -- the pipeline's own iteration, as training runs it (the torch pipeline
    composes after its loader, in this process; the DALI one on a CPU in a helper thread); "raw" --
    stop before compose: the host data path that feeds an accelerator, where compose is the Triton
    kernel."""
    def run(samples, args, epoch: int) -> Iterator[torch.Tensor]:
        spec = PipelineSpec(batch_size=args.batch_size, plan="stratify_c", image_size=args.size, hflip=True,
                            mean=MEAN, std=STD, num_workers=args.workers, device=torch.device(args.device),
                            decode_reuse=reuse)
        if kind == "dali":
            from cit_fast.data.pipelines.dali_pipeline import DaliPipeline as cls
        else:
            from cit_fast.data.pipelines.torch_pipeline import TorchPipeline as cls
        p = cls(samples, spec)
        p.set_epoch(epoch)
        if how == "pipeline":
            for b in p:
                yield b.image
        else:
            for raw in p.raw_batches():
                yield raw["obj"]

    return run


def measure(batches: Iterator[torch.Tensor], warmup: int) -> Tuple[float, int, float, int]:
    """(seconds, samples) over the batches after the first `warmup`, and (CPU seconds, samples)
    over the whole epoch, this process and its (finished) worker processes together."""
    n, n_all, t0, c0 = 0, 0, time.perf_counter(), _cpu()
    for k, x in enumerate(batches):
        float(x[0, 0, 0, 0])  # touch the output; on CUDA a sync point: the batch is really there
        n_all += x.shape[0]
        if k < warmup:
            t0 = time.perf_counter()
        else:
            n += x.shape[0]
    secs = time.perf_counter() - t0
    del batches  # DataLoader workers exit and are reaped: their CPU time is counted
    return secs, n, _cpu() - c0, n_all


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------------------------------------
# report


def versions() -> Dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "pillow": Image.__version__}
    for name, mod in (("torchvision", "torchvision"), ("dali", "nvidia.dali"), ("opencv", "cv2")):
        try:
            out[name] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception as e:  # noqa: BLE001 - report, don't fail the header
            out[name] = f"unavailable ({type(e).__name__})"
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} CPUs visible"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400, help="images in the generated dataset")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--src-size", default="320x256", help="WxH of the generated JPEGs")
    ap.add_argument("--size", type=int, default=224, help="output side (pixels)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches per epoch")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the best is reported")
    ap.add_argument("--only", action="append", default=[], help="run this config (name as printed; repeatable); "
                    "the first one given is the reference of the ratios")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the main process (compose); 0 = torch's default. Workers use 1")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--data", default="", help="use this folder dataset instead of generating one")
    ap.add_argument("--results-md", default=str(Path(__file__).with_name("RESULTS.md")))
    ap.add_argument("--no-write", action="store_true", help="do not append to --results-md")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.src_size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))
    header = [f"date: {dt.datetime.now().isoformat(timespec='seconds')}",
              f"device: {args.device} ({device_name(args.device)})",
              "versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
              f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"main-process torch threads: {torch.get_num_threads()}",
              f"command: {command}"]
    print("\n".join(header), flush=True)

    configs: Dict[str, Callable] = {"baseline (naive DataLoader)": baseline_batches}
    for kind in ("torch", "dali"):
        for reuse in (False, True):
            configs[kind + (" + decode reuse" if reuse else "")] = pipeline_batches(kind, reuse)
    for kind in ("torch", "dali"):
        configs[f"{kind} + decode reuse, raw batches (host path)"] = pipeline_batches(kind, True, "raw")
    if args.only:
        unknown = [c for c in args.only if c not in configs]
        if unknown:
            ap.error(f"--only: unknown config(s) {unknown}; known: {list(configs)}")
        configs = {k: configs[k] for k in args.only}
    with tempfile.TemporaryDirectory(prefix="cit_bench_pipeline_") as tmp:
        root = Path(args.data) if args.data else make_dataset(Path(tmp), args.images, args.classes, w, h)
        samples = load_folder(str(root))
        print(f"data: {len(samples)} images {w}x{h} JPEG + PNG masks, {samples.num_classes} classes -> "
              f"{args.size}x{args.size}; batch {args.batch_size}, workers {args.workers}, plan stratify_c",
              flush=True)
        rates: Dict[str, List[float]] = {}
        cpu: Dict[str, List[float]] = {}
        for r in range(args.repeats):
            for name, fn in configs.items():
                secs, n, cpu_s, n_all = measure(fn(samples, args, epoch=r), args.warmup)
                rates.setdefault(name, []).append(n / secs if secs > 0 else 0.0)
                cpu.setdefault(name, []).append(1e3 * cpu_s / max(n_all, 1))
                print(f"  round {r + 1}: {name:48s} {rates[name][-1]:8.1f} samples/s  "
                      f"{cpu[name][-1]:6.2f} CPU ms/sample", flush=True)

    base_name = next(iter(configs))
    base_cpu = min(cpu[base_name])
    rows = []
    for name in configs:
        # the same round's baseline as reference: rounds see different machine load
        paired = statistics.median(r / b for r, b in zip(rates[name], rates[base_name]))
        rate = statistics.median(rates[name])
        rows.append((name, rate, 1e3 * args.batch_size / rate, paired, min(cpu[name]), base_cpu / min(cpu[name])))
    table = ["| pipeline | samples/s | ms/batch | vs baseline | CPU ms/sample | CPU vs baseline |",
             "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {n} | {r:.1f} | {m:.1f} | {x:.2f}x | {c:.2f} | {cx:.2f}x |" for n, r, m, x, c, cx in rows]
    print("\n" + "\n".join(table))
    end_to_end = [(n, x) for n, _, _, x, *_ in rows if n != base_name and "raw batches" not in n]
    best_name, best_x = max(end_to_end, key=lambda t: t[1], default=(base_name, 1.0))
    verdict = f"best end-to-end (model inputs): {best_name}, {best_x:.2f}x the baseline's samples/s"
    print(verdict)

    if not args.no_write:
        path = Path(args.results_md)
        section = [f"\n## Data pipeline throughput ({dt.date.today().isoformat()}, bench/pipeline.py)\n",
                   *[f"- {line}" for line in header],
                   f"- data: {len(samples)} generated images {w}x{h} JPEG q90 + PNG masks -> {args.size}x{args.size}, "
                   f"batch {args.batch_size}, workers/threads {args.workers}, plan stratify_c, "
                   f"{args.repeats} interleaved rounds (medians; ratios paired by round) after {args.warmup} warm-up batches",
                   "- end-to-end rows yield normalised float32 model inputs (compose = kernels.composite; "
                   "on a CPU kernels.composite_cpu, bitwise its PyTorch reference); raw-batch rows stop before compose (the host work "
                   "that feeds a GPU, where compose is the Triton kernel)",
                   "", *table, "", f"{verdict}.", ""]
        append_section(path, "\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
