"""The mistakes a user makes, each one clear line from the CLI (exit 2); our own bugs keep their traceback.

One test per failure seen on a real user's first day: the message is asserted, not only the exit
code.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cit_fast import checkpoint as ckpt
from cit_fast.cli import main as cli
from cit_fast.config import load_config
from cit_fast.train.loop import Trainer, main as train

from .conftest import write_arrays

FAST = ["model.name=resnet8", "optim.epochs=1", "data.batch_size=4", "progress=false", "threads=1"]
CIT = str(Path(sys.executable).parent / "cit-fast")


def one_line_error(capsys, *args) -> str:
    assert cli(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def write_manifest(root: Path, rows, header="image,label", name="train.csv") -> Path:
    rng = np.random.default_rng(0)
    lines = [header]
    for k, row in enumerate(rows):
        img = root / f"img{k}.png"
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(img)
        lines.append(",".join([img.name, *map(str, row)]))
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


# -- silent no-ops ------------------------------------------------------------------------------


def test_plan_on_data_without_masks_is_an_error_unless_opted_in(tmp_path, capsys):
    m = write_manifest(tmp_path, [[c] for c in (0, 1, 0, 1, 0, 1, 0, 1)])
    args = ["train", f"data.train={m}", f"data.test={m}", "intervention.plan=stratify_c", f"out_dir={tmp_path / 'r'}",
            *FAST]
    err = one_line_error(capsys, *args)
    assert "intervention.plan=stratify_c needs object masks" in err and "cit-fast masks" in err
    assert "data.missing_masks=full" in err
    assert cli(args + ["data.missing_masks=full"]) == 0  # the explicit opt-in trains
    assert cli(["train", f"data.train={m}", f"data.test={m}", f"out_dir={tmp_path / 'n'}", *FAST]) == 0  # plan none


def test_double_branch_model_needs_masks(tmp_path, capsys):
    m = write_manifest(tmp_path, [[c] for c in (0, 1, 0, 1)])
    err = one_line_error(capsys, "train", f"data.train={m}", f"data.test={m}", "model.name=double_resnet8",
                         f"out_dir={tmp_path / 'r'}", *FAST[1:])
    assert "the double-branch model double_resnet8 (content and context) needs object masks" in err


def test_source_is_inferred_from_the_path_never_silently_synthetic(tmp_path, folder_dataset, arrays_file):
    cfg = load_config(None, [f"data.train={folder_dataset}", f"data.test={folder_dataset}"])
    assert cfg.data.source == "folder"
    assert load_config(None, [f"data.train={arrays_file}"]).data.source == "arrays"
    assert load_config(None, []).data.source == "synthetic"  # no data given: the embedded benchmark


def test_source_mismatch_and_typo_paths(tmp_path, capsys, folder_dataset):
    err = one_line_error(capsys, "train", "data.source=arrays", f"data.train={folder_dataset}")
    assert "data.source=arrays, but data.train=" in err and "looks like data.source=folder" in err
    err = one_line_error(capsys, "train", f"data.train={tmp_path / 'data' / 'trian'}")
    assert err.endswith("trian: not found")
    err = one_line_error(capsys, "train", "data.source=synthetic", f"data.train={folder_dataset}")
    assert "data.source=synthetic generates its own data" in err


def test_mixed_string_and_integer_labels_name_the_row(tmp_path, capsys):
    m = write_manifest(tmp_path, [["cat"], ["dog"], ["3"], ["cat"]])
    err = one_line_error(capsys, "train", f"data.train={m}", f"data.test={m}", *FAST)
    assert "train.csv, row 4: label '3' is a number, but other rows name classes" in err


def test_integer_label_out_of_range_names_row_and_value(tmp_path, capsys):
    m = write_manifest(tmp_path, [[0], [1], [2], [3], [7]])
    err = one_line_error(capsys, "train", f"data.train={m}", f"data.test={m}", *FAST)
    assert "row 6: label 7 makes 8 classes, but label(s) 4, 5, 6 never occur" in err


# -- folder layouts, truncated images --------------------------------------------------------------


def test_imagefolder_layout_with_sibling_masks(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for k in range(3):
            (tmp_path / "train" / c).mkdir(parents=True, exist_ok=True)
            (tmp_path / "train_masks" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "train" / c / f"{k}.jpg")
            Image.fromarray(np.full((12, 10), 255, np.uint8)).save(tmp_path / "train_masks" / c / f"{k}.png")
    from cit_fast.data.sources import load_folder

    s = load_folder(str(tmp_path / "train"))
    assert s.classes == ["cat", "dog"] and len(s) == 6 and s.masks[0].endswith("train_masks/cat/0.png")
    (tmp_path / "train_masks" / "dog" / "2.png").unlink()
    with pytest.raises(ValueError, match=r"train_masks/dog/2.png: file not found"):
        load_folder(str(tmp_path / "train"))


def test_truncated_jpeg_fails_at_start_up_not_mid_epoch(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "d" / c / f"{k}.jpg")
    bad = tmp_path / "d" / "b" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    err = one_line_error(capsys, "train", f"data.train={tmp_path / 'd'}", f"data.test={tmp_path / 'd'}",
                         f"out_dir={tmp_path / 'r'}", *FAST)
    assert "b/3.jpg: truncated JPEG" in err
    # data.verify=full decodes every image (and names the one that fails)
    bad.write_bytes(b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9")
    err = one_line_error(capsys, "train", f"data.train={tmp_path / 'd'}", f"data.test={tmp_path / 'd'}",
                         "data.verify=full", f"out_dir={tmp_path / 'r'}", *FAST)
    assert "b/3.jpg: cannot" in err


# -- files and directories -----------------------------------------------------------------------


def test_out_dir_not_writable(tmp_path, capsys, arrays_file):
    (tmp_path / "file").write_text("not a directory")
    err = one_line_error(capsys, "train", f"data.train={arrays_file}", f"data.test={arrays_file}",
                         f"out_dir={tmp_path / 'file' / 'run'}", *FAST)
    assert "file/run: cannot write there" in err and "out_dir=" in err


def test_metrics_port_taken_with_on_port_taken_error(tmp_path, capsys, arrays_file):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        err = one_line_error(capsys, "train", f"data.train={arrays_file}", f"data.test={arrays_file}",
                             "metrics.enabled=true", f"metrics.base_port={port}", "metrics.on_port_taken=error",
                             f"out_dir={tmp_path / 'r'}", *FAST)
    assert f"metrics: cannot serve on 127.0.0.1:{port}" in err


def test_eval_from_another_directory_with_relative_paths(tmp_path, monkeypatch):
    """A run started with relative paths evaluates from anywhere; an old run's config.yaml with
    relative paths too (they are resolved against the directory the run was started from)."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    write_arrays(work / "data" / "train.npz")
    monkeypatch.chdir(work)
    assert cli(["train", "data.train=data/train.npz", "data.test=data/train.npz", "out_dir=runs/a", *FAST]) == 0
    ck = next((work / "runs" / "a" / "checkpoints").glob("ckpt_*.pt"))
    state = torch.load(ck, weights_only=False)
    assert Path(state["config"]["data"]["train"]).is_absolute()  # saved absolute
    state["config"]["data"]["train"] = state["config"]["data"]["test"] = "data/train.npz"  # as older runs saved
    state["config"]["out_dir"] = "runs/a"
    torch.save(state, ck)
    monkeypatch.chdir(tmp_path)
    assert cli(["eval", "--checkpoint", str(ck), "--out", "e.json"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["test"]["n"] == 12


def test_resume_auto_skips_a_truncated_newest_checkpoint(tmp_path, arrays_file, capsys):
    args = [f"data.train={arrays_file}", f"data.test={arrays_file}", f"out_dir={tmp_path}", *FAST[:1],
            "data.batch_size=4", "progress=false", "threads=1"]
    train(load_config(None, args + ["optim.epochs=2"]))
    newest = ckpt.list_checkpoints(tmp_path / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # a copy cut short, a full disk...
    capsys.readouterr()
    res = train(load_config(None, args + ["optim.epochs=3", "resume=auto"]))
    out = capsys.readouterr()
    assert f"skipping {newest.name}" in out.err and "ckpt_e0001_s000000.pt at epoch 2" in out.out
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    err = one_line_error(capsys, "train", *args, "optim.epochs=3", f"resume={tmp_path / 'nope.pt'}")
    assert "resume: checkpoint" in err and "nope.pt not found" in err


# -- checkpoints never run code ----------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_holding_a_pickled_callable_is_refused(tmp_path, capsys):
    bad = tmp_path / "ckpt_e0001_s000000.pt"
    with open(bad, "wb") as f:
        pickle.dump({"model": {}, "epoch": 1, "step_in_epoch": 0, "x": _Evil()}, f)
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 1, "step_in_epoch": 0, "hook": _Evil()}, tmp_path / "t.pt")
    err = one_line_error(capsys, "eval", "--checkpoint", str(tmp_path / "t.pt"))
    assert "refused" in err and "system" in err and "weights_only=True" in err
    with pytest.raises(ValueError, match="refused"):
        ckpt.read_weights(tmp_path / "t.pt")
    err = one_line_error(capsys, "train", "model.init=" + str(tmp_path / "t.pt"), *FAST)
    assert "refused" in err


def test_rng_states_of_a_real_checkpoint_load_with_weights_only(tmp_path, arrays_file):
    train(load_config(None, [f"data.train={arrays_file}", f"data.test={arrays_file}", f"out_dir={tmp_path}", *FAST]))
    state = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "checkpoints"))  # weights_only=True inside
    assert state["rng"][0]["numpy"]["bit_generator"] == "MT19937"
    plain = torch.load(ckpt.find_latest(tmp_path / "checkpoints"))  # PyTorch's own safe default, no allow-list
    assert plain["rng"][0]["numpy"]["key"] == state["rng"][0]["numpy"]["key"]


# -- discoverable config, tracebacks for bugs ----------------------------------------------------------


def test_config_command_prints_every_key_with_its_comment(tmp_path, capsys):
    assert cli(["config"]) == 0
    text = capsys.readouterr().out
    import yaml

    from cit_fast.config import TrainConfig, from_dict, to_dict

    assert to_dict(from_dict(yaml.safe_load(text))) == to_dict(TrainConfig())  # loadable, the defaults
    assert "  plan: none  # one of none | stratify_c | stratify_b | random" in text
    assert "  epochwise: false  # train on original + intervened sample each step (Eq. 12)" in text
    y = tmp_path / "c.yaml"
    y.write_text("optim:\n  lr: 0.05\n")
    assert cli(["config", "--config", str(y), "model.name=resnet18"]) == 0
    merged = capsys.readouterr().out
    assert "  lr: 0.05" in merged and "  name: resnet18" in merged
    assert "unknown config key 'optim.lrr'" in one_line_error(capsys, "config", "optim.lrr=1")


def test_version_and_train_help_point_to_the_config():
    r = subprocess.run([CIT, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().startswith("cit-fast 0.")
    r = subprocess.run([CIT, "train", "--help"], capture_output=True, text=True)
    assert "cit-fast config" in r.stdout


def test_internal_errors_keep_their_traceback(monkeypatch):
    import cit_fast.cli as c

    def bug(args):
        raise ValueError("an internal bug, not the user's mistake")

    monkeypatch.setattr(c, "_cmd_synth", bug)
    with pytest.raises(ValueError, match="internal bug"):
        c.main(["synth", "--out", "x"])


# -- Ctrl-C ------------------------------------------------------------------------------------------


def _as_a_foreground_job() -> None:
    """The job starts as a terminal's foreground job does: SIGINT at its default disposition and
    not blocked, whatever the test runner's own (a process inherits both across fork and exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _interrupt(cmd, cwd, wait_for, timeout=600):
    """Start the job, wait until ``wait_for`` (a path, or a callable saying whether the job is there) exists,
    then Ctrl-C it: (rc, stdout, stderr)."""
    reached = wait_for if callable(wait_for) else wait_for.exists
    # started from the worst runner, one with SIGINT blocked: a job that inherited that mask ran to
    # completion untouched (rc 0, empty stderr: the one CI failure), so every run checks it does not
    runner_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, preexec_fn=_as_a_foreground_job)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, runner_mask)
    t0 = time.time()
    while not reached() and p.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.2)
    if not reached():
        with contextlib.suppress(ProcessLookupError):  # the job may have exited on its own: say why, below
            os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=60)
        pytest.fail(f"the job never reached the point to interrupt ({wait_for}): rc {p.returncode}; "
                    f"stdout: {out[-2000:]}; stderr: {err[-4000:]}")
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the group
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"the job did not stop within 120 s of Ctrl-C (SIGINT ignored or blocked in it?): {err[-2000:]}")
    return p.returncode, out, err


CTRL_C_PROBE = str(Path(__file__).with_name("ctrl_c_probe.py"))


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_naming_the_last_checkpoint(tmp_path, arrays_file):
    # The run waits for the signal at a known step, after its first checkpoint (a handshake, not a
    # race with the run's progress: the verdict cannot depend on how fast either process runs)
    ready = tmp_path / "ready"
    cmd = [sys.executable, CTRL_C_PROBE, str(ready), "train", f"data.train={arrays_file}", f"data.test={arrays_file}",
           f"out_dir={tmp_path / 'r'}", "model.name=resnet8", "optim.epochs=500", "data.batch_size=4",
           "checkpoint_every_steps=1", "progress=false", "threads=1"]
    rc, out, err = _interrupt(cmd, tmp_path, ready)
    assert rc == 130, f"rc {rc}, parent SIGINT {signal.getsignal(signal.SIGINT)}; stderr: {err!r}; stdout tail: {out[-500:]!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted; last complete checkpoint:" in lines[0] and "resume=auto" in lines[0]
    named = Path(lines[0].split("checkpoint: ")[1].split(" (")[0])
    assert named.is_file() and not list((tmp_path / "r" / "checkpoints").glob(".*.tmp"))


@pytest.mark.distributed
def test_ctrl_c_under_torchrun_is_one_line_per_job(tmp_path, arrays_file):
    launcher = str(Path(__file__).resolve().parents[1] / "launchers" / "torchrun.sh")
    cmd = [launcher, "2", "--", f"data.train={arrays_file}", f"data.test={arrays_file}", f"out_dir={tmp_path / 'r'}",
           "model.name=resnet8", "optim.epochs=100000", "data.batch_size=2", "checkpoint_every_steps=1",
           "progress=false", "threads=1"]
    # any step checkpoint: the run keeps only the newest few, so a given one may be gone between two looks
    # (on an idle machine the old test missed ckpt_e0000_s000001 and the 500-epoch run finished untouched);
    # 100,000 epochs take hours, so the run is still going when the signal comes, however fast it is
    checkpoints = tmp_path / "r" / "checkpoints"
    rc, out, err = _interrupt(cmd, tmp_path, lambda: any(checkpoints.glob("ckpt_*.pt")))
    assert rc == 130, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "interrupted; last complete checkpoint:" in lines[0], err


# -- metrics never stale ---------------------------------------------------------------------------------


def test_every_gauge_is_set_even_when_epochs_are_shorter_than_log_interval(tmp_path, arrays_file):
    from prometheus_client import generate_latest

    cfg = load_config(None, [f"data.train={arrays_file}", f"data.test={arrays_file}", f"out_dir={tmp_path}",
                             "metrics.enabled=true", "metrics.base_port=0", "log_interval=50", *FAST])
    t = Trainer(cfg)
    assert t.steps_per_epoch == 3 < cfg.log_interval
    t.fit()
    text = generate_latest(t.metrics.registry).decode()
    values = {l.split("{")[0]: float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
              if l.startswith("cit_fast_") and "{" in l and "_bucket" not in l}
    for gauge in ("cit_fast_loss", "cit_fast_learning_rate", "cit_fast_throughput_samples_per_second"):
        assert values[gauge] > 0, gauge
    assert 'cit_fast_memory_bytes{job="cit_fast",kind="host_rss"' in text


@pytest.mark.distributed
def test_torchrun_launcher_needs_nothing_on_path(tmp_path, arrays_file):
    """launchers/torchrun.sh runs the torchrun of the Python that has cit_fast, with a bare PATH."""
    launcher = str(Path(__file__).resolve().parents[1] / "launchers" / "torchrun.sh")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    r = subprocess.run([launcher, "2", "--", f"data.train={arrays_file}", f"data.test={arrays_file}",
                        f"out_dir={tmp_path / 'r'}", *FAST[:1], "optim.epochs=1", "data.batch_size=2",
                        "progress=false", "threads=1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "r" / "results.json").read_text())["world_size"] == 2
    r = subprocess.run([launcher, "2", "--", "optim.lr=fast"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and r.stderr.strip() == "cit-fast train: error: optim.lr: expected a number, got 'fast'"
