"""CIT Table I ablations and Background-Challenge BG-Gap on the single-label synthetic scenes (CPU).

    .venv/bin/python bench/table1.py [--version V2] [--epochs 12] [--results-md bench/RESULTS.md]

Data: the CIT synthetic benchmark (cit_fast/data/synthetic/benchmark.py; Table III version, default V2: common
sense A sets the border hue, the bias B its brightness; B is re-drawn in test). Content/context split
(--masks): "interior" (default; the paper's CIFAR setting: content = the 24x24 picture, context = the
4-pixel border that A and B colour) or "shape" (content = the exact shape on black, context = the
textured background and the border; the silhouette alone then gives the class away).
Rows (CIT Table I; * = single-branch): Baseline*, Obj+Bg (double-branch, own context), Only Obj*,
Only Bg*, Obj+all Bg (double-branch, random plan), CIT (double-branch, stratify_c over A). All rows
share the trunk (CIFAR ResNet-8), epochs, schedule and data; all start from scratch (the paper
fine-tunes from a pre-trained single-branch ResNet: `model.init_single=... model.freeze_low=true`).
Columns: test top-1 (test B re-drawn), Background-Challenge Original / Mixed-Same / Mixed-Rand /
Only-FG and BG-Gap = Mixed-Same - Mixed-Rand, and CIT Table II (only object / only background) for
the double-branch rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Tuple

ROWS = {  # name -> (model prefix, plan)
    "Baseline*": ("", "none"),
    "Obj+Bg": ("double_", "none"),
    "Only Obj*": ("objonly_", "none"),
    "Only Bg*": ("bgonly_", "none"),
    "Obj+all Bg": ("double_", "random"),
    "CIT": ("double_", "stratify_c"),
}
COMMON = ["data.source=arrays", "data.batch_size=64", "optim.lr=0.1", "optim.schedule=cosine",
          "optim.warmup_epochs=1", "progress=false", "threads=1", "log_interval=1000", "data.crop_padding=2"]


def cit_scenes(version: str, train_per_class: int, test_per_class: int, seed: int = 0, masks: str = "interior"):
    """make_cit_benchmark; masks "interior" (its own: content = the 24x24 picture, context = the border)
    or "shape" (each sample's exact shape mask, padded: content = the silhouette on black)."""
    import numpy as np

    from cit_fast.data.sources.records import SampleSet
    from cit_fast.data.synthetic.benchmark import make_cit_benchmark, make_shapes

    sets = make_cit_benchmark(version, train_per_class, test_per_class, seed=seed)
    if masks == "interior":
        return sets["train"], sets["test"]
    out = {}
    for split, per_class, split_seed in (("train", train_per_class, 2 * seed), ("test", test_per_class, 2 * seed + 1)):
        _, masks, labels = make_shapes(per_class, size=24, seed=split_seed)  # the same draws as the benchmark's
        s = sets[split]
        assert np.array_equal(labels, s.labels)
        pad = (s.images.shape[1] - masks.shape[1]) // 2
        masks = np.pad(masks, ((0, 0), (pad, pad), (pad, pad)))
        out[split] = SampleSet(s.images, masks, s.labels, s.classes, s.strata, s.bias, name=f"{s.name} (shape masks)")
    return out["train"], out["test"]


def _train(args: Tuple[str, List[str]]) -> Tuple[str, float, str]:
    name, overrides = args
    import torch

    torch.set_num_threads(1)
    from cit_fast import checkpoint as ckpt
    from cit_fast.config import load_config
    from cit_fast.train.loop import main

    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    main(cfg)
    return name, time.perf_counter() - t0, str(ckpt.find_latest(Path(cfg.out_dir) / "checkpoints"))


def _evaluate(checkpoint: str) -> Dict[str, float]:
    from cit_fast.eval.commands import run_eval

    double = not Path(checkpoint).parts[-3].startswith("Baseline")
    ev = run_eval(checkpoint, bg_challenge=True, table2=double and "Only" not in checkpoint)
    out = {"top1": ev["test"]["top1"], **ev["bg_challenge"]}
    out.update({f"t2_{k}": v for k, v in ev.get("table2", {}).items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", default="V2", choices=["V1", "V2", "V3", "V4"])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--arch", default="resnet8", help="CIFAR trunk of every row")
    p.add_argument("--masks", default="interior", choices=["interior", "shape"],
                   help="content/context split: the picture vs its border (the paper's CIFAR setting), or the "
                        "exact shape silhouette (which alone gives the class away)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out-dir", default="runs/bench_table1")
    p.add_argument("--results-md", default="")
    args = p.parse_args()

    import torch

    from cit_fast.data.synthetic.benchmark import save_arrays

    out = Path(args.out_dir)
    t0 = time.perf_counter()
    train, test = cit_scenes(args.version, args.train_per_class, args.test_per_class, masks=args.masks)
    save_arrays(train, str(out / "data" / "train.npz"))
    save_arrays(test, str(out / "data" / "test.npz"))
    cmd = "python " + " ".join(sys.argv)
    print(f"# {cmd}\n# torch {torch.__version__}, {os.cpu_count()} CPUs, CPU only; synthetic {args.version} with "
          f"{args.masks} masks, {len(train)} train / {len(test)} test, {args.arch}, {args.epochs} epochs", flush=True)
    jobs = {}
    for name, (prefix, plan) in ROWS.items():
        tag = name.replace("*", "").replace("+", "_").replace(" ", "_")
        jobs[name] = [*COMMON, f"data.train={out / 'data' / 'train.npz'}", f"data.test={out / 'data' / 'test.npz'}",
                      f"model.name={prefix}{args.arch}", f"intervention.plan={plan}", f"optim.epochs={args.epochs}",
                      f"seed={args.seed}", f"out_dir={out / tag}"]
    res: Dict[str, Dict[str, float]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        for name, secs, ck in pool.map(_train, list(jobs.items())):
            res[name] = {**_evaluate(ck), "seconds": secs}
            print(f"  {name:12s} top-1 {res[name]['top1']:6.2f}  BG-Gap {res[name]['bg_gap']:6.2f}  ({secs:.0f} s)",
                  flush=True)
    lines = ["| method | test top-1 | Original | Mixed-Same | Mixed-Rand | Only-FG | BG-Gap | Table II: only obj "
             "| Table II: only bg | train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ROWS:
        r = res[name]
        t2 = (f"{r['t2_only_obj']:.2f} | {r['t2_only_bg']:.2f}" if "t2_only_obj" in r else "- | -")
        lines.append(f"| {name} | {r['top1']:.2f} | {r['original']:.2f} | {r['mixed_same']:.2f} | "
                     f"{r['mixed_rand']:.2f} | {r['only_fg']:.2f} | {r['bg_gap']:.2f} | {t2} | {r['seconds']:.0f} |")
    table = "\n".join(lines)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\n{table}\n\n{len(jobs)} runs in {minutes:.1f} min")
    if args.results_md:
        from cit_fast.table4 import append_results

        append_results(args.results_md, f"CIT Table I ablations + BG-Gap (synthetic {args.version}, {args.masks} masks), "
                       f"{minutes:.1f} min", cmd, table)


if __name__ == "__main__":
    main()
