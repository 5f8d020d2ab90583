"""The CIT Table I configs (cit_fast/configs/table1_*.yaml): the paper's ImageNet recipe, and the whole
chain (baseline from scratch, then a row fine-tuned from it) running end to end on a tiny folder."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cit_fast
from cit_fast import checkpoint as ckpt
from cit_fast.config import load_config
from cit_fast.train.loop import main

CONFIGS = Path(cit_fast.__file__).parent / "configs"
ROWS = {"table1_baseline": ("resnet50", "none"), "table1_only_obj": ("objonly_resnet50", "none"),
        "table1_only_bg": ("bgonly_resnet50", "none"), "table1_obj_bg": ("double_resnet50", "none"),
        "table1_obj_all_bg": ("double_resnet50", "random"), "table1_cit": ("double_resnet50", "stratify_c")}


@pytest.mark.parametrize("row", ROWS)
def test_each_row_holds_the_papers_recipe(row):
    cfg = load_config(str(CONFIGS / f"{row}.yaml"))
    model, plan = ROWS[row]
    assert (cfg.model.name, cfg.intervention.plan) == (model, plan)
    d, o = cfg.data, cfg.optim
    assert (d.image_size, d.train_crop, d.eval_resize) == (224, "random_resized", 256)
    assert tuple(d.crop_scale) == (0.08, 1.0) and np.allclose(d.crop_ratio, (3 / 4, 4 / 3))
    assert np.allclose(d.mean, (0.485, 0.456, 0.406)) and np.allclose(d.std, (0.229, 0.224, 0.225))
    assert (o.momentum, o.weight_decay, o.gamma) == (0.9, 1e-4, 0.1)
    if row == "table1_baseline":  # torchvision's recipe: 0.1 per 256 images (8 x 32), x0.1 at 30 and 60
        assert (o.lr, o.epochs, list(o.milestones), o.nesterov, d.batch_size) == (0.1, 90, [30, 60], False, 32)
    else:  # the paper's fine-tuning: 128 images (8 x 16), lr 1e-3, 32 epochs, x0.1 after 16, Nesterov
        assert (o.lr, o.epochs, list(o.milestones), o.nesterov, d.batch_size) == (0.001, 32, [16], True, 16)
    if model.startswith("double"):
        assert cfg.model.freeze_low and cfg.model.shared_low


def _folder(root: Path, n_classes=3, per_class=6):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:52]
    for c in range(n_classes):
        for split, n in (("train", per_class), ("val", 2)):
            (root / split / "images" / f"n0{c}").mkdir(parents=True, exist_ok=True)
            (root / split / "masks" / f"n0{c}").mkdir(parents=True, exist_ok=True)
            for k in range(n):
                img = np.clip(rng.normal(60 * c + 40, 30, (40, 52, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / "images" / f"n0{c}" / f"{k}.jpg", quality=90)
                m = (((x - 26) ** 2 + (y - 20) ** 2) < rng.uniform(8, 15) ** 2).astype(np.uint8) * 255
                Image.fromarray(m).save(root / split / "masks" / f"n0{c}" / f"{k}.png")
    return root / "train", root / "val"


@pytest.mark.slow
def test_baseline_then_cit_row_end_to_end(tmp_path):
    """The chain the README gives, scaled down: sizes and epochs overridden, the geometry kept."""
    train, val = _folder(tmp_path)
    small = [f"data.train={train}", f"data.test={val}", "data.image_size=32", "data.eval_resize=36",
             "data.batch_size=6", "optim.epochs=1", "optim.milestones=[1]", "progress=false", "threads=1"]
    base = main(load_config(str(CONFIGS / "table1_baseline.yaml"),
                            [*small, "model.name=resnet18", f"out_dir={tmp_path / 'base'}"]))
    assert base["test_top1"] is not None
    init = ckpt.find_latest(tmp_path / "base" / "checkpoints")
    cit = main(load_config(str(CONFIGS / "table1_cit.yaml"),
                           [*small, "model.name=double_resnet18", f"model.init_single={init}",
                            f"out_dir={tmp_path / 'cit'}"]))
    assert cit["test_top1"] is not None
