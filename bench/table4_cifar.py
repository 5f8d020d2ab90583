"""CIT Table IV (CIFAR-10 half) through the CIFAR path, on CIFAR-format files written from real photos.

    python bench/table4_cifar.py --results-md bench/RESULTS.md            # short recipe, ~20 min, 2 loaded cores
    python bench/table4_cifar.py --measure                                # one run only, to size the recipe

No CIFAR download is needed: the bench writes a ``cifar-10-batches-py`` directory in CIFAR's own
python format (protocol-2 pickles, five training batches, ``test_batch``, ``batches.meta``) whose ten
classes are ten photos bundled with scikit-image; each image is a 32x32 patch (a random square of
64-128 px, resized) of its photo. Training patches come from the left 3/4 of each photo, test patches
from the right 1/4, so a test patch is never a crop of a training region. Then it runs exactly what
a user runs on real CIFAR-10, ``cit-fast table4 --images cifar10:DIR`` (the CIFAR source and its
restricted unpickler, V1-V4 with the 4-pixel border of Table III, the 13 runs), with the paper's
recipe cut short: fewer images per class and fewer epochs (lr x0.1 at 1/2 and 3/4 of them).

The full paper recipe on real CIFAR-10 and CIFAR-100 is a GPU job:

    cit-fast table4 --images cifar10:data/cifar-10-batches-py --images cifar100:data/cifar-100-python \\
        --results-md bench/RESULTS.md

(it measures a few steps on its device and prints the estimate before it starts).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cit_fast.data.sources.cifar import write_cifar  # noqa: E402

# ten scikit-image sample photos (bundled in its wheel, nothing is downloaded): the ten classes
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina", "camera", "brick")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img[0] if name == "stereo_motorcycle" else img  # (left, right, disparity)
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def _patches(img: np.ndarray, n: int, x_range, rng) -> np.ndarray:
    """n 32x32 patches: random squares of 64-128 px with their left edge in x_range (fractions of the width)."""
    h, w = img.shape[:2]
    x0, x1 = int(x_range[0] * w), int(x_range[1] * w)
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        side = int(rng.integers(64, min(128, h, x1 - x0) + 1))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(x0, x1 - side + 1))
        crop = img[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((32, 32), Image.BILINEAR))
    return out


def write_photo_cifar(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """A cifar-10-batches-py directory of photo patches (10 classes)."""
    rng = np.random.default_rng(seed)
    tr, ltr, te, lte = [], [], [], []
    for c, name in enumerate(PHOTOS):
        img = _photo(name)
        tr.append(_patches(img, train_per_class, (0.0, 0.75), rng))
        te.append(_patches(img, test_per_class, (0.75, 1.0), rng))
        ltr += [c] * train_per_class
        lte += [c] * test_per_class
    # shuffled, as CIFAR's batches are
    p, q = rng.permutation(len(ltr)), rng.permutation(len(lte))
    splits = {"train": (np.concatenate(tr)[p], np.asarray(ltr)[p]), "test": (np.concatenate(te)[q], np.asarray(lte)[q])}
    return write_cifar(root, "cifar10-python", splits, [n.replace("stereo_", "") for n in PHOTOS])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs/bench_table4_cifar")
    p.add_argument("--train-per-class", type=int, default=120, help="written and used (CIFAR-10: 5000)")
    p.add_argument("--test-per-class", type=int, default=100, help="written and used (CIFAR-10: 1000)")
    p.add_argument("--epochs", type=int, default=8, help="the paper's 160, cut short")
    p.add_argument("--batch-size", type=int, default=32, help="the paper's 128; smaller for the few images here")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--test-bias", default="random", choices=("random", "misleading"))
    p.add_argument("--measure", action="store_true", help="time one run (Stratify C|A on V4) and stop")
    p.add_argument("--results-md", default="")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = p.parse_args()

    from cit_fast.table4 import CIFAR_CONFIG, run_many, run_table4_images, shortened_recipe, write_image_versions

    out = Path(args.out_dir)
    t0 = time.perf_counter()
    data = write_photo_cifar(out / "cifar-10-batches-py", args.train_per_class, args.test_per_class)
    print(f"wrote {data} (CIFAR-10 python format, {len(PHOTOS)} photo classes, {args.train_per_class} / "
          f"{args.test_per_class} patches per class) in {time.perf_counter() - t0:.1f} s", flush=True)
    overrides = [f"data.batch_size={args.batch_size}", f"eval_every={max(1, args.epochs // 3)}", *args.overrides]
    if args.measure:
        _, paths, _ = write_image_versions(f"cifar10:{data}", out / "cifar10" / "data", None, None, args.test_bias)
        tr, te = paths["V4"]
        run = [f"data.train={tr}", f"data.test={te}", "intervention.plan=stratify_c", f"out_dir={out / 'measure'}",
               "threads=1", *shortened_recipe(args.epochs), *overrides]
        t1 = time.perf_counter()
        acc = run_many({"stratify_c-V4": run}, 1, config=CIFAR_CONFIG)
        print(f"one run: {time.perf_counter() - t1:.0f} s, test top-1 {acc['stratify_c-V4']:.2f}%")
        return
    note = ("\n\nData: CIFAR-10 python files written by bench/table4_cifar.py from 32x32 patches of ten "
            "scikit-image sample photos (classes = photos; training patches from the left 3/4 of each photo, test "
            "patches from the right 1/4). Machine: 2-core CPU, shared with other jobs (loaded).")
    run_table4_images([f"cifar10:{data}"], out, overrides, jobs=args.jobs, results_md=args.results_md or None,
                      epochs=args.epochs, test_bias=args.test_bias, title_note=note)


if __name__ == "__main__":
    main()
