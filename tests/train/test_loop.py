import json

import pytest
import torch

from cit_fast import checkpoint as ckpt
from cit_fast.config import load_config
from cit_fast.train.loop import main

SMALL = ["model.name=resnet8", "data.synthetic_train_per_class=24", "data.synthetic_test_per_class=8",
         "data.batch_size=32", "optim.epochs=2", "optim.milestones=[1]", "progress=false", "threads=1"]


def cfg_for(tmp_path, *extra):
    return load_config(None, [*SMALL, f"out_dir={tmp_path}", *extra])


@pytest.mark.slow
def test_learns_the_visible_context(tmp_path):
    """V1: the border colour (common sense A) tells the class; a short run must pick it up."""
    cfg = load_config(None, ["model.name=resnet8", "data.synthetic_version=V1", "data.synthetic_train_per_class=60",
                             "data.synthetic_test_per_class=20", "data.batch_size=32", "optim.epochs=4",
                             "optim.schedule=cosine", "optim.lr=0.1", "progress=false", f"out_dir={tmp_path}"])
    res = main(cfg)
    assert res["test_top1"] > 80.0, res["history"]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["test_top1"] == res["test_top1"] and report["config"]["data"]["synthetic_version"] == "V1"
    assert (tmp_path / "config.yaml").is_file()
    assert len(ckpt.list_checkpoints(tmp_path / "checkpoints")) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("plan, epochwise", [("stratify_c", False), ("stratify_b", True)])
def test_resume_mid_epoch_is_bitwise_exact(tmp_path, plan, epochwise):
    extra = [f"intervention.plan={plan}", f"intervention.epochwise={epochwise}", "data.crop_padding=2",
             "data.synthetic_version=V2"]
    full = main(cfg_for(tmp_path / "full", *extra))
    steps = [x for e in full["history"] for x in e["step_losses"]]
    k = 5  # stop inside epoch 1 (7 steps per epoch)
    part = main(cfg_for(tmp_path / "part", *extra), stop_after_steps=k)
    assert part["stopped_at_step"] == k
    resumed = main(cfg_for(tmp_path / "part", *extra, "resume=auto"))
    after = [x for e in resumed["history"] for x in e["step_losses"]]
    assert after[-(len(steps) - k):] == steps[k:]  # bitwise equal on the CPU
    assert resumed["test_top1"] == full["test_top1"]


def test_half_written_checkpoint_is_never_loaded(tmp_path, monkeypatch):
    d = tmp_path / "ck"
    good = ckpt.save_checkpoint({"model": {}, "epoch": 1, "step_in_epoch": 0}, d, 1, 0)

    def crash(obj, f, *a, **k):  # (checkpoints are written through a file object)
        f.write(b"partial")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"model": {}, "epoch": 2, "step_in_epoch": 0}, d, 2, 0)
    assert ckpt.find_latest(d) == good
    assert [p.name for p in d.iterdir()] == [good.name]  # the temporary file is gone too
    (d / ".ckpt_e0003_s000000.pt.abc.tmp").write_bytes(b"leftover of a killed process")
    assert ckpt.find_latest(d) == good


def test_checkpoint_rotation_and_bad_files(tmp_path):
    for e in range(5):
        ckpt.save_checkpoint({"model": {}, "epoch": e, "step_in_epoch": 0}, tmp_path, e, 0, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt_e0003_s000000.pt", "ckpt_e0004_s000000.pt"]
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="x.pt: cannot be read"):
        ckpt.load_checkpoint(bad)
    with pytest.raises(ValueError, match="missing.pt: not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.slow
def test_eval_every_skips_epochs_but_always_evaluates_the_last(tmp_path):
    res = main(cfg_for(tmp_path, "optim.epochs=3", "eval_every=2"))
    evaluated = [h["epoch"] for h in res["history"] if "test_top1" in h]
    assert evaluated == [2, 3] and res["test_top1"] is not None
