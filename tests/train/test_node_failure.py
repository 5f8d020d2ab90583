"""A lost node does not lose the job: two agents of launchers/torchrun.sh on 127.0.0.1 (node A
hosts the rendezvous store, node B does not), NNODES=1:2, resume=auto. Node B's agent and worker
are killed (SIGKILL) after a step checkpoint; node A's worker fails, its agent restarts it, the
rendezvous closes with A alone, and the run resumes from the newest checkpoint at world size 1 and
finishes. Its losses after the resume equal those of an uninterrupted world-size-1 run resumed
from the same checkpoint."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.processes import descendants

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

LAUNCHER = str(Path(__file__).resolve().parents[2] / "launchers" / "torchrun.sh")
ARGS = ["model.name=resnet8", "data.synthetic_train_per_class=300", "data.synthetic_test_per_class=4",
        "data.batch_size=8", "optim.epochs=3", "progress=false", "threads=1", "checkpoint_every_steps=4",
        "keep_checkpoints=100", "intervention.plan=stratify_c", "resume=auto"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent(out: Path, port: int, host: bool, log: Path) -> subprocess.Popen:
    env = {**os.environ, "NNODES": "1:2", "RDZV_HOST": "127.0.0.1", "RDZV_PORT": str(port), "JOB_ID": "nodefail",
           "RDZV_IS_HOST": "1" if host else "0", "NODE_NAME": "a" if host else "b", "MAX_RESTARTS": "3",
           "RDZV_LAST_CALL_TIMEOUT": "60",
           "RDZV_KEEP_ALIVE": "1", "DS_ACCELERATOR": "cpu"}
    return subprocess.Popen([LAUNCHER, "1", "--", *ARGS, f"out_dir={out}"], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0




def _kill_node(p: subprocess.Popen) -> None:
    """SIGKILL a node: its agent and its workers, as a machine that goes away."""
    for pid in descendants(p.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait()


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        _kill_node(p)


def _losses(out: Path):
    return [x for e in json.loads((out / "results.json").read_text())["history"] for x in e["step_losses"]]


def test_job_survives_the_loss_of_the_non_host_node(tmp_path):
    out, port = tmp_path / "run", _free_port()
    a = _agent(out, port, True, tmp_path / "a.log")
    b = None
    try:
        t0 = time.time()
        while not _listening(port) and a.poll() is None and time.time() - t0 < 300:
            time.sleep(0.2)  # A's agent hosts the store; B joins it (the round waits 60 s for B)
        b = _agent(out, port, False, tmp_path / "b.log")
        ckpts = out / "checkpoints"
        while not list(ckpts.glob("ckpt_e0000_s*.pt")) and a.poll() is None and time.time() - t0 < 600:
            time.sleep(0.2)
        assert list(ckpts.glob("ckpt_e0000_s*.pt")), (tmp_path / "a.log").read_text()[-3000:]
        first = sorted(ckpts.glob("ckpt_e0000_s*.pt"))[0]
        assert torch.load(first)["world_size"] == 2, "node B was not part of the job"  # (a safe torch.load)
        assert b.poll() is None, (tmp_path / "b.log").read_text()[-3000:]
        _kill_node(b)  # node B is gone: its agent and its worker
        # keep the checkpoint A resumes from (the run goes on and rotates its checkpoints)
        resumed = None
        while resumed is None and a.poll() is None and time.time() - t0 < 900:
            found = re.findall(r"resumed from (\S+\.pt) at epoch", (tmp_path / "a.log").read_text())
            resumed = found[0] if found else time.sleep(0.2)
        assert resumed, (tmp_path / "a.log").read_text()[-5000:]
        shutil.copy(resumed, tmp_path / "resume_point.pt")
        assert a.wait(timeout=900) == 0, (tmp_path / "a.log").read_text()[-5000:]
    finally:
        for p in (a, b):
            if p is not None:
                _stop(p)
    assert len(re.findall("resumed from", (tmp_path / "a.log").read_text())) == 1  # one restart, on one node
    # rank 0 says which node left, the world size now and the checkpoint, in one line
    assert re.search(r"^restart 1: node b left; world size 2 -> 1 \(nodes: a\); resumed from " + re.escape(resumed),
                     (tmp_path / "a.log").read_text(), re.M), (tmp_path / "a.log").read_text()[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 1  # finished on the node that remained

    # the same checkpoint, resumed by an uninterrupted single-node run
    ref = tmp_path / "ref"
    r = subprocess.run([LAUNCHER, "1", "--", *ARGS[:-1], f"resume={tmp_path / 'resume_point.pt'}", f"out_dir={ref}"],
                       env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(out) == _losses(ref) and results["test_top1"] == json.loads((ref / "results.json").read_text())["test_top1"]
