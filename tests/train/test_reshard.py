"""DeepSpeed runs resume on another world size (ZeRO 1-3, SGD and AdamW): every parameter, its
optimizer state and the schedule come back exactly as they were gathered when the checkpoint was
written (train/reshard.py), and training goes on."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
PROBE = str(Path(__file__).with_name("reshard_probe.py"))
COMMON = ["dist.engine=deepspeed", "model.name=resnet8", "data.synthetic_train_per_class=8",
          "data.synthetic_test_per_class=2", "data.batch_size=4", "max_steps_per_epoch=3", "progress=false",
          "threads=1", "optim.weight_decay=0.001"]


def launch(nproc: int, args, env_extra=None, module=True):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", **(env_extra or {})}
    target = ["-m", "cit_fast.cli", "train"] if module else [PROBE]
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", str(nproc), *target, *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


@pytest.mark.parametrize("zero, optimizer, before, after", [(1, "sgd", 2, 1), (2, "adamw", 1, 2),
                                                             (3, "sgd", 1, 2), (3, "adamw", 2, 1)])
def test_deepspeed_resumes_on_another_world_size(tmp_path, zero, optimizer, before, after):
    opt = [f"optim.optimizer={optimizer}"] + (["optim.lr=0.001"] if optimizer == "adamw" else [])
    args = [*COMMON, f"dist.zero_stage={zero}", *opt, f"out_dir={tmp_path}"]
    launch(before, [*args, "optim.epochs=1"])
    tag = tmp_path / "checkpoints" / "ds_e0001_s000000"
    saved = torch.load(tag / "consolidated.pt", weights_only=True)
    assert saved["world_size"] == before and saved["state"], "the optimizer state was gathered"
    probe = tmp_path / "probe.pt"
    r = launch(after, [*args, "optim.epochs=2", f"resume={tag}"], {"PROBE_OUT": str(probe)}, module=False)
    assert f"resumed a {before}-process DeepSpeed checkpoint on {after} process(es)" in r.stdout
    got = torch.load(probe, weights_only=True)
    assert got["world_size"] == after
    for name, value in saved["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=0, atol=0, msg=name)
    keys = {"sgd": {"momentum_buffer"}, "adamw": {"exp_avg", "exp_avg_sq"}}[optimizer]
    for name, states in saved["state"].items():
        assert set(states) == keys
        for key, value in states.items():
            torch.testing.assert_close(got["state"][name][key], value, rtol=0, atol=0, msg=f"{name}.{key}")
    assert {k: float(v) for k, v in got["scalars"].items()} == {k: float(v) for k, v in saved["scalars"].items()}
    assert got["scheduler"]["last_epoch"] == saved["scheduler"]["last_epoch"] == 3
    assert [g["lr"] for g in got["param_groups"]] == [g["lr"] for g in saved["param_groups"]]
    hist = json.loads((tmp_path / "results.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2] and (tmp_path / "checkpoints" / "ds_e0002_s000000" / "COMPLETE").exists()
