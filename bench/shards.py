#!/usr/bin/env python
"""Shards vs files: samples/s of the data path, page cache cold and warm, side by side in one run.

    python bench/shards.py                    # 400 ImageNet-like JPEGs + masks, appends to bench/RESULTS.md
    python bench/shards.py --images 800 --workers 2 --rounds 3 --no-write

Data: bench/pipeline.py's ImageNet-like files (JPEGs ~500x375 q90 cut from sample photos, masks in the
sibling tree), then `cit-fast shard` of them (write_shards, 64 MB shards). Measured:
  read     the bytes of every image and mask in a random order, nothing decoded: one open + read per file
           (folder) vs one mmap slice per member (shards, via the same read hook the pipelines use);
  torch    TorchPipeline raw batches (stratify_c, decode reuse, 224-px random-resized crops): what feeds
           an accelerator;
  dali     DaliPipeline raw batches on the CPU (parallel external source: files or shard members read in
           DALI's worker processes).
Cold: the page cache dropped (`echo 3 > /proc/sys/vm/drop_caches`, root only) right before the pass;
otherwise warm only. Each pass times the whole epoch (pipeline start-up included), the same for cold and
warm. Rounds interleave the configurations; the median round is reported. This runs on a local disk:
the case shards exist for, a network filesystem with 1.28M small files, cannot be measured here.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cit_fast.data.pipelines.contract import PipelineSpec  # noqa: E402
from cit_fast.data.sources import load_folder  # noqa: E402
from cit_fast.data.sources.members import read_bytes  # noqa: E402
from cit_fast.data.sources.shards import load_shards, write_shards  # noqa: E402


def _bench_pipeline():
    spec = importlib.util.spec_from_file_location("bench_pipeline", ROOT / "bench" / "pipeline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def drop_caches() -> bool:
    """Drop the page cache (root only); False where not permitted."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def read_all(samples, order) -> int:
    n = 0
    for k in order:
        n += read_bytes(samples.images[k], "image").size + read_bytes(samples.masks[k], "mask").size
    return n


def pipeline_epoch(kind: str, samples, args, epoch: int) -> int:
    spec = PipelineSpec(batch_size=args.batch_size, plan="stratify_c", image_size=224, hflip=True,
                        num_workers=args.workers, decode_reuse=True, train_crop="random_resized", seed=epoch)
    if kind == "dali":
        from cit_fast.data.pipelines.dali_pipeline import DaliPipeline as cls
    else:
        from cit_fast.data.pipelines.torch_pipeline import TorchPipeline as cls
    p = cls(samples, spec)
    p.set_epoch(epoch)
    n = 0
    for raw in p.raw_batches():
        float(raw["obj"][0, 0, 0, 0])
        n += raw["obj"].shape[0]
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-dali", action="store_true")
    ap.add_argument("--results-md", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bp = _bench_pipeline()
    tmp = Path(tempfile.mkdtemp(prefix="cit-fast-shards-bench-"))
    train, kb = bp.make_imagenet_like(tmp / "in", args.images, args.classes)
    folder = load_folder(str(train))
    t0 = time.perf_counter()
    job = write_shards(folder, tmp / "shards", shard_bytes=64 << 20, source=str(train), progress=False)
    shard_s = time.perf_counter() - t0
    shards = load_shards(tmp / "shards")
    src_bytes = sum(Path(p).stat().st_size for p in folder.images) + sum(Path(p).stat().st_size for p in folder.masks)
    cold_ok = drop_caches()
    kinds = ["torch"] + ([] if args.no_dali else ["dali"])
    sets = {"folder": folder, "shards": shards}
    tests: Dict[str, Callable[[int], int]] = {}
    order = np.random.default_rng(0).permutation(len(folder))
    for name, s in sets.items():
        tests[f"read {name}"] = lambda e, s=s: read_all(s, order)
    for kind in kinds:
        for name, s in sets.items():
            tests[f"{kind} {name}"] = lambda e, s=s, kind=kind: pipeline_epoch(kind, s, args, e)
    caches = ["cold", "warm"] if cold_ok else ["warm"]
    times: Dict[tuple, List[float]] = {}
    counts: Dict[str, int] = {}
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    for r in range(args.rounds):
        for name, fn in tests.items():
            for cache in caches:
                if cache == "cold":
                    drop_caches()
                else:
                    fn(r)  # the pass that warms the cache (and DALI / worker start-up paths)
                t = time.perf_counter()
                counts[name] = fn(r)
                times.setdefault((name, cache), []).append(time.perf_counter() - t)
                print(f"  round {r} {name:<14} {cache}: {times[(name, cache)][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = ["| data path | " + " | ".join(f"{c}: samples/s" for c in caches) + " | shards / folder |",
            "|---|" + "---:|" * len(caches) + "---|"]
    for name in tests:
        unit = "samples/s, image + mask bytes" if name.startswith("read") else "samples/s"
        n = len(folder) if name.startswith("read") else counts[name]
        other = name.replace("shards", "folder")
        ratio = " / ".join(f"{c} {med[(other, c)] / med[(name, c)]:.2f}x" for c in caches) if "shards" in name else ""
        rows.append(f"| {name} ({unit}) | " + " | ".join(f"{n / med[(name, c)]:.0f}" for c in caches) + f" | {ratio} |")
    lines = [f"date: 2026-12-06; machine: 2-core CPU, shared with other jobs (loaded); load average at start: {load}",
             f"{args.images} ImageNet-like JPEGs (mean {kb:.0f} KB) + PNG masks, {args.classes} classes: "
             f"{src_bytes / 2 ** 20:.1f} MiB in {2 * len(folder)} files -> {job.shards} shard(s), "
             f"{job.bytes / 2 ** 20:.1f} MiB (tar headers: +{100 * (job.bytes / src_bytes - 1):.1f}%); "
             f"`cit-fast shard` wrote {len(folder) / shard_s:.0f} samples/s ({src_bytes / 2 ** 20 / shard_s:.0f} MiB/s)",
             f"pipelines: batch {args.batch_size}, {args.workers} workers, stratify_c + decode reuse, 224-px "
             f"random-resized crops, raw batches (the host data path); whole epoch timed incl. start-up; "
             f"median of {args.rounds} rounds",
             "page cache: cold (dropped before the pass) and warm" if cold_ok else
             "page cache: warm only (dropping it needs root)",
             "local disk: small-file opens are cheap here; on a network filesystem they are the bottleneck "
             "shards remove, which this machine cannot show"]
    text = "\n".join(lines) + "\n\n" + "\n".join(rows)
    print("\n" + text)
    if not args.no_write:
        from cit_fast.utils import append_section

        append_section(Path(args.results_md), "\n## Shards vs files: the data path (2026-12-06, bench/shards.py)\n\n"
                       + "\n".join(f"- {x}" for x in lines) + "\n\n" + "\n".join(rows) + "\n")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
