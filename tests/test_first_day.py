"""A real user's first day, end to end, typed as the README's "Your own photos" walkthrough types it.

Real photos (crops of the sample photos that ship inside scikit-image's wheel) in torchvision's
ImageFolder layout, no masks; run from a directory outside the repository, with the venv NOT on
PATH (the launchers find their Python themselves):

    cit-fast masks photos/train ; cit-fast masks photos/test
    cit-fast train data.train=photos/train data.test=photos/test model.name=double_resnet18
                   model.init_single=resnet18.pth intervention.plan=stratify_c intervention.epochwise=true ...
    cit-fast eval --checkpoint runs/photos --table2 --bg-challenge
    cit-fast report runs/photos                      (index.html with Grad-CAM of the double-branch model)
    DS_ACCELERATOR=cpu NUM_GPUS=2 launchers/deepspeed.sh -- ... dist.zero_stage=2   (2 processes, ZeRO-2)
    cit-fast eval --checkpoint runs/photos_ds/checkpoints/ds_e0001_s000000
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cit_fast.data.synthetic.sample_photos import write_photo_folder

pytestmark = [pytest.mark.integration, pytest.mark.distributed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CIT = str(BIN / "cit-fast")
TRAIN = ["data.train=photos/train", "data.test=photos/test", "data.image_size=32", "model.name=double_resnet18",
         "model.init_single=resnet18.pth", "intervention.plan=stratify_c", "intervention.epochwise=true",
         "optim.epochs=1", "optim.lr=0.01", "data.batch_size=16", "progress=false", "threads=1"]


def sh(cwd: Path, *cmd: str, env_extra=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """A command as a user types it in ``cwd``: the venv is not on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    env.update(env_extra or {})
    r = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def test_first_day_own_photos_imagenet_weights_double_branch_deepspeed(tmp_path):
    write_photo_folder(tmp_path / "photos" / "train", per_class=16, size=48, seed=0)
    write_photo_folder(tmp_path / "photos" / "test", per_class=6, size=48, seed=1)
    import torchvision  # the ImageNet weight file of the README, with random values (nothing downloads)

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")

    for split in ("train", "test"):
        r = sh(tmp_path, CIT, "masks", f"photos/{split}")
        assert "coverage" in r.stdout + r.stderr  # the quality summary
        assert (tmp_path / "photos" / f"{split}_masks").is_dir()  # ImageFolder layout: the sibling tree

    r = sh(tmp_path, CIT, "train", *TRAIN, "out_dir=runs/photos")
    assert "classifier head re-initialised (1000 -> 5 classes)" in r.stdout
    res = json.loads((tmp_path / "runs" / "photos" / "results.json").read_text())
    assert res["model"] == "double_resnet18" and res["plan"] == "stratify_c"

    r = sh(tmp_path, CIT, "eval", "--checkpoint", "runs/photos", "--table2", "--bg-challenge",
           "--out", "runs/photos/eval.json")
    ev = json.loads((tmp_path / "runs" / "photos" / "eval.json").read_text())
    assert ev["test"]["top1"] == pytest.approx(res["test_top1"])
    assert set(ev["table2"]) == {"obj_and_bg", "only_obj", "only_bg"}
    assert {"mixed_same", "mixed_rand", "bg_gap"} <= set(ev["bg_challenge"])

    sh(tmp_path, CIT, "report", "runs/photos")
    page = (tmp_path / "runs" / "photos" / "report" / "index.html").read_text()
    assert "Grad-CAM: photos" in page and "CIT Table II" in page
    assert not list((tmp_path / "runs" / "photos" / "report").glob(".*.tmp"))

    r = sh(tmp_path, str(REPO / "launchers" / "deepspeed.sh"), "--", *TRAIN, "dist.zero_stage=2",
           "out_dir=runs/photos_ds", env_extra={"DS_ACCELERATOR": "cpu", "NUM_GPUS": "2", "MASTER_PORT": "29671"},
           timeout=600)
    ds = tmp_path / "runs" / "photos_ds" / "checkpoints" / "ds_e0001_s000000"
    assert (ds / "COMPLETE").is_file()
    assert json.loads((tmp_path / "runs" / "photos_ds" / "results.json").read_text())["world_size"] == 2
    r = sh(tmp_path, CIT, "eval", "--checkpoint", str(ds.relative_to(tmp_path)), "--json")
    ds_eval = json.loads(r.stdout)
    assert ds_eval["model"] == "double_resnet18" and ds_eval["epoch"] == 1 and ds_eval["test"]["n"] == 30
