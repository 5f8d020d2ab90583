import json
import subprocess
import sys

import numpy as np
import pytest

from cit_fast.cli import main
from cit_fast.data.sources import load_arrays

TRAIN = ["model.name=resnet8", "optim.epochs=1", "data.batch_size=8", "progress=false", "threads=1"]


def test_synth_writes_loadable_arrays(tmp_path):
    assert main(["synth", "--version", "V3", "--out", str(tmp_path), "--train-per-class", "3",
                 "--test-per-class", "2", "--preview"]) == 0
    tr = load_arrays(str(tmp_path / "train.npz"))
    te = load_arrays(str(tmp_path / "test.npz"), classes=tr.classes)
    assert len(tr) == 30 and len(te) == 20 and tr.images.shape[1:] == (32, 32, 3)
    assert len(set(tr.strata.tolist())) == 2  # V3: A = brightness(2)
    assert (tmp_path / "preview.png").stat().st_size > 1000


@pytest.mark.parametrize("source", ["arrays", "folder", "manifest"])
def test_train_on_user_data_writes_report(tmp_path, source, folder_dataset, manifest_dataset, capsys):
    if source == "arrays":
        main(["synth", "--version", "V2", "--out", str(tmp_path / "d"), "--train-per-class", "2",
              "--test-per-class", "1"])
        paths = [f"data.train={tmp_path / 'd' / 'train.npz'}", f"data.test={tmp_path / 'd' / 'test.npz'}"]
    elif source == "folder":
        paths = [f"data.train={folder_dataset}", f"data.test={folder_dataset}", "data.image_size=16"]
    else:
        paths = [f"data.train={manifest_dataset[0]}", f"data.test={manifest_dataset[1]}", "data.image_size=16"]
    out = tmp_path / "run"
    rc = main(["train", f"data.source={source}", *paths, "intervention.plan=stratify_c", f"out_dir={out}", *TRAIN])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    assert report["plan"] == "stratify_c" and report["test_top1"] == report["history"][-1]["test_top1"]
    ck = sorted((out / "checkpoints").glob("ckpt_*.pt"))[-1]
    assert main(["eval", "--checkpoint", str(ck), "--out", str(tmp_path / "eval.json")]) == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["test"]["top1"] == pytest.approx(report["test_top1"])


def test_bad_config_is_a_clear_error(capsys):
    assert main(["train", "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err


def test_bad_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "data.source=arrays", f"data.train={tmp_path / 'none.npz'}", "data.test=x"]) == 2
    assert "none.npz: not found" in capsys.readouterr().err


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "cit_fast.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "synth" in r.stdout
