#!/usr/bin/env python
"""Data pipeline benchmark: samples/s of the compositing data path, side by side in one run.

    python bench/pipeline.py                       # 400 JPEG+PNG images 320x256 -> 224, 2 workers
    python bench/pipeline.py --images 800 --batch-size 64 --workers 4 --repeats 5
    python bench/pipeline.py --device cuda         # DALI mixed (nvJPEG) decoding, GPU composite
    python bench/pipeline.py --no-write            # print only; default appends to bench/RESULTS.md
    python bench/pipeline.py --case imagenet       # ImageNet-sized photos, random-resized crops (below)

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

--case imagenet: ImageNet's training recipe on ImageNet-like files: JPEGs of ~500x375 (~110 KB, q90)
cut from scikit-image's sample photos (random crops, flips, sensor-like noise) in torchvision's
ImageFolder layout, with masks in the sibling tree; 224-px random-resized crops (scale 0.08-1,
ratio 3/4-4/3) + flip, ImageNet's mean/std. Compared, same workers:
  (a) torchvision   the standard ImageFolder + RandomResizedCrop + RandomHorizontalFlip + ToTensor +
                    Normalize DataLoader: one image per sample, NO compositing;
  (b) torch         cit_fast's TorchPipeline WITH CIT compositing (stratify_c: each object cut with its
                    mask, its partner's context cut in its own window, blended and normalised), decode
                    reuse off/on;
  (c) dali          the same through DaliPipeline on the CPU (ROI decoding of each window).
The question: does compositing come for free over the loader everyone uses (ratio >= 1.0x)?

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


def make_imagenet_like(root: Path, n_images: int, n_classes: int, seed: int = 0) -> Tuple[Path, float]:
    """ImageNet-like training files from real photos: root/train/<class>/<k>.JPEG (~500x375, q90, a
    quarter portrait 375x500) and root/train_masks/<class>/<k>.png (the photo's rough object outline,
    cut and resized with it). Returns (the ImageFolder root, mean file size in KB)."""
    from cit_fast.data.synthetic.sample_photos import SKIMAGE_PHOTOS, sample_photos

    photos = list(sample_photos(SKIMAGE_PHOTOS).values())
    rng = np.random.default_rng(seed)
    train, masks = root / "train", root / "train_masks"
    sizes = []
    for k in range(n_images):
        c = f"n{k % n_classes:08d}"
        (train / c).mkdir(parents=True, exist_ok=True)
        (masks / c).mkdir(parents=True, exist_ok=True)
        img, obj = photos[k % len(photos)]
        h, w = img.shape[:2]
        out_w, out_h = (375, 500) if rng.random() < 0.25 else (500, 375)
        cw = int(min(w, h * out_w / out_h) * rng.uniform(0.6, 1.0))  # a window of the output's aspect
        ch = int(cw * out_h / out_w)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        box = (x0, y0, x0 + cw, y0 + ch)
        pic = Image.fromarray(img).resize((out_w, out_h), Image.BICUBIC, box=box)
        msk = Image.fromarray(obj.astype(np.uint8) * 255).resize((out_w, out_h), Image.NEAREST, box=box)
        if rng.random() < 0.5:
            pic, msk = pic.transpose(Image.FLIP_LEFT_RIGHT), msk.transpose(Image.FLIP_LEFT_RIGHT)
        noisy = np.asarray(pic, np.float32) + rng.normal(0, 20, (out_h, out_w, 3))  # ImageNet-like file sizes
        path = train / c / f"{k:06d}.JPEG"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        msk.save(masks / c / f"{k:06d}.png")
        sizes.append(path.stat().st_size / 1024)
    return train, float(np.mean(sizes))


def torchvision_batches(root: Path) -> Callable:
    """(a) of --case imagenet: the standard torchvision DataLoader, no compositing."""
    def run(samples, args, epoch: int) -> Iterator[torch.Tensor]:
        from torchvision import datasets, transforms as T

        tf = T.Compose([T.RandomResizedCrop(args.size), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(MEAN, STD)])
        ds = datasets.ImageFolder(str(root), transform=tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                             num_workers=args.workers, pin_memory=args.device == "cuda",
                                             generator=torch.Generator().manual_seed(epoch))
        for x, _ in loader:
            yield x.to(args.device, non_blocking=True)

    return run


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


def pipeline_batches(kind: str, reuse: bool, how: str = "pipeline", crop: str = "resize") -> Callable:
    """how: "pipeline" -- the pipeline's own iteration, as training runs it (the torch pipeline
    composes after its loader, in this process; the DALI one on a CPU in a helper thread); "raw" --
    stop before compose: the host data path that feeds an accelerator, where compose is the Triton
    kernel."""
    def run(samples, args, epoch: int) -> Iterator[torch.Tensor]:
        spec = PipelineSpec(batch_size=args.batch_size, plan="stratify_c", image_size=args.size, hflip=True,
                            mean=MEAN, std=STD, num_workers=args.workers, device=torch.device(args.device),
                            decode_reuse=reuse, train_crop=crop)
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
    ap.add_argument("--case", default="composite", choices=["composite", "imagenet"],
                    help="composite: the compositing data path vs a naive loader; imagenet: ImageNet-like photos, "
                         "random-resized crops, CIT vs torchvision's standard loader without compositing")
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
    imagenet = args.case == "imagenet"
    if imagenet:
        args.src_size = "500x375"
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

    tmp_dir = tempfile.TemporaryDirectory(prefix="cit_bench_pipeline_")
    tv_root = Path(tmp_dir.name) / "train"
    if imagenet:
        configs: Dict[str, Callable] = {"torchvision ImageFolder, RandomResizedCrop, NO compositing":
                                        torchvision_batches(tv_root)}
        for kind in ("torch", "dali"):
            for reuse in (False, True):
                name = f"cit_fast {kind}, random-resized + CIT compositing" + (" + decode reuse" if reuse else "")
                configs[name] = pipeline_batches(kind, reuse, crop="random_resized")
    else:
        configs = {"baseline (naive DataLoader)": baseline_batches}
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
    with tmp_dir as tmp:
        kb = 0.0
        if imagenet:
            root, kb = make_imagenet_like(Path(tmp), args.images, args.classes)
        else:
            root = Path(args.data) if args.data else make_dataset(Path(tmp), args.images, args.classes, w, h)
        samples = load_folder(str(root))
        data_line = (f"{len(samples)} images {w}x{h} JPEG q90" + (f" (mean {kb:.0f} KB, a quarter portrait, from "
                     f"scikit-image's sample photos)" if imagenet else "") + f" + PNG masks, {samples.num_classes} "
                     f"classes -> {args.size}x{args.size}" + (" random-resized crops + flip" if imagenet else "") +
                     f"; batch {args.batch_size}, workers {args.workers}, plan stratify_c")
        print(f"data: {data_line}", flush=True)
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
    ref = "torchvision" if imagenet else "baseline"
    table = [f"| pipeline | samples/s | ms/batch | vs {ref} | CPU ms/sample | CPU vs {ref} |",
             "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {n} | {r:.1f} | {m:.1f} | {x:.2f}x | {c:.2f} | {cx:.2f}x |" for n, r, m, x, c, cx in rows]
    print("\n" + "\n".join(table))
    end_to_end = [(n, x) for n, _, _, x, *_ in rows if n != base_name and "raw batches" not in n]
    best_name, best_x = max(end_to_end, key=lambda t: t[1], default=(base_name, 1.0))
    verdict = f"best end-to-end (model inputs): {best_name}, {best_x:.2f}x the {ref}'s samples/s"
    print(verdict)

    if not args.no_write:
        path = Path(args.results_md)
        title = "ImageNet-like training input, CIT vs torchvision" if imagenet else "Data pipeline throughput"
        section = [f"\n## {title} ({dt.date.today().isoformat()}, bench/pipeline.py)\n",
                   *[f"- {line}" for line in header],
                   f"- data: {data_line}, "
                   f"{args.repeats} interleaved rounds (medians; ratios paired by round) after {args.warmup} warm-up batches",
                   ("- every row yields normalised float32 (B, 3, S, S) model inputs on --device; the cit_fast rows "
                    "composite each object with its partner's context (compose = kernels.composite; on a CPU "
                    "kernels.composite_cpu), torchvision's row is one plain image per sample"
                    if imagenet else
                    "- end-to-end rows yield normalised float32 model inputs (compose = kernels.composite; "
                    "on a CPU kernels.composite_cpu, bitwise its PyTorch reference); raw-batch rows stop before compose (the host work "
                    "that feeds a GPU, where compose is the Triton kernel)"),
                   f"- machine: {os.cpu_count()}-core CPU, shared with other jobs (loaded: see the load average); "
                   "absolute rates move with the load, the paired ratios less",
                   "", *table, "", f"{verdict}.", ""]
        append_section(path, "\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
