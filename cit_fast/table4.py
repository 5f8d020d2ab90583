"""CIT Table IV on the embedded synthetic benchmark: 13 runs, printed as the paper's table.

Rows: baseline trained on the original data (grey border, one run for all versions), baseline on
the synthetic data, CIT Stratify-B and CIT Stratify-C|A, each for V1-V4; all tested on the
version's own test set (whose bias B no longer tells the class).

With ``--seeds N`` every cell is run for seeds 0..N-1 (``seed`` and ``data.synthetic_seed`` both set
to the seed: the three methods of a version see the same data and start from the same weights under
one seed, so their differences are paired) and printed as mean +/- the half-width of its 95% CI, with
the paired differences Stratify B - baseline, Stratify C|A - baseline and B - C|A per version, each
with its 95% CI (Student t over seeds, ``cit_fast.stats``).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .config import SYNTHETIC_VERSIONS, load_config
from .errors import UsageError
from .stats import mean_ci, paired_ci
from .train.loop import main
from .utils import append_section

VERSIONS = tuple(v for v in SYNTHETIC_VERSIONS if v != "original")  # the table's columns
ROWS = (("Baseline on Ori.", "original", "none"), ("Baseline on Syn.", None, "none"),
        ("CIT - Stratify B", None, "stratify_b"), ("CIT - Stratify C|A", None, "stratify_c"))
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "table4.yaml"


def _run_one(args: Tuple[str, List[str], str]) -> Tuple[str, float, float]:
    name, overrides, config = args
    import torch

    torch.set_num_threads(1)
    cfg = load_config(config, overrides)
    t0 = time.perf_counter()
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(cfg.out_dir) / "train.log", "w") as log, contextlib.redirect_stdout(log):
        res = main(cfg)  # per-epoch lines go to the run's own log, not the shared console
    return name, float(res["test_top1"]), time.perf_counter() - t0


SEED_KEYS = ("seed", "data.synthetic_seed")  # what one seed of --seeds sets


def seed_overrides(seed: int) -> List[str]:
    """One seed of ``--seeds``: the same seed for the data and for the init, plans and augmentation."""
    return [f"{k}={seed}" for k in SEED_KEYS]


def check_seeds(seeds: int, overrides: Sequence[str]) -> None:
    if seeds < 1:
        raise UsageError(f"--seeds: expected at least 1, got {seeds}")
    taken = [o for o in overrides if o.partition("=")[0].strip() in SEED_KEYS]
    if seeds > 1 and taken:
        raise UsageError(f"--seeds {seeds} sets {' and '.join(SEED_KEYS)} of every run (0..{seeds - 1}); "
                         f"drop {', '.join(taken)} from the overrides")


def plan_runs(out_dir: Path, overrides: Sequence[str], seeds: int = 1) -> Dict[str, List[str]]:
    """The 13 runs of Table IV, keyed '<plan>-<version>'; with seeds > 1, 13 per seed, keyed
    'seed<s>/<plan>-<version>' (each seed's directory a complete sweep that ``cit-fast report`` reads)."""
    runs: Dict[str, List[str]] = {}
    for s in range(seeds):
        for label, fixed_version, plan in ROWS:
            for v in ([fixed_version] if fixed_version else VERSIONS):
                key = f"{plan}-{v}" if seeds == 1 else f"seed{s}/{plan}-{v}"
                runs[key] = [f"data.synthetic_version={v}", f"intervention.plan={plan}",
                             f"out_dir={out_dir / key}", "threads=1", *(seed_overrides(s) if seeds > 1 else []),
                             *overrides]
    return runs


def by_cell(acc: Dict[str, float], seeds: int, prefix: str = "") -> Dict[str, List[float]]:
    """'[prefix]seed<s>/<cell>' -> value  =>  '[prefix]<cell>' -> [value of seed 0, 1, ...] (paired by position)."""
    out: Dict[str, List[float]] = {}
    for s in range(seeds):
        head = f"{prefix}seed{s}/"
        for key, value in acc.items():
            if key.startswith(head):
                out.setdefault(prefix + key[len(head):], []).append(value)
    return out


def fmt_mean_ci(values: Sequence[float], digits: int = 1) -> str:
    """'mean ± half-width of the 95% CI' (just the mean for one value)."""
    m, lo, hi = mean_ci(values)
    return f"{m:.{digits}f}" if lo != lo else f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def fmt_diff_ci(diffs: Sequence[float], digits: int = 1) -> str:
    """'+mean [+low, +high]': a paired difference and its 95% CI."""
    m, lo, hi = paired_ci(diffs)
    return f"{m:+.{digits}f}" if lo != lo else f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


# the paired differences printed with --seeds: (row label, minuend plan, subtrahend plan)
DIFFS = (("Stratify B - Baseline on Syn.", "stratify_b", "none"),
         ("Stratify C\\|A - Baseline on Syn.", "stratify_c", "none"),
         ("Stratify B - Stratify C\\|A", "stratify_b", "stratify_c"))


def format_table(acc: Dict[str, object]) -> str:
    """Table IV in markdown. ``acc``: '<plan>-<version>' -> top-1 (%), or -> [top-1 per seed] (then each
    cell is mean ± its 95% CI half-width, and the three paired differences follow, each with its CI)."""
    seeded = isinstance(next(iter(acc.values())), (list, tuple))
    lines = ["| Training method | V1 | V2 | V3 | V4 |", "|---|---|---|---|---|"]
    for label, fixed_version, plan in ROWS:
        cells = [acc[f"{plan}-{fixed_version or v}"] for v in VERSIONS]
        lines.append(f"| {label.replace('|', chr(92) + '|')} | "
                     + " | ".join(fmt_mean_ci(c) if seeded else f"{c:.1f}" for c in cells) + " |")
    if not seeded:
        diff = [acc[f"stratify_b-{v}"] - acc[f"stratify_c-{v}"] for v in VERSIONS]
        lines.append("| Stratify B - Stratify C\\|A | " + " | ".join(f"{d:+.1f}" for d in diff) + " |")
        return "\n".join(lines)
    n = len(acc[f"stratify_b-{VERSIONS[0]}"])
    lines += ["", f"| paired difference, mean [95% CI] over {n} seeds | V1 | V2 | V3 | V4 |", "|---|---|---|---|---|"]
    for label, a, b in DIFFS:
        cells = [fmt_diff_ci([x - y for x, y in zip(acc[f"{a}-{v}"], acc[f"{b}-{v}"])]) for v in VERSIONS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_many(runs: Dict[str, List[str]], jobs: int = 2, heartbeat_s: float = 30.0,
             config: Path = DEFAULT_CONFIG) -> Dict[str, float]:
    """Run named override lists (on the Table IV config, or ``config``) `jobs` at a time; name -> test top-1.

    Prints each run as it finishes with the count done / running / left and an ETA, and a line at
    least every ``heartbeat_s`` while runs are going (a Table IV run takes minutes on a CPU)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    acc: Dict[str, float] = {}
    t0 = time.perf_counter()
    durations: List[float] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(_run_one, (name, ov, str(config))): name for name, ov in runs.items()}
        started = {name: t0 for name in list(runs)[:jobs]}
        while pending:
            done, _ = wait(pending, timeout=heartbeat_s, return_when=FIRST_COMPLETED)
            now = time.perf_counter()
            for fut in done:
                name, top1, secs = fut.result()
                del pending[fut]
                started.pop(name, None)
                acc[name] = top1
                durations.append(secs)
                for nxt in [n for n in runs if n not in acc and n not in started][:jobs - len(started)]:
                    started[nxt] = now
                print(f"  [{len(acc)}/{len(runs)}] {name:16s} test top-1 {top1:6.2f}%  ({secs:.0f} s)"
                      f"{_eta(len(runs) - len(acc), durations, jobs)}", flush=True)
            if not done:
                going = ", ".join(f"{n} {now - t:.0f} s" for n, t in started.items())
                print(f"  [{len(acc)}/{len(runs)} done] running: {going}{_eta(len(runs) - len(acc), durations, jobs)}",
                      flush=True)
    return acc


def _eta(left: int, durations: List[float], jobs: int) -> str:
    if not left or not durations:
        return ""
    secs = sum(durations) / len(durations) * left / max(jobs, 1)
    return f"; {left} left, about {secs / 60:.0f} min to go" if secs >= 90 else f"; {left} left, about {secs:.0f} s to go"


def append_results(results_md: str, title: str, cmd: str, body: str) -> None:
    """Append a dated section to a markdown results file, atomically."""
    append_section(Path(results_md),
                   f"\n## {title} - {date.today().isoformat()}, {os.cpu_count()}-core CPU\n\nCommand: `{cmd}`\n\n{body}\n")


def run_table4(out_dir: Path, overrides: Sequence[str] = (), jobs: int = 2,
               results_md: Optional[str] = None, seeds: int = 1) -> Dict[str, float]:
    check_seeds(seeds, overrides)
    load_config(str(DEFAULT_CONFIG), overrides)  # fail fast on a bad override
    runs = plan_runs(out_dir, overrides, seeds)
    t0 = time.perf_counter()
    print(f"CIT Table IV: {len(runs)} runs" + (f" ({seeds} seeds)" if seeds > 1 else "")
          + f", {jobs} at a time, results under {out_dir}", flush=True)
    acc = run_many(runs, jobs)
    minutes = (time.perf_counter() - t0) / 60
    table = format_table(by_cell(acc, seeds) if seeds > 1 else acc)
    what = f"mean ± 95% CI half-width over seeds 0-{seeds - 1}, " if seeds > 1 else ""
    print(f"\nTest accuracy (%) on the synthetic CIT benchmark ({what}embedded shapes, 10 classes, ResNet-20):\n")
    print(table)
    print(f"\n{len(runs)} runs in {minutes:.1f} min")
    if results_md:
        cmd = "cit-fast " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("cit-fast") else "make demo"
        title = f"CIT Table IV (synthetic V1-V4{f', {seeds} paired seeds' if seeds > 1 else ''}), {minutes:.1f} min"
        append_results(results_md, title, cmd, table)
    return acc


# ---------------------------------------------------------------------------------------------
# Table IV on CIFAR images (``cit-fast table4 --images cifar10:DIR [--images cifar100:DIR]``)

CIFAR_CONFIG = Path(__file__).parent / "configs" / "table4_cifar.yaml"  # the paper's recipe, 160 epochs
PAPER_EPOCHS, PAPER_MILESTONES = 160, (80, 120)
# CIT Table IV as published: row key -> V1..V4, per dataset
PAPER_TABLE4 = {
    "cifar10": {"none-original": (91.92,) * 4, "none": (100, 51.2, 20.2, 0.7),
                "stratify_b": (99.87, 97.47, 94.02, 91.70), "stratify_c": (99.81, 97.49, 94.03, 91.76)},
    "cifar100": {"none-original": (68.01,) * 4, "none": (98.28, 41.05, 2.67, 0.1),
                 "stratify_b": (98.18, 95.01, 74.85, 67.50), "stratify_c": (98.15, 95.03, 74.83, 67.52)},
}
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def shortened_recipe(epochs: int) -> List[str]:
    """Overrides that run the paper's schedule in ``epochs`` epochs: lr x0.1 at the same fractions (1/2, 3/4)."""
    m1 = max(1, round(epochs * PAPER_MILESTONES[0] / PAPER_EPOCHS))
    m2 = max(m1 + 1, round(epochs * PAPER_MILESTONES[1] / PAPER_EPOCHS))
    return [f"optim.epochs={epochs}", f"optim.milestones=[{m1},{m2}]"]


def write_image_versions(spec: str, data_dir: Path, train_per_class: Optional[int] = None,
                         test_per_class: Optional[int] = None, test_bias: str = "random", seed: int = 0
                         ) -> Tuple[str, Dict[str, Tuple[Path, Path]], Tuple[int, int, int]]:
    """Write the original data and V1-V4 built from ``spec`` (cifar10:DIR / cifar100:DIR) as arrays
    files under ``data_dir/<version>/``; (dataset name, version -> (train.npz, test.npz),
    (#training images, #test images, #classes))."""
    from .config import SYNTHETIC_VERSIONS
    from .data.synthetic.benchmark import load_source_images, make_cit_benchmark, save_arrays

    src = load_source_images(spec)
    paths: Dict[str, Tuple[Path, Path]] = {}
    for v in SYNTHETIC_VERSIONS:
        sets = make_cit_benchmark(v, train_per_class, test_per_class, seed=seed, test_bias=test_bias, images=src)
        pair = (data_dir / v / "train.npz", data_dir / v / "test.npz")
        save_arrays(sets["train"], str(pair[0]))
        save_arrays(sets["test"], str(pair[1]))
        paths[v] = pair
    sizes = (len(sets["train"]), len(sets["test"]), len(src.classes))
    print(f"  {src.name}: V1-V4 and the original (grey border) written under {data_dir} "
          f"({sizes[0]} training / {sizes[1]} test images of {sizes[2]} classes, 40x40)", flush=True)
    return src.name, paths, sizes


def plan_image_runs(name: str, paths: Dict[str, Tuple[Path, Path]], out_dir: Path,
                    overrides: Sequence[str]) -> Dict[str, List[str]]:
    """The 13 runs of one dataset's half of Table IV, keyed '<dataset>/<plan>-<version>'."""
    runs: Dict[str, List[str]] = {}
    for label, fixed_version, plan in ROWS:
        for v in ([fixed_version] if fixed_version else VERSIONS):
            tr, te = paths[v]
            runs[f"{name}/{plan}-{v}"] = [f"data.train={tr}", f"data.test={te}", f"intervention.plan={plan}",
                                         f"out_dir={out_dir / name / f'{plan}-{v}'}", "threads=1", *overrides]
    return runs


def seconds_per_step(cfg, num_classes: int, side: int, steps: int = 4) -> Tuple[float, str]:
    """Measured seconds of one training step (forward, backward, SGD) of cfg's model at cfg's batch
    size on ``side`` x ``side`` random images, one thread on a CPU as the runs use; (seconds, device)."""
    import torch

    from .models import build_model

    dev = torch.device("cuda" if (cfg.device != "cpu" and torch.cuda.is_available()) else "cpu")
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        model = build_model(cfg.model, num_classes).to(dev).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = torch.randn(cfg.data.batch_size, 3, side, side, device=dev)
        y = torch.randint(0, num_classes, (cfg.data.batch_size,), device=dev)
        times = []
        for i in range(steps + 1):  # the first step warms up (allocations, cuDNN autotuning)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out if torch.is_tensor(out) else out[0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, 1 thread per run ({os.cpu_count()} cores)"
    return sorted(times)[len(times) // 2], name


def estimate_line(step_s: float, device: str, n_train: int, n_test: int, cfg, runs: int, jobs: int
                  ) -> Tuple[str, float]:
    """What one model and the whole table will take, from the measured step time; (text, total seconds)."""
    steps = -(-n_train // cfg.data.batch_size)
    evals = -(-cfg.optim.epochs // cfg.eval_every)
    per_model = step_s * (steps * cfg.optim.epochs + evals * n_test / cfg.data.batch_size / 3)  # eval ~ 1/3 step
    total = per_model * -(-runs // jobs)
    text = (f"estimated time on {device}: {step_s * 1000:.0f} ms per step of {cfg.data.batch_size} (measured), "
            f"{steps} steps per epoch x {cfg.optim.epochs} epochs = about {_hours(per_model)} per model; {runs} "
            f"models {jobs} at a time: about {_hours(total)} (model compute only, assuming parallel runs do not "
            f"slow each other; the input pipeline adds to it)")
    if "CPU" in device and per_model > 3600:
        text += ("\n  this is a CPU: hours per model. The paper's recipe is a GPU job; for a short CPU run "
                 "pass --epochs 10 --train-per-class 100 (or fewer), or --estimate to stop here")
    return text, total


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def format_paper_table(acc: Dict[str, float], datasets: Sequence[str]) -> str:
    """Table IV's layout, both halves side by side: each cell ours (the paper's); '-' where not run."""
    head = "| Training method | " + " | ".join(f"{DATASET_TITLES[d]} {v}" for d in datasets for v in VERSIONS) + " |"
    lines = [head, "|---" * (1 + len(datasets) * len(VERSIONS)) + "|"]
    for label, fixed_version, plan in ROWS:
        key = f"{plan}-{fixed_version}" if fixed_version else plan
        cells = []
        for d in datasets:
            for i, v in enumerate(VERSIONS):
                ours = acc.get(f"{d}/{plan}-{fixed_version or v}")
                cells.append(f"{ours:.2f} ({PAPER_TABLE4[d][key][i]:g})" if ours is not None else "-")
        lines.append(f"| {label.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    cells = []
    for d in datasets:
        for i, v in enumerate(VERSIONS):
            b, c = acc.get(f"{d}/stratify_b-{v}"), acc.get(f"{d}/stratify_c-{v}")
            paper = PAPER_TABLE4[d]["stratify_b"][i] - PAPER_TABLE4[d]["stratify_c"][i]
            cells.append(f"{b - c:+.2f} ({paper:+.2f})" if b is not None and c is not None else "-")
    lines.append("| Stratify B - Stratify C\\|A | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table4_images(specs: Sequence[str], out_dir: Path, overrides: Sequence[str] = (), jobs: int = 2,
                      results_md: Optional[str] = None, epochs: int = 0, train_per_class: Optional[int] = None,
                      test_per_class: Optional[int] = None, test_bias: str = "random",
                      estimate_only: bool = False, title_note: str = "") -> Dict[str, float]:
    """CIT Table IV from CIFAR images: per ``cifar10:DIR`` / ``cifar100:DIR`` spec, the original data
    and V1-V4 (written under out_dir/<dataset>/data/), its 13 runs at the paper's recipe
    (configs/table4_cifar.yaml; ``epochs`` shortens it, milestones kept at 1/2 and 3/4), the time
    estimated on this device before the runs start, and the table beside the paper's numbers."""
    from .errors import UsageError

    names = [s.partition(":")[0] for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"--images: each dataset once, got {', '.join(specs)}")
    recipe = (shortened_recipe(epochs) if epochs else []) + list(overrides)
    load_config(str(CIFAR_CONFIG), recipe)  # fail fast on a bad override
    print(f"CIT Table IV on {', '.join(specs)}: writing the synthetic versions", flush=True)
    runs: Dict[str, List[str]] = {}
    sizes = {}
    for spec in specs:
        name = spec.partition(":")[0]
        name, paths, sizes[name] = write_image_versions(spec, out_dir / name / "data", train_per_class,
                                                        test_per_class, test_bias)
        runs.update(plan_image_runs(name, paths, out_dir, recipe))
    first = next(iter(runs.values()))
    cfg = load_config(str(CIFAR_CONFIG), first)
    big = max(sizes, key=lambda d: sizes[d][0] * sizes[d][2])
    step_s, device = seconds_per_step(cfg, sizes[big][2], 40)
    total = 0.0
    for name, (n_train, n_test, _) in sizes.items():
        text, secs = estimate_line(step_s, device, n_train, n_test, cfg, 13, jobs)
        total += secs
        print(f"  {name}: {text}", flush=True)
    if estimate_only:
        print("--estimate: stopping before the runs", flush=True)
        return {}
    t0 = time.perf_counter()
    print(f"{len(runs)} runs, {jobs} at a time, results under {out_dir}", flush=True)
    acc = run_many(runs, jobs, config=CIFAR_CONFIG)
    minutes = (time.perf_counter() - t0) / 60
    datasets = [n for n in DATASET_TITLES if n in sizes]
    table = format_paper_table(acc, datasets)
    what = ", ".join(f"{DATASET_TITLES[d]}: {sizes[d][0]} train / {sizes[d][1]} test images" for d in datasets)
    recipe_text = (f"ResNet-20, SGD Nesterov, batch {cfg.data.batch_size}, {cfg.optim.epochs} epochs, "
                   f"lr {cfg.optim.lr} x{cfg.optim.gamma} at epochs {' and '.join(map(str, cfg.optim.milestones))}")
    print(f"\nTest accuracy (%) on the CIT benchmark from CIFAR images ({what}; {recipe_text}); "
          f"each cell: ours (the paper's):\n")
    print(table)
    print(f"\n{len(runs)} runs in {minutes:.1f} min")
    if results_md:
        prog = "cit-fast " if sys.argv[0].endswith("cit-fast") else f"python {sys.argv[0]} "
        cmd = prog + " ".join(sys.argv[1:])
        body = (f"{what}; {recipe_text}; test bias {test_bias}. Each cell: ours (the paper's).{title_note}\n\n"
                f"{table}\n\n{len(runs)} runs in {minutes:.1f} min on {device}")
        append_results(results_md, f"CIT Table IV from CIFAR-format images, {minutes:.1f} min", cmd, body)
    return acc

