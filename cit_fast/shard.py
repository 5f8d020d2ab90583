"""``cit-fast shard SRC OUT``: any source the project reads -> tar shards + index (data/sources/shards.py)."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import List, Optional

from .errors import UsageError


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "shard", help="write a dataset as tar shards (WebDataset layout) + an index, for training at scale",
        description="Any source cit-fast reads (class folders with masks, manifest, COCO, CIFAR, .npz, shards) -> "
                    "OUT/shard-NNNNNN.tar + OUT/index.npz. Train with data.train=OUT (data.source=shards is "
                    "inferred). A rerun after an interruption keeps the finished shards and continues.",
        epilog="examples:\n"
               "  cit-fast shard data/imagenet/train /scratch/in1k-shards --shard-size 1GB --verify\n"
               "  cit-fast shard data/cifar-10-batches-py out/c10-test --split test --samples-per-shard 5000\n"
               "  cit-fast shard ann/instances_train2017.json out/coco data.root=images/train2017",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("src", help="the source: a directory (class folders, CIFAR, NUS-WIDE), .npz, .csv/.jsonl, .json")
    s.add_argument("out", help="output directory (new, or an unfinished run of the same SRC)")
    size = s.add_mutually_exclusive_group()
    size.add_argument("--shard-size", default="1GB", help="close a shard before it passes this size (default 1GB)")
    size.add_argument("--samples-per-shard", type=int, default=0, help="or a fixed number of samples per shard")
    s.add_argument("--split", default="", choices=["", "train", "test"],
                   help="test: read SRC as training reads data.test (CIFAR's test batches; an ImageNet validation "
                        "folder's label file, found beside it or given as data.test_labels=FILE); default train")
    s.add_argument("--verify", action="store_true", help="re-read every member against the index when done")
    s.add_argument("--overwrite", action="store_true", help="remove OUT's shards and index first")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("overrides", nargs="*", help="data.* keys the source needs, e.g. data.root=DIR (COCO images)")
    return s


def _remove_shards(out: Path) -> None:
    """Only what `cit-fast shard` writes: shard-*.tar, index.npz, .parts/, the masks column."""
    from .data.sources.shards import INDEX, MASKS, PARTS

    for f in list(out.glob("shard-*.tar")) + list(out.glob(".shard-*.tmp")) + [out / INDEX]:
        if f.is_file():
            f.unlink()
    for d in (out / PARTS, out / MASKS):
        if d.is_dir():
            shutil.rmtree(d)


def run_shard(src: str, out: str, *, shard_size: str = "1GB", samples_per_shard: int = 0, split: str = "",
              verify: bool = False, overwrite: bool = False, progress: Optional[bool] = None,
              overrides: Optional[List[str]] = None) -> List[str]:
    from .config import ConfigError, load_config
    from .data.build import load_split
    from .data.sources.shards import is_shard_dir, parse_size, verify_shards, write_shards

    if samples_per_shard < 0:
        raise UsageError(f"--samples-per-shard: expected a positive number, got {samples_per_shard}")
    shard_bytes = parse_size(shard_size)
    if not Path(src).exists():
        raise UsageError(f"shard: SRC {src} not found")
    bad = [o for o in overrides or [] if not o.startswith("data.")]
    if bad:
        raise UsageError(f"shard: {bad[0]}: only data.* keys apply here (e.g. data.root=DIR)")
    try:
        # a test split as training reads it: label files named by data.test_labels apply to data.test
        test = [f"data.test={src}"] if split == "test" else []
        cfg = load_config(None, [f"data.train={src}", *test, *(overrides or [])])
    except ConfigError as e:
        raise UsageError(f"shard: SRC {src}: {e}") from None
    out_p = Path(out)
    if out_p.resolve() == Path(src).resolve():
        raise UsageError(f"shard: OUT {out} is SRC itself; name a new directory")
    if overwrite and out_p.is_dir():
        _remove_shards(out_p)
    samples = load_split(cfg.data, cfg.data.test if split == "test" else cfg.data.train, split=split or "train")
    job = write_shards(samples, out_p, shard_bytes=shard_bytes, samples_per_shard=samples_per_shard,
                       source=str(Path(src).resolve()) + (f":{split}" if split else ""), progress=progress)
    lines = job.lines()
    if samples.masks is None:
        lines.append(f"no masks in {src}: compute them for the shards with `cit-fast masks {out}` (a masks column "
                     f"beside the image shards)")
    if verify and is_shard_dir(out_p):
        lines += verify_shards(out_p, progress=progress)
    key = "data.test" if split == "test" else "data.train"
    lines.append(f"use it with {key}={out}")
    return lines
