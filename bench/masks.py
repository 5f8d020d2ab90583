#!/usr/bin/env python
"""Mask makers (the paper's function g) side by side: IoU against exact masks, coverage, time.

    python bench/masks.py                      # appends to bench/RESULTS.md, writes bench/masks_montage.png
    python bench/masks.py --no-write --per-class 4 --cam-steps 100
    python bench/masks.py --classifier resnet50-imagenet.pth   # adds cam of that classifier on the photos
    python bench/masks.py --throughput         # images/s of the mask job with 1 and 2 worker processes

Data, nothing downloaded:
  shapes 24 px   the embedded benchmark's objects (cit_fast.data.synthetic.benchmark.make_shapes: ten shapes of
                 random colour, size, rotation and position on cluttered textured backgrounds) with
                 their exact masks, at the benchmark's own 24 x 24 pixels
  shapes 96 px   the same generator at 96 x 96
  photos         the sample photos shipped in scikit-image (and scikit-learn / matplotlib when installed),
                 against rough hand-drawn outlines (cit_fast.data.synthetic.sample_photos; IoU good to ~+-0.05)
Methods: every built-in saliency method (OpenCV's primitives: the masks extra), and
``cam``: Grad-CAM of a resnet8 trained here for --cam-steps steps on other make_shapes images
(shapes only: it knows no photo classes), refined with GrabCut like the default. Time: wall
seconds per image of the whole mask maker on one thread (the load average is printed: the machine
may be shared).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cit_fast.data.masks.quality import MaskQuality, coverage, mask_iou, write_montage  # noqa: E402
from cit_fast.data.masks.saliency import SaliencyMasker  # noqa: E402

Scene = Tuple[np.ndarray, np.ndarray]  # uint8 (H, W, 3) image, bool (H, W) object
Masker = Callable[[np.ndarray], np.ndarray]

METHODS: Dict[str, str] = {  # row name -> SaliencyMasker method
    "grabcut (default)": "grabcut",
    "rbd": "rbd",
    "spectral (the old default)": "spectral",
    "fine_grained": "fine_grained",
}
MONTAGE_METHODS = ("spectral (the old default)", "fine_grained", "grabcut (default)")


def shapes(per_class: int, size: int, seed: int) -> List[Scene]:
    from cit_fast.data.synthetic.benchmark import make_shapes

    images, masks, _ = make_shapes(per_class, size=size, seed=seed)
    return list(zip(images, masks >= 128))


def train_shape_classifier(steps: int, seed: int = 99):
    """resnet8 on make_shapes (24 px, seed != the benchmark's), the cam method's own classifier."""
    import torch

    from cit_fast.eval.cam import Classifier
    from cit_fast.data.synthetic.benchmark import make_shapes
    from cit_fast.models.registry import create_model

    torch.manual_seed(0)
    images, _, labels = make_shapes(300, size=24, seed=seed)  # 3,000 images: 600 overfit (34% test accuracy)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    y = torch.from_numpy(labels)
    n_test = len(x) // 6
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = perm[:n_test], perm[n_test:]
    model = create_model("resnet8", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=steps)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        idx = train[torch.randint(0, len(train), (64,), generator=g)]
        xb = x[idx]
        flip = torch.rand(len(xb), generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    return Classifier(model, (0.5,) * 3, (0.25,) * 3, 24, 0, None, f"resnet8 trained {steps} steps"), acc


def evaluate(masker: Masker, scenes: List[Scene]) -> Dict[str, object]:
    ious, covers, preds = [], [], []
    t0 = time.perf_counter()
    for img, truth in scenes:
        m = masker(img)
        preds.append(m)
        ious.append(mask_iou(m >= 128, truth))
        covers.append(coverage(m))
    seconds = (time.perf_counter() - t0) / max(len(scenes), 1)
    return {"iou": np.asarray(ious), "coverage": np.asarray(covers), "s": seconds, "masks": preds}


def iou_cell(r: Optional[Dict[str, object]]) -> str:
    if r is None:
        return "-"
    i = r["iou"]
    q10, q50, q90 = np.quantile(i, (0.1, 0.5, 0.9))
    return f"{i.mean():.3f} ({q10:.2f} / {q50:.2f} / {q90:.2f})"


IMAGENET_TRAIN = 1_281_167  # ImageNet-1k training images
NODE_CORES = 64


def other_load(seconds: float = 1.0) -> float:
    """Cores busy with other work right now (from /proc/stat over ``seconds``; the 1-minute load average
    elsewhere): the ratio below is the code's scaling only when this is near 0."""
    def busy_idle():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], v[3] + v[4]  # busy, idle+iowait (jiffies, all cores)
    try:
        b0, i0 = busy_idle()
        time.sleep(seconds)
        b1, i1 = busy_idle()
    except OSError:
        return os.getloadavg()[0]
    return (os.cpu_count() or 1) * (b1 - b0) / max(1, (b1 - b0) + (i1 - i0))


def throughput(args) -> int:
    """Wall time of the mask job (data/masks/job.py) over the same JPEGs with 1 and 2 worker processes,
    alternated ``--repeats`` times (paired: drift in the machine's load hits both); the median of each."""
    import shutil
    import tempfile

    from PIL import Image

    from cit_fast.data.masks.job import run_masks
    from cit_fast.data.synthetic.sample_photos import sample_photos

    photos = [img for img, _ in sample_photos(skip_missing=True).values()]
    tmp = Path(tempfile.mkdtemp(prefix="cit-fast-masks-bench-"))
    try:
        for i in range(args.images):  # ImageNet's typical 500x375, each a different crop / flip of a photo
            img = Image.fromarray(photos[i % len(photos)])
            w, h = img.size
            box = ((i * 7) % max(1, w // 8), (i * 5) % max(1, h // 8), w - (i * 3) % max(1, w // 8), h)
            img = img.crop(box).resize((500, 375), Image.BILINEAR)
            if i // len(photos) % 2:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            (tmp / "src" / "images" / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
            img.save(tmp / "src" / "images" / f"c{i % 4}" / f"{i:04d}.jpg", quality=90)
        busy = other_load()
        rates: Dict[int, List[float]] = {1: [], 2: []}
        digests = {}
        for rep in range(args.repeats):
            for workers in (1, 2):
                out = tmp / f"out{workers}"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                report = run_masks(str(tmp / "src"), str(out), workers=workers, progress=False, montage=None)
                wall = time.perf_counter() - t0
                rates[workers].append(report.written / wall)
                digests[workers] = sorted((p.relative_to(out).as_posix(), p.read_bytes()) for p in out.rglob("*.png"))
                print(f"  run {rep + 1}, {workers} worker(s): {report.written} masks in {wall:.1f} s = "
                      f"{rates[workers][-1]:.2f} images/s", flush=True)
        busy_after = other_load()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    same = digests[1] == digests[2]
    r1, r2 = float(np.median(rates[1])), float(np.median(rates[2]))
    ratios = [b / a for a, b in zip(rates[1], rates[2])]
    hours = IMAGENET_TRAIN / (r1 * NODE_CORES) / 3600
    state = ("idle" if max(busy, busy_after) < 0.3 else
             f"shared with other jobs: the ratio is noisy, not the code's scaling")
    lines = [f"date: {dt.date.today().isoformat()}; machine: {os.cpu_count()}-core CPU, {state} (cores busy with other "
             f"work before / after: {busy:.2f} / {busy_after:.2f}; load average {os.getloadavg()[0]:.2f})",
             f"{args.images} JPEGs of 500x375 (sample photos cropped/flipped), default method (grabcut), one thread per "
             f"worker process (OpenCV, BLAS, torch), 1 and 2 workers alternated {args.repeats} times",
             f"1 worker: {r1:.2f} images/s; 2 workers: {r2:.2f} images/s (medians); speed-up {r2 / r1:.2f}x "
             f"(per pair: {', '.join(f'{x:.2f}' for x in ratios)}; goal >= 1.8x on 2 idle cores)",
             f"masks of 1 and 2 workers byte-identical: {same}",
             f"implied ImageNet-1k ({IMAGENET_TRAIN:,} images) per {NODE_CORES}-core node, {NODE_CORES} workers at the "
             f"1-worker rate (an estimate: assumes the per-core rate holds on all cores): {hours:.1f} h; "
             f"{hours / 8:.1f} h on 8 nodes (ranks under SLURM / torchrun)"]
    print("\n".join(lines))
    if not args.no_write:
        from cit_fast.utils import append_section

        append_section(Path(args.results_md), f"\n## Mask job throughput: workers ({dt.date.today().isoformat()}, "
                       f"bench/masks.py --throughput --images {args.images} --repeats {args.repeats})\n\n"
                       + "\n".join(f"- {x}" for x in lines) + "\n")
    return 0 if same else 1


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=10, help="shapes 24 px: images per class (10 classes)")
    ap.add_argument("--per-class-96", type=int, default=3, help="shapes 96 px: images per class")
    ap.add_argument("--cam-steps", type=int, default=600,
                    help="training steps of the cam row's resnet8 (0: no cam row)")
    ap.add_argument("--classifier", default="", help="a --classifier file for a cam row on the photos too")
    ap.add_argument("--montage", default=str(ROOT / "bench" / "masks_montage.png"))
    ap.add_argument("--results-md", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print only: no RESULTS.md section, no montage")
    ap.add_argument("--throughput", action="store_true",
                    help="instead: images/s of `cit-fast masks` (default method) with 1 and 2 worker processes on "
                         "ImageNet-sized JPEGs, and the hours for ImageNet-1k per 64-core node it implies")
    ap.add_argument("--images", type=int, default=160, help="--throughput: JPEGs (500x375) masked per run")
    ap.add_argument("--repeats", type=int, default=3, help="--throughput: 1- and 2-worker runs, alternated")
    args = ap.parse_args(argv)
    if args.throughput:
        return throughput(args)

    import cv2
    import torch

    from cit_fast.data.synthetic.sample_photos import sample_photos

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    header = [f"date: {dt.datetime.now().isoformat(timespec='seconds')}",
              f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, one thread; "
              f"numpy {np.__version__}, OpenCV {cv2.__version__}, torch {torch.__version__}, "
              f"python {platform.python_version()}",
              f"load average at start: {load}", f"command: {command}"]
    print("\n".join(header), flush=True)

    photos = sample_photos(skip_missing=True)
    sets = {"shapes 24 px": shapes(args.per_class, 24, 0), "shapes 96 px": shapes(args.per_class_96, 96, 1),
            "photos": [photos[k] for k in photos]}
    print(f"  {len(sets['shapes 24 px'])} + {len(sets['shapes 96 px'])} shapes, photos: {', '.join(photos)}",
          flush=True)
    rows: Dict[str, Dict[str, Optional[Dict[str, object]]]] = {}
    for name, method in METHODS.items():
        masker = SaliencyMasker(method)
        rows[name] = {k: evaluate(masker, v) for k, v in sets.items()}
        print(f"  {name:<40} " + "  ".join(f"{k} {iou_cell(r)}" for k, r in rows[name].items()), flush=True)
    cam_note = ""
    if args.cam_steps:
        from cit_fast.eval.cam import cam_masker

        t0 = time.perf_counter()
        clf, acc = train_shape_classifier(args.cam_steps)
        cam_note = (f"cam: Grad-CAM of a resnet8 trained {args.cam_steps} steps (batch 64, "
                    f"{time.perf_counter() - t0:.0f} s) on other make_shapes images, test accuracy {100 * acc:.1f}%, "
                    f"refined with GrabCut")
        masker = cam_masker(clf, device="cpu")
        name = "cam (resnet8 trained on the shapes)"
        rows[name] = {k: (evaluate(masker, v) if k != "photos" else None) for k, v in sets.items()}
        print(f"  {name:<40} " + "  ".join(f"{k} {iou_cell(r)}" for k, r in rows[name].items()) + f"; {cam_note}",
              flush=True)
    if args.classifier:
        from cit_fast.eval.cam import make_cam_masker

        masker = make_cam_masker(args.classifier, device="cpu")
        name = f"cam ({Path(args.classifier).name})"
        rows[name] = {k: (evaluate(masker, v) if k == "photos" else None) for k, v in sets.items()}
        print(f"  {name:<40} photos {iou_cell(rows[name]['photos'])}", flush=True)

    table = ["| method | shapes 24 px: IoU mean (10% / median / 90%) | shapes 96 px: IoU | photos: IoU vs outline | "
             "photos: median coverage | s / photo |", "|---|---|---|---|---:|---:|"]
    for name, r in rows.items():
        p = r["photos"]
        table.append(f"| {name} | {iou_cell(r['shapes 24 px'])} | {iou_cell(r['shapes 96 px'])} | {iou_cell(p)} | "
                     + (f"{100 * np.median(p['coverage']):.1f}% | {p['s']:.3f} |" if p else "- | - |"))
    names = list(photos)
    per_photo = ["| photo | outline covers | " + " | ".join(m.split(" (")[0] for m in rows if rows[m]["photos"])
                 + " |", "|---|---:|" + "---|" * sum(1 for m in rows if rows[m]["photos"])]
    for i, k in enumerate(names):
        cells = [f"{mask_iou(rows[m]['photos']['masks'][i] >= 128, photos[k][1]):.2f} / "
                 f"{100 * rows[m]['photos']['coverage'][i]:.0f}%" for m in rows if rows[m]["photos"]]
        per_photo.append(f"| {k} | {100 * photos[k][1].mean():.0f}% | " + " | ".join(cells) + " |")
    default_q = MaskQuality.of(rows["grabcut (default)"]["photos"]["coverage"])
    old_q = MaskQuality.of(rows["spectral (the old default)"]["photos"]["coverage"])
    coverage_line = (f"coverage on the photos, spectral (before) -> grabcut (after): mean {100 * old_q.mean:.1f}% -> "
                     f"{100 * default_q.mean:.1f}%, median {100 * old_q.median:.1f}% -> {100 * default_q.median:.1f}% "
                     f"(the outlines: mean {100 * np.mean([m.mean() for _, m in photos.values()]):.1f}%)")
    print("\n" + "\n".join(table) + "\n\nper photo, IoU / coverage:\n" + "\n".join(per_photo) + "\n" + coverage_line)
    if args.no_write:
        return 0

    from PIL import Image

    from cit_fast.utils import atomic_path

    tiles = []
    for i, k in enumerate(names):
        img, truth = photos[k]
        tiles.append((img, truth.astype(np.uint8) * 255, f"{k}: outline"))
        for m in MONTAGE_METHODS:
            r = rows[m]["photos"]
            tiles.append((img, r["masks"][i], f"{m.split(' (')[0]} {r['iou'][i]:.2f}"))
    montage = Path(args.montage)
    write_montage(tiles, montage, side=128, cols=1 + len(MONTAGE_METHODS))
    with atomic_path(montage) as tmp:  # a palette PNG: a quarter of the size, for the repository
        small = Image.open(montage).convert("RGB").quantize(192, method=Image.Quantize.MEDIANCUT)
        small.save(tmp, format="PNG", optimize=True)
    print(f"wrote {montage} ({montage.stat().st_size // 1024} KiB)")

    from cit_fast.utils import append_section

    path = Path(args.results_md)
    title = f"Object masks on photos and on the embedded scenes ({dt.date.today().isoformat()}, bench/masks.py)"
    section = [f"\n## {title}\n",
               *[f"- {line}" for line in header],
               f"- shapes: make_shapes with exact masks, {len(sets['shapes 24 px'])} images at 24 px (the benchmark's "
               f"size) and {len(sets['shapes 96 px'])} at 96 px; photos: {', '.join(names)} against hand-drawn "
               f"outlines (cit_fast/data/synthetic/sample_photos.py, IoU good to about +-0.05)",
               *([f"- {cam_note}"] if cam_note else []),
               "", *table, "", "Per photo, IoU / coverage of the image:", "", *per_photo, "",
               f"{coverage_line}. Montage (outline, spectral, fine_grained, grabcut; IoU in the captions): "
               f"`{montage.relative_to(ROOT) if montage.is_relative_to(ROOT) else montage}`.", ""]
    append_section(path, "\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
