"""Checkpoints a plain ``torch.load`` opens, and writes that fail (disk full, I/O error)."""
import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cit_fast import checkpoint as ckpt
from cit_fast.config import load_config
from cit_fast.errors import CheckpointError
from cit_fast.train.loop import main

# 2 epochs of 3 steps (72 samples, batch 24): a checkpoint every 2 steps inside an epoch
SMALL = ["model.name=resnet8", "data.synthetic_train_per_class=9", "data.synthetic_test_per_class=2",
         "data.batch_size=24", "optim.epochs=2", "progress=false", "threads=1", "checkpoint_every_steps=2",
         "intervention.plan=stratify_c", "keep_checkpoints=10"]


def cfg_for(out, *extra):
    return load_config(None, [*SMALL, f"out_dir={out}", *extra])


def losses(result):
    return [x for e in result["history"] for x in e["step_losses"]]


def test_checkpoint_opens_with_torch_load_defaults(tmp_path):
    main(cfg_for(tmp_path), stop_after_steps=2)
    path = ckpt.find_latest(tmp_path / "checkpoints")
    state = torch.load(path)  # weights_only=True, no allow-list
    rng = state["rng"][0]
    assert torch.is_tensor(rng["torch"]) and isinstance(rng["numpy"]["key"], list)
    assert state["epoch"] == 0 and state["step_in_epoch"] == 2


def _as_old_style(path):
    """Rewrite a checkpoint as cit_fast wrote them before: numpy's RNG state as its own tuple with
    an ndarray (which torch.load's safe default refuses)."""
    state = torch.load(path)
    for r in state["rng"]:
        n = r["numpy"]
        r["numpy"] = (n["bit_generator"], np.array(n["key"], np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    torch.save(state, path)
    with pytest.raises(Exception, match="numpy"):
        torch.load(path)


def test_old_style_checkpoint_still_resumes_exactly(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    main(cfg_for(new), stop_after_steps=4)  # mid-epoch 2 (step 1 of 3)
    shutil.copytree(new, old)
    _as_old_style(ckpt.find_latest(old / "checkpoints"))
    a = main(cfg_for(new, "resume=auto"))
    b = main(cfg_for(old, "resume=auto"))
    assert losses(a) == losses(b) and len(losses(a)) > 0
    assert a["test_top1"] == b["test_top1"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_failed_checkpoint_write_stops_with_one_line_and_resume_continues(tmp_path, monkeypatch, code):
    full = main(cfg_for(tmp_path / "full"))
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint (epoch 2, step 2): half a file, then the disk is full
            f.write(b"half a checkpoint")
            raise OSError(code, os.strerror(code))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError) as e:
        main(cfg_for(out))
    last = out / "checkpoints" / "ckpt_e0001_s000000.pt"  # the end of epoch 1
    msg = str(e.value)
    assert "\n" not in msg and "ckpt_e0001_s000002.pt: could not be written" in msg
    assert f"the last complete checkpoint is {last}" in msg
    assert errno.errorcode[code] in msg and "resume=auto" in msg
    # nothing half-written: the two complete checkpoints before it, no temporary file
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt_e0000_s000002.pt", last.name]
    monkeypatch.setattr(torch, "save", real_save)
    resumed = main(cfg_for(out, "resume=auto"))
    # epoch 1 from the checkpoint's history, epoch 2 trained again: as the uninterrupted run
    assert losses(resumed) == losses(full) and resumed["test_top1"] == full["test_top1"]


def test_save_checkpoint_keeps_the_directory_as_it_was(tmp_path, monkeypatch):
    d = tmp_path / "ck"
    good = ckpt.save_checkpoint({"model": {}, "epoch": 1, "step_in_epoch": 0}, d, 1, 0, keep=1)

    def fsync_fails(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(CheckpointError, match=r"ckpt_e0002_s000000.pt: could not be written \(EIO"):
        ckpt.save_checkpoint({"model": {}, "epoch": 2, "step_in_epoch": 0}, d, 2, 0, keep=1)
    assert [p.name for p in d.iterdir()] == [good.name]  # no temporary file; the old one not rotated away


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_torch_reports_a_full_disk_as_oserror_through_a_file_object():
    """What write_torch relies on: torch.save into a Python file object raises the OSError."""
    with pytest.raises(OSError) as e, open("/dev/full", "wb") as f:
        torch.save({"x": torch.zeros(100_000)}, f)
    assert e.value.errno == errno.ENOSPC


@pytest.mark.slow
def test_deepspeed_checkpoint_write_fault_removes_the_tag_and_resume_continues(tmp_path, monkeypatch):
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    ds = ["dist.engine=deepspeed", "dist.zero_stage=1", "optim.epochs=1"]
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):  # DeepSpeed writes its files with torch.save(path)
        if isinstance(f, (str, os.PathLike)) and "ds_e0000_s000002" in str(f):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError) as e:
        main(cfg_for(out, *ds, "checkpoint_every_steps=1"))
    msg = str(e.value)
    assert calls["n"] and "\n" not in msg and "ds_e0000_s000002: could not be written (ENOSPC" in msg
    assert "the last complete checkpoint is " in msg and msg.split("checkpoint is ")[1].startswith(str(out))
    names = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert names == ["ds_e0000_s000001"]  # the failed tag is gone; the complete one stays
    # resume=auto in a fresh process (DeepSpeed keeps the first run's process group in its own state)
    r = subprocess.run([sys.executable, "-m", "cit_fast.cli", "train", *SMALL, *ds, "checkpoint_every_steps=1",
                        "resume=auto", f"out_dir={out}"], capture_output=True, text=True, timeout=600,
                       env={**{k: v for k, v in os.environ.items()  # (the first run's loopback group)
                               if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")},
                            "DS_ACCELERATOR": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "ds_e0000_s000001" in r.stdout
