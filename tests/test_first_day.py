"""A real user's first day, end to end: the README's "Your own photos, end to end" block, run line by
line as written there (tests/readme_blocks.py), then what it made checked.

Real photos (crops of the sample photos that ship inside scikit-image's wheel) in torchvision's
ImageFolder layout, no masks; started from the checkout with nothing on PATH but /usr/bin:/bin, as
a newcomer's shell (the block's first line puts the venv's bin on PATH; ``~`` is a scratch HOME):

    cit-fast masks photos/train ; cit-fast masks photos/test
    cit-fast train data.train=photos/train data.test=photos/test model.name=double_resnet18
                   model.init_single=resnet18.pth intervention.plan=stratify_c intervention.epochwise=true ...
    cit-fast eval --checkpoint runs/photos --table2 --bg-challenge
    cit-fast report runs/photos                      (index.html with Grad-CAM of the double-branch model)
    DS_ACCELERATOR=cpu NUM_GPUS=2 launchers/deepspeed.sh -- ... dist.zero_stage=2   (2 processes, ZeRO-2)
    cit-fast eval --checkpoint runs/photos_ds/checkpoints/ds_e0001_s000000

The README's two placeholders are filled in: ``/path/to/resnet18-f37072fd.pth`` with a file of
torchvision's ResNet-18 state dict holding random values (nothing downloads), ``/path/to/cit_fast``
with this checkout.
"""
from __future__ import annotations

import json

import pytest
import torch

from tests.readme_blocks import REPO, VENV_BIN, block_under, check_ran, run_block, user_env

pytestmark = [pytest.mark.integration, pytest.mark.distributed, pytest.mark.slow]

TIMEOUT = 840  # s, the whole walkthrough (DeepSpeed's 2-process run included), under pytest-timeout's 900


def test_first_day_own_photos_imagenet_weights_double_branch_deepspeed(tmp_path):
    if not (VENV_BIN / "cit-fast").is_file():
        pytest.skip(f"no {VENV_BIN}/cit-fast: the README's setup (make venv) makes it")
    block = block_under("Your own photos, end to end", "run by tests/test_first_day.py")
    import torchvision  # the ImageNet weight file of the README, with random values (nothing downloads)

    torch.manual_seed(0)
    weights = tmp_path / "downloads" / "resnet18-f37072fd.pth"
    weights.parent.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    home = tmp_path / "home"
    home.mkdir()
    ran = run_block(block, REPO, user_env(home, venv_on_path=False, extra={"MASTER_PORT": "29671"}),
                    tmp_path / "logs", TIMEOUT,
                    substitute={"/path/to/resnet18-f37072fd.pth": str(weights), "/path/to/cit_fast": str(REPO)})
    check_ran(ran, TIMEOUT)
    day = home / "cit-first-day"  # where the block's `cd ~/cit-first-day` went

    def command(start: str):  # what the one command of the block that starts so printed
        (r,) = [r for r in ran if r.command.text.startswith(start)]
        return r

    for split in ("train", "test"):
        r = command(f"cit-fast masks photos/{split}")
        assert "coverage" in r.out + r.err  # the quality summary
        assert (day / "photos" / f"{split}_masks").is_dir()  # ImageFolder layout: the sibling tree

    assert "classifier head re-initialised (1000 -> 5 classes)" in command("cit-fast train").out
    res = json.loads((day / "runs" / "photos" / "results.json").read_text())
    assert res["model"] == "double_resnet18" and res["plan"] == "stratify_c"

    ev = json.loads((day / "runs" / "photos" / "eval.json").read_text())
    assert ev["test"]["top1"] == pytest.approx(res["test_top1"])
    assert set(ev["table2"]) == {"obj_and_bg", "only_obj", "only_bg"}
    assert {"mixed_same", "mixed_rand", "bg_gap"} <= set(ev["bg_challenge"])

    page = (day / "runs" / "photos" / "report" / "index.html").read_text()
    assert "Grad-CAM: photos" in page and "CIT Table II" in page
    assert not list((day / "runs" / "photos" / "report").glob(".*.tmp"))

    ds = day / "runs" / "photos_ds" / "checkpoints" / "ds_e0001_s000000"
    assert (ds / "COMPLETE").is_file()
    assert json.loads((day / "runs" / "photos_ds" / "results.json").read_text())["world_size"] == 2
    last = ran[-1]
    assert last.command.text.startswith("cit-fast eval --checkpoint runs/photos_ds/checkpoints/ds_e0001_s000000")
    ds_eval = json.loads(last.out)
    assert ds_eval["model"] == "double_resnet18" and ds_eval["epoch"] == 1 and ds_eval["test"]["n"] == 30
