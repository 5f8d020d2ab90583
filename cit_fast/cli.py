"""``cit-fast``: train | eval | cross-eval | synth | table4 | explain | report | masks | shard.

    cit-fast train --config FILE.yaml [key=value ...]
    cit-fast eval  --checkpoint runs/x/checkpoints/ckpt_e0030_s000000.pt [key=value ...]
    cit-fast cross-eval --checkpoint CKPT --mapping MAP.yaml data.source=nuswide data.test=DIR
    cit-fast synth --version V2 --out data/v2  (writes train.npz and test.npz; --images cifar10:DIR from CIFAR)
    cit-fast table4 --out bench/RESULTS.md    (the CIT paper's Table IV on the embedded data)
    cit-fast table4 --images cifar10:DIR --images cifar100:DIR  (Table IV from CIFAR, the paper's recipe)
    cit-fast shard data/train out/shards      (tar shards + index; train with data.train=out/shards)
    cit-fast masks data/birds                 (object masks for images/<class>/* or <class>/* that lack one;
                                               a CIFAR directory or an .npz: a masks sidecar beside it)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import __version__
from .config import SYNTHETIC_VERSIONS, TEST_BIAS
from .export import FORMATS as EXPORT_FORMATS
from .errors import UserError
from .shard import add_parser as add_shard_parser
from .utils import dist_info, is_main_process


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand whose optional positional may follow options (``masks SRC --method cam OUT``):
    plain argparse binds an optional positional to nothing at the first option and then rejects it."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cit-fast", description="Causal interventional training (CIT).")
    p.add_argument("--version", action="version", version=f"cit-fast {__version__}")
    # the DeepSpeed launcher inserts --local_rank=N after the module name (LOCAL_RANK is set too)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (single process, or under torchrun / deepspeed)",
                       epilog="Every config key, its default and its meaning: `cit-fast config`. The merged config "
                              "a run would use: `cit-fast config --config FILE key=value ...`. Exit codes: 0 done, "
                              "2 a user error (one line), 3 the run diverged (a non-finite loss or weights: it "
                              "stopped, naming the step and the last finite checkpoint), 130 interrupted.")
    t.add_argument("--config", help="YAML config file")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.05 intervention.plan=stratify_c")
    t.add_argument("--local_rank", "--local-rank", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    g = sub.add_parser("config", help="print the config as commented YAML: the defaults, or FILE + overrides merged")
    g.add_argument("--config", help="YAML config file to merge the overrides over")
    g.add_argument("overrides", nargs="*", help="key=value overrides")

    e = sub.add_parser("eval", help="evaluate a checkpoint on its config's test data")
    e.add_argument("--checkpoint", required=True,
                   help="a checkpoint file (ckpt_e*_s*.pt), a DeepSpeed checkpoint directory (ds_e*_s*) or a run "
                        "directory (its newest checkpoint)")
    e.add_argument("--out", help="write the JSON report here")
    e.add_argument("--pairs", default="", help="multi-label: biased pairs for Exclusive / Co-occur AP: 'b:c,b2:c2' "
                   "(class names or indices), a preset (coco-stuff, deepfashion: Singh et al.'s 20 pairs; pairs whose "
                   "classes the data lacks are skipped) or a pairs file (one b:c per line, or YAML)")
    e.add_argument("--top-k", type=int, default=3, help="multi-label: k of the top-k recall")
    e.add_argument("--bg-challenge", action="store_true",
                   help="also Mixed-Same / Mixed-Rand / Only-FG accuracy and BG-Gap (needs masks)")
    e.add_argument("--table2", action="store_true", help="double-branch models: CIT Table II (only object / only bg)")
    e.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    e.add_argument("overrides", nargs="*", help="key=value overrides of the checkpoint's config (e.g. data.test=...)")

    s = sub.add_parser("synth", help="write the synthetic CIT benchmark as arrays .npz files")
    s.add_argument("--version", default="V4", choices=SYNTHETIC_VERSIONS)
    s.add_argument("--out", required=True, help="output directory (train.npz, test.npz)")
    s.add_argument("--images", default="", metavar="DATASET:DIR",
                   help="build V1-V4 from real images: cifar10:DIR or cifar100:DIR (a CIFAR directory as "
                        "downloaded; 32x32 images + the 4-pixel border = 40x40) instead of the embedded shapes")
    s.add_argument("--train-per-class", type=int, default=None,
                   help="training samples per class (default: 400 embedded shapes; with --images all of them)")
    s.add_argument("--test-per-class", type=int, default=None,
                   help="test samples per class (default: 100 embedded shapes; with --images all of them)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--test-bias", default="random", choices=TEST_BIAS)
    s.add_argument("--preview", action="store_true", help="also write a PNG grid of training samples")

    b = sub.add_parser("table4", help="CIT Table IV: its shape on the embedded data, or from CIFAR images (--images)")
    b.add_argument("--out-dir", default="runs/table4")
    b.add_argument("--results-md", default="", help="append the table to this markdown file")
    b.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    b.add_argument("--seeds", type=int, default=1, help="run every cell for seeds 0..N-1 (seed and the data's seed, "
                   "paired across the methods) and print mean ± 95%% CI and the paired differences (B - baseline, "
                   "C|A - baseline, B - C|A) with their CIs")
    b.add_argument("--images", action="append", default=[], metavar="DATASET:DIR",
                   help="cifar10:DIR and/or cifar100:DIR (repeat): Table IV from those CIFAR images at the paper's "
                        "recipe (ResNet-20, 160 epochs, lr x0.1 at 80 and 120), with the paper's numbers beside ours")
    b.add_argument("--epochs", type=int, default=0, help="--images: shorten the recipe to this many epochs "
                   "(lr drops kept at 1/2 and 3/4)")
    b.add_argument("--train-per-class", type=int, default=None, help="--images: training images per class "
                   "(default: all)")
    b.add_argument("--test-per-class", type=int, default=None, help="--images: test images per class (default: all)")
    b.add_argument("--test-bias", default="random", choices=TEST_BIAS, help="--images: how B is drawn in test")
    b.add_argument("--estimate", action="store_true",
                   help="--images: write the data, print the time estimate for this device and stop")
    b.add_argument("overrides", nargs="*", help="key=value overrides for every run")

    x = sub.add_parser("explain", help="Grad-CAM maps of a checkpoint on chosen test images")
    x.add_argument("--checkpoint", required=True, help="a checkpoint file, DeepSpeed checkpoint directory or run directory")
    x.add_argument("--indices", type=int, nargs="+", default=None,
                   help="test sample indices (default: one image of each of up to 8 classes)")
    x.add_argument("--classes", type=int, nargs="+", help="class to explain per image (default: predicted)")
    x.add_argument("--out", required=True, help="output PNG (a directory with --diagnostics)")
    x.add_argument("--diagnostics", action="store_true",
                   help="multi-label causal_*/decoder_* models: instead of Grad-CAM, write OUT/embedding.png (label "
                   "features and confounders in 2-D) and OUT/confounder_attention.png (classes x confounders)")
    x.add_argument("--embedding", default="pca", choices=["pca", "tsne"], help="--diagnostics: 2-D embedding method")
    x.add_argument("--max-images", type=int, default=256, help="--diagnostics: test images used")
    x.add_argument("overrides", nargs="*", help="key=value overrides of the checkpoint's config")

    c = sub.add_parser("cross-eval", help="multi-label: evaluate a checkpoint on another dataset over the common classes")
    c.add_argument("--checkpoint", required=True)
    c.add_argument("--mapping", required=True, help="YAML/JSON {source class name: target class name}, or "
                   "coco-nuswide: the shipped MS-COCO <-> NUS-WIDE common classes, read in the direction of the "
                   "model's classes")
    c.add_argument("--out", help="write the JSON report here")
    c.add_argument("--source-too", action="store_true",
                   help="also the mAP of the same classes on the checkpoint's own test set")
    c.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    c.add_argument("overrides", nargs="*", help="key=value overrides selecting the target test data "
                   "(e.g. data.source=nuswide data.test=data/nuswide/test)")

    r = sub.add_parser("report", help="HTML report (curves, Table IV, evaluations, composite grids) of a run dir")
    r.add_argument("run_dir", help="a run's out_dir, or a directory of runs (e.g. a table4 sweep)")
    r.add_argument("--out", default="", help="output directory (default: RUN_DIR/report)")

    x2 = sub.add_parser("export", help="a trained model in a format other tools read (torchvision, safetensors, "
                                       "onnx, torchscript)",
                        epilog="Single-branch ImageNet ResNets export to all four formats; double-branch and "
                               "multi-label models to safetensors, onnx and torchscript. Each export is read back by "
                               "its consumer and compared with the checkpoint's model; <out>.json holds the classes "
                               "and the preprocessing.")
    x2.add_argument("run", help="a run directory, its checkpoints/ directory, or a checkpoint")
    x2.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    x2.add_argument("--out", default="", help="output file (default: RUN/export/<model>_e<epoch>.<ext>)")
    x2.add_argument("overrides", nargs="*", help="key=value overrides of the saved config (rarely needed)")

    m = sub.add_parser(
        "masks", help="compute object masks (the function g) for images that lack one",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Object masks (255 = content, 0 = context) for a folder dataset, in either layout:\n"
                    "  SRC/images/<class>/<name>.jpg -> SRC/masks/<class>/<name>.png (with OUT: OUT/masks/<class>/)\n"
                    "  SRC/<class>/<name>.jpg (torchvision ImageFolder) -> SRC_masks/<class>/<name>.png\n"
                    "      (with OUT: OUT/<class>/<name>.png, OUT being the masks tree itself)\n"
                    "Existing masks are kept (--overwrite recomputes them). Every run prints the coverage of its\n"
                    "masks, warns when it is degenerate and writes OUT/masks_montage.png (images with mask outlines).",
        epilog="examples:\n"
               "  cit-fast masks data/train                      # default method: grabcut (no weights)\n"
               "  cit-fast masks data/train --method cam --classifier resnet18-imagenet.pth\n"
               "  cit-fast masks data/train --method cam --classifier runs/r18/checkpoints/ckpt_e0030_s000000.pt")
    m.add_argument("src", help="dataset root: SRC/images/<class>/ or SRC/<class>/ (ImageFolder); or a CIFAR "
                   "directory (masks to SRC/masks_train.npz, SRC/masks_test.npz) or an .npz (masks to "
                   "FILE.masks.npz beside it): sidecars that training reads with the data")
    m.add_argument("out", nargs="?", default=None,
                   help="where masks go (see above; default: the layout's own masks tree)")
    m.add_argument("--method", default=None, metavar="METHOD",
                   help="grabcut (default: robust-background saliency refined with GrabCut), rbd, spectral, "
                        "fine_grained (classical saliency, no weights), or cam "
                        "(Grad-CAM of --classifier refined with GrabCut)")
    m.add_argument("--classifier", default="", metavar="FILE",
                   help="--method cam: a torchvision ResNet-18/34/50 state dict or a cit_fast checkpoint of a "
                        "single-branch model (local file; implies --method cam)")
    m.add_argument("--model", default="", help="local TorchScript file or state dict of a segmentation model")
    m.add_argument("--arch", default="", help="architecture of a --model state dict (torchvision segmentation), "
                   "or of a --classifier state dict (resnet18/34/50; read from its keys when omitted)")
    m.add_argument("--num-classes", type=int, default=0, help="classes of a --model state dict (0: inferred)")
    m.add_argument("--input-size", type=int, default=320, help="pixels (square) the --model sees")
    m.add_argument("--threshold", type=float, default=0.5, help="foreground probability of a 1-channel --model")
    m.add_argument("--device", default="", help="--model / --classifier device (default: cuda if available)")
    m.add_argument("--montage", default="", metavar="PNG", help="montage path (default: OUT/masks_montage.png)")
    m.add_argument("--overwrite", action="store_true", help="recompute masks that already exist")
    m.add_argument("--workers", type=int, default=1,
                   help="processes computing masks on this machine, one thread each: one per core (folder and shard "
                        "sources; the same masks as one). "
                        "Under torchrun / SLURM each rank takes its part and runs this many (launchers/masks_*)")
    m.add_argument("--batch-size", type=int, default=1, help="--model: images per forward pass (decoded by "
                   "--workers threads)")
    m.__class__ = _IntermixedParser  # SRC [OUT] before or after the options
    m.add_argument("--no-progress", action="store_true")
    add_shard_parser(sub).__class__ = _IntermixedParser  # key=value overrides after the options too
    return p


def _cmd_train(args) -> int:
    from .config import load_config
    from .train.divergence import Diverged
    from .train.loop import main
    from .utils import print0

    cfg = load_config(args.config, args.overrides)
    args.out_dir = cfg.out_dir  # for the Ctrl-C message
    try:
        result = main(cfg)
    except Diverged as e:  # every rank stops together; rank 0 says where
        print0(f"cit-fast train: stopped: {e}", file=sys.stderr)
        return Diverged.exit_code
    keys = ("test_mAP", "test_top1", "test_top5", "seconds") if result.get("test_mAP") is not None else \
        ("test_top1", "test_top5", "seconds")
    print0(json.dumps({k: result.get(k) for k in keys}, indent=None))
    return 0


def _cmd_config(args) -> int:
    from .config import config_yaml, load_config

    cfg = load_config(args.config, args.overrides) if (args.config or args.overrides) else None
    print(config_yaml(cfg), end="")
    return 0


def _cmd_eval(args) -> int:
    from .eval.commands import run_eval
    from .eval.tables import format_report

    report = run_eval(args.checkpoint, args.overrides, args.out, pairs=args.pairs, bg_challenge=args.bg_challenge,
                      table2=args.table2, top_k=args.top_k)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_cross_eval(args) -> int:
    from .eval.cross_dataset import format_cross_report, run_cross_eval

    report = run_cross_eval(args.checkpoint, args.mapping, args.overrides, args.out, source_too=args.source_too)
    print(json.dumps(report, indent=2) if args.json else format_cross_report(report))
    return 0


def _cmd_synth(args) -> int:
    from .data.synthetic.benchmark import load_source_images, make_cit_benchmark, save_arrays
    from .errors import UsageError

    for flag in ("train_per_class", "test_per_class"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f"--{flag.replace('_', '-')}: expected a positive number, got {value}")
    if args.images:
        sets = make_cit_benchmark(args.version, args.train_per_class, args.test_per_class, args.seed, args.test_bias,
                                  images=load_source_images(args.images))
    else:
        sets = make_cit_benchmark(args.version, args.train_per_class or 400, args.test_per_class or 100, args.seed,
                                  args.test_bias)
    out = Path(args.out)
    for split, s in sets.items():
        save_arrays(s, str(out / f"{split}.npz"))
        print(f"wrote {out / f'{split}.npz'}: {len(s)} samples, {s.num_classes} classes, "
              f"images {tuple(s.images.shape[1:])}")
    if args.preview:
        from .data.synthetic.benchmark import save_preview

        save_preview(sets["train"], out / "preview.png")
        print(f"wrote {out / 'preview.png'}")
    return 0


def _cmd_table4(args) -> int:
    from .errors import UsageError
    from .table4 import run_table4, run_table4_images

    if args.jobs < 1:
        raise UsageError(f"--jobs: expected at least 1, got {args.jobs}")
    if args.images and args.seeds != 1:
        raise UsageError(f"--seeds: for the embedded table (without --images); got --seeds {args.seeds} with --images")
    if args.images:
        for flag in ("epochs", "train_per_class", "test_per_class"):
            value = getattr(args, flag)
            if value is not None and value < (0 if flag == "epochs" else 1):
                raise UsageError(f"--{flag.replace('_', '-')}: expected a positive number, got {value}")
        run_table4_images(args.images, Path(args.out_dir), args.overrides, jobs=args.jobs,
                          results_md=args.results_md or None, epochs=args.epochs,
                          train_per_class=args.train_per_class, test_per_class=args.test_per_class,
                          test_bias=args.test_bias, estimate_only=args.estimate)
        return 0
    used = [f for f, on in (("--epochs", args.epochs), ("--train-per-class", args.train_per_class is not None),
                            ("--test-per-class", args.test_per_class is not None),
                            ("--test-bias", args.test_bias != "random"), ("--estimate", args.estimate)) if on]
    if used:
        raise UsageError(f"{', '.join(used)}: for Table IV from CIFAR images (--images cifar10:DIR); the embedded "
                         f"table takes overrides instead (optim.epochs=N data.synthetic_train_per_class=N "
                         f"data.synthetic_test_bias=...)")
    run_table4(Path(args.out_dir), args.overrides, jobs=args.jobs, results_md=args.results_md or None,
               seeds=args.seeds)
    return 0


def _cmd_masks(args) -> int:
    from .data.masks.arrays import array_targets, generate_array_masks, is_array_source
    from .data.masks.job import run_masks
    from .data.masks.outputs import mask_layout
    from .data.masks.saliency import DEFAULT_METHOD, make_masker
    from .data.sources.shards import is_shard_dir
    from .errors import UsageError

    arrays = is_array_source(args.src)
    if arrays:  # a wrong SRC is said before any model is loaded
        if args.out:
            raise UsageError(f"masks: OUT is for folder datasets; the masks of {args.src} go to a sidecar beside it "
                             f"(a CIFAR directory: DIR/masks_<split>.npz; FILE.npz: FILE.masks.npz)")
        array_targets(args.src)
        if args.workers > 1 or args.batch_size > 1 or dist_info()[1] > 1:
            raise UsageError(f"masks: {args.src} is an array source, masked by one process; --workers, --batch-size "
                             f"and torchrun / SLURM ranks are for folder and shard sources")
    elif is_shard_dir(args.src):
        if args.out:
            raise UsageError(f"masks: the masks of the shard set {args.src} go beside its image shards "
                             f"({args.src}/masks/); leave OUT out")
    else:
        mask_layout(args.src, args.out)
    if args.workers < 1 or args.batch_size < 1:
        raise UsageError(f"--workers/--batch-size: expected at least 1, got {args.workers}/{args.batch_size}")
    if args.batch_size > 1 and not args.model:
        raise UsageError("--batch-size batches a --model's forward passes; saliency and --method cam go image by "
                         "image (use --workers)")
    method = args.method or ("cam" if args.classifier else DEFAULT_METHOD)
    _, world, local = dist_info()
    if not args.device and world > 1 and (args.model or args.classifier):
        import torch

        if torch.cuda.is_available():  # one GPU per rank of a node (a SLURM task may see only its own)
            args.device = f"cuda:{local % torch.cuda.device_count()}"
    if args.classifier and method != "cam":
        raise UsageError(f"--classifier is for --method cam (got --method {method})")
    if args.model and args.method:
        raise UsageError("--model and --method exclude each other: --model masks with that model")
    if method == "cam":
        from .eval.cam import make_cam_masker

        masker = make_cam_masker(args.classifier, args.arch, args.device)
    else:
        masker = make_masker(method, args.model, args.arch, args.num_classes, args.input_size,
                             args.threshold, args.device)
    if hasattr(masker, "describe"):
        print(masker.describe(), flush=True)
    if arrays:
        report = generate_array_masks(args.src, masker, overwrite=args.overwrite,
                                      progress=False if args.no_progress else None, montage=args.montage)
        print("\n".join(report.lines()))
        if report.sidecars:
            print("sidecars (training reads them with the data): " + ", ".join(map(str, report.sidecars)))
        return 0
    report = run_masks(args.src, args.out, masker, workers=args.workers, batch_size=args.batch_size,
                       overwrite=args.overwrite, progress=False if args.no_progress else None, montage=args.montage)
    if dist_info()[0] == 0:
        print("\n".join(report.lines()))
    else:
        print(f"rank {dist_info()[0]}: {report.summary()} (rank 0 prints the merged summary)")
    return 0


def _cmd_shard(args) -> int:
    from .shard import run_shard

    lines = run_shard(args.src, args.out, shard_size=args.shard_size, samples_per_shard=args.samples_per_shard,
                      split=args.split, verify=args.verify, overwrite=args.overwrite,
                      progress=False if args.no_progress else None, overrides=args.overrides)
    print("\n".join(lines))
    return 0


def _cmd_explain(args) -> int:
    from PIL import Image

    from .errors import UsageError
    from .eval.run import load_run
    from .eval.explain import explain_images
    from .utils import atomic_path

    if args.diagnostics:
        from .eval.diagnostics import run_diagnostics

        paths = run_diagnostics(args.checkpoint, args.out, args.overrides, args.embedding, args.max_images)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    if args.classes and args.indices and len(args.classes) != len(args.indices):
        raise UsageError(f"--classes: expected one class per index ({len(args.indices)}), got {len(args.classes)}")
    run = load_run(args.checkpoint, args.overrides)
    if args.classes:
        bad = [c for c in args.classes if not 0 <= c < len(run.classes)]
        if bad:
            raise UsageError(f"--classes: {bad[:5]} out of range; the model has {len(run.classes)} classes")
    grid = explain_images(run, args.indices, args.classes)
    scale = max(1, 128 // grid.shape[0] * 2)
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    with atomic_path(Path(args.out)) as tmp:
        img.save(tmp, format="PNG")
    rows = "content / its Grad-CAM / context / its Grad-CAM" if run.task == "double" else "images / Grad-CAM"
    print(f"wrote {args.out}: rows {rows}")
    return 0


def _cmd_report(args) -> int:
    from .report import build_report

    path = build_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(f"wrote {path}")
    return 0


def _cmd_export(args) -> int:
    from .export import export_run

    print("\n".join(export_run(args.run, args.format, args.out, args.overrides).lines()))
    return 0


def _one_line(e: BaseException) -> str:
    """A user error's message; raised inside a DataLoader worker it arrives wrapped with the worker's
    traceback as text: keep the original message only."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return text


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"explain": _cmd_explain, "report": _cmd_report, "train": _cmd_train, "eval": _cmd_eval,
                "cross-eval": _cmd_cross_eval, "synth": _cmd_synth, "table4": _cmd_table4, "masks": _cmd_masks,
                "config": _cmd_config, "export": _cmd_export, "shard": _cmd_shard}
    try:
        return handlers[args.command](args)
    except UserError as e:  # the user's input: one line (our own bugs keep their traceback)
        rank = dist_info()[0]
        if rank != 0:
            # every rank reads the same input and meets the same error: let rank 0 say it (the launcher
            # then stops this rank); speak only for an error of this rank alone
            time.sleep(10)
        print(f"cit-fast {args.command}: error{f' (rank {rank})' if rank else ''}: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if is_main_process():  # one line per job, not per rank
            print(f"cit-fast {args.command}: interrupted" + _interrupted_note(args), file=sys.stderr, flush=True)
        return 130


def _interrupted_note(args) -> str:
    """Where a stopped training run can continue from."""
    if args.command != "train" or not getattr(args, "out_dir", None):
        return ""
    from .checkpoint import find_latest

    latest = find_latest(Path(args.out_dir) / "checkpoints")
    if latest is None:
        return f"; no complete checkpoint in {args.out_dir}/checkpoints yet"
    return f"; last complete checkpoint: {latest} (continue with resume=auto)"


if __name__ == "__main__":
    sys.exit(main())
