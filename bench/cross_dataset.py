"""Cross-dataset mAP on generated data: train on the biased synthetic multi-label arrays, evaluate with
``cit-fast cross-eval`` on a NUS-WIDE-style folder from another generator seed at another resolution,
whose classes are renamed, partly missing and partly extra.

    .venv/bin/python bench/cross_dataset.py [--epochs 8] [--n-train 1500] [--results-md bench/RESULTS.md]

Source: ``make_biased_multilabel`` (seed 0, 48x48, the default biased pairs, b drawn at 0.6 scale).
Target: seed 7 (other object instances and backgrounds), 64x64 (resized to 48 by cross-eval), every
object at full scale, written as ImageList.txt + Concepts8.txt + AllLabels8.txt; 7 of the 10 source
classes are mapped under new names, 3 are absent, and the target has an extra class. Reported per
model (decoder-only baseline, causal): mAP over the 7 common classes on the source's own test set
(in-domain) and on the target (cross-dataset).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import List, Tuple

RENAME = {"circle": "round", "ring": "hoop", "square": "box", "triangle": "wedge", "star": "asterisk",
          "cross": "plus", "bar": "stick"}
MODELS = {"decoder-only baseline": "decoder_resnet8", "causal (k-means, proposed)": "causal_resnet8"}
COMMON = ["data.source=arrays", "model.embed_dim=64", "model.num_heads=4", "model.dropout=0.0",
          "model.num_confounders=16", "data.batch_size=64", "optim.lr=0.05", "optim.schedule=cosine",
          "optim.warmup_epochs=1", "progress=false", "threads=1", "log_interval=1000"]


def _train(overrides: List[str]) -> Tuple[float, str]:
    import torch

    torch.set_num_threads(1)
    from cit_fast import checkpoint as ckpt
    from cit_fast.config import load_config
    from cit_fast.train.loop import main

    cfg = load_config(None, overrides)
    t0 = time.perf_counter()
    main(cfg)
    return time.perf_counter() - t0, str(ckpt.find_latest(Path(cfg.out_dir) / "checkpoints"))


def make_data(out: Path, n_train: int) -> None:
    import numpy as np

    from cit_fast.data.sources.nuswide import save_nuswide
    from cit_fast.data.sources.records import SampleSet
    from cit_fast.data.synthetic.benchmark import save_arrays
    from cit_fast.data.synthetic.multilabel import make_biased_multilabel

    src = make_biased_multilabel(n_train=n_train, n_test_free=400, pair_test=50, size=48, seed=0)
    save_arrays(src["train"], str(out / "source" / "train.npz"))
    save_arrays(src["test"], str(out / "source" / "test.npz"))
    tgt = make_biased_multilabel(n_train=4, n_test_free=600, pair_test=50, size=64, b_scale=1.0, seed=7)["test"]
    keep = [tgt.classes.index(c) for c in RENAME]
    extra = (np.random.default_rng(7).random((len(tgt), 1)) < 0.3).astype(np.float32)
    labels = np.concatenate([tgt.labels[:, keep], extra], 1)
    save_nuswide(SampleSet(tgt.images, None, labels, [RENAME[c] for c in RENAME] + ["sunset"], name="target"),
                 str(out / "target"), "matrix")
    (out / "map.yaml").write_text("".join(f"{s}: {t}\n" for s, t in RENAME.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-train", type=int, default=1500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (the data stay fixed)")
    p.add_argument("--out-dir", default="runs/bench_cross_dataset")
    p.add_argument("--results-md", default="", help="append the table to this markdown file")
    args = p.parse_args()

    import torch

    from cit_fast.eval.cross_dataset import run_cross_eval

    out = Path(args.out_dir)
    t0 = time.perf_counter()
    make_data(out, args.n_train)
    cmd = "python " + " ".join(sys.argv)
    print(f"# {cmd}\n# torch {torch.__version__}, {os.cpu_count()} CPUs, CPU only", flush=True)
    jobs = {(name, seed): [*COMMON, f"data.train={out / 'source' / 'train.npz'}",
                           f"data.test={out / 'source' / 'test.npz'}", f"optim.epochs={args.epochs}",
                           f"model.name={model}", f"seed={seed}", f"out_dir={out / f'{model}_s{seed}'}"]
            for seed in args.seeds for name, model in MODELS.items()}
    lines = ["| model | seed | in-domain mAP, 7 common classes | cross-dataset mAP, 7 common classes | drop | train s |",
             "|---|---|---|---|---|---|"]
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        trained = dict(zip(jobs, pool.map(_train, jobs.values())))
    cross = {}
    for (name, seed), (secs, ck) in trained.items():
        rep = run_cross_eval(ck, str(out / "map.yaml"), ["data.source=nuswide", f"data.test={out / 'target'}",
                                                          "threads=1"], str(out / f"cross_{MODELS[name]}_s{seed}.json"),
                             source_too=True)
        cross[name, seed] = rep["mAP"]
        print(f"  {name:30s} seed {seed}  in-domain {rep['source_mAP']:6.2f}  cross {rep['mAP']:6.2f}  ({secs:.0f} s)",
              flush=True)
        lines.append(f"| {name} | {seed} | {rep['source_mAP']:.2f} | {rep['mAP']:.2f} | "
                     f"{rep['mAP'] - rep['source_mAP']:+.2f} | {secs:.0f} |")
    base, causal = list(MODELS)
    d = [cross[causal, s] - cross[base, s] for s in args.seeds]
    lines.append("\ncausal - baseline, cross-dataset mAP: " + ", ".join(f"{x:+.2f}" for x in d)
                 + (f" (mean {sum(d) / len(d):+.2f})" if len(d) > 1 else ""))
    table = "\n".join(lines)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\n{table}\n\n{minutes:.1f} min")
    if args.results_md:
        from cit_fast.table4 import append_results

        append_results(args.results_md, f"Cross-dataset mAP on generated data (source arrays -> NUS-WIDE-style "
                       f"target), {minutes:.1f} min", cmd, table)


if __name__ == "__main__":
    main()
