"""Nodes on one machine, for the node failure tests: agents of launchers/torchrun.sh on 127.0.0.1 that
the tests start, kill as a machine that goes away (agent and workers, SIGKILL) and start again; and a
real etcd server on 127.0.0.1 for the external rendezvous store."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, List, Optional

from cit_fast.checkpoint import list_checkpoints, list_deepspeed_checkpoints
from tests.processes import descendants

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = str(ROOT / "launchers" / "torchrun.sh")
DS_LAUNCHER = str(ROOT / "launchers" / "deepspeed.sh")
# a tiny run: resnet8 on the embedded synthetic data, 2 epochs of 20 steps (the same at world size 1
# and 2), a checkpoint every 4 steps: the steps cost little beside the processes' start-up, and a node
# killed at the first checkpoint leaves most of the run to train after the restart
ARGS = ["model.name=resnet8", "data.synthetic_train_per_class=100", "data.synthetic_test_per_class=4",
        "data.batch_size=8", "optim.epochs=2", "max_steps_per_epoch=20", "progress=false", "threads=1",
        "checkpoint_every_steps=4", "keep_checkpoints=100", "intervention.plan=stratify_c", "resume=auto"]
STEPS = 40
ENGINES = {"ddp": [], "deepspeed": ["dist.engine=deepspeed", "dist.zero_stage=2"]}
RESUMED = re.compile(r"resumed from (\S+) at epoch (\d+), step (\d+)")
EVENT = re.compile(r"^restart (\d+): (.*); world size (?:\d+ -> )?(\d+) \(nodes: ([^)]*)\); (.*)$", re.M)
FIRST_START = "resume=auto: no complete checkpoint"  # rank 0's line at the job's first start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Node:
    """One node's command (``launchers/torchrun.sh 1 -- ARGS``), started, killed and started again;
    every start logs to its own file (``NAME.N.log``)."""

    def __init__(self, name: str, tmp: Path, env: dict, args: List[str],
                 command: Optional[List[str]] = None) -> None:
        self.name, self.tmp, self.env, self.args = name, tmp, {**env, "NODE_NAME": name}, args
        self.command = command or [LAUNCHER, "1", "--"]
        self.proc: Optional[subprocess.Popen] = None
        self.logs: List[Path] = []

    def start(self) -> "Node":
        log = self.tmp / f"{self.name}.{len(self.logs)}.log"
        self.logs.append(log)
        self.proc = subprocess.Popen([*self.command, *self.args], env={**os.environ, **self.env},
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def text(self) -> str:
        return "".join(f"--- {p.name}\n{p.read_text()}" for p in self.logs if p.exists())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node: its agent and its workers, as a machine that goes away."""
        if self.proc is None:
            return
        for pid in descendants(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def kill_worker(self, marker: str) -> None:
        """SIGKILL the one worker under this node whose command line holds ``marker``."""
        found = [p for p in descendants(self.proc.pid) if marker in _cmdline(p)]
        assert len(found) == 1, (marker, [_cmdline(p) for p in descendants(self.proc.pid)])
        os.kill(found[0], signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def processes_with(marker: str) -> List[int]:
    """The processes whose command line holds ``marker`` (an out_dir: the job's own)."""
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and marker in _cmdline(int(d.name))]




def rank0_node(nodes: Iterable[Node]) -> Node:
    """The node whose worker was rank 0 at the job's first start (it printed rank 0's first line)."""
    first = [n for n in nodes if n.logs and FIRST_START in n.logs[0].read_text()]
    assert len(first) == 1, "\n".join(n.text()[-3000:] for n in nodes)
    return first[0]


def events(nodes: Iterable[Node]) -> List[tuple]:
    """(restart, what changed, world size, nodes, rest of the line) of rank 0's event lines, in order."""
    found = [m for n in nodes for m in EVENT.finditer(n.text())]
    return sorted((int(m.group(1)), m.group(2), int(m.group(3)), m.group(4), m.group(5)) for m in found)


def wait_for(what: str, ready: Callable[[], bool], nodes: Iterable[Node], timeout: float = 600) -> None:
    """Poll ``ready`` (files, log lines) until it holds; fail early with the logs when a node exits."""
    nodes = list(nodes)
    t0 = time.time()
    while not ready():
        dead = [n for n in nodes if not n.alive()]
        if dead or time.time() - t0 > timeout:
            why = f"{dead[0].name} exited ({dead[0].proc.returncode})" if dead else f"{timeout} s passed"
            raise AssertionError(f"waiting for {what}: {why}\n" + "\n".join(n.text()[-4000:] for n in nodes))
        time.sleep(0.05)


def step_checkpoints(out: Path) -> List[Path]:
    """The complete checkpoints (files, or DeepSpeed directories with their COMPLETE marker)."""
    return list_checkpoints(out / "checkpoints") + list_deepspeed_checkpoints(out / "checkpoints")


def losses(out: Path) -> List[float]:
    return [x for e in json.loads((out / "results.json").read_text())["history"] for x in e["step_losses"]]


def resumes(nodes: Iterable[Node]) -> List[tuple]:
    """(epoch, step, path) of every 'resumed from' line of the nodes' logs (rank 0's, on either node)."""
    found = [m for n in nodes for m in RESUMED.finditer(n.text())]
    return sorted((int(m.group(2)), int(m.group(3)), m.group(1)) for m in found)


def reference(tmp: Path, checkpoint: str, world: int, args: List[str], timeout: float = 900,
              deepspeed_launcher: bool = False) -> Path:
    """An uninterrupted single-node run at world size ``world``, resumed from ``checkpoint`` (by
    launchers/torchrun.sh, or launchers/deepspeed.sh)."""
    ref = tmp / "ref"
    args = [a for a in args if not a.startswith(("resume=", "out_dir="))]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    if deepspeed_launcher:
        command = [DS_LAUNCHER, "--"]
        env.update(NUM_GPUS=str(world), MASTER_PORT=str(free_port()))
    else:
        command = [LAUNCHER, str(world), "--"]
    r = subprocess.run([*command, *args, f"resume={checkpoint}", f"out_dir={ref}"],
                       env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return ref


class Etcd:
    """A real etcd server (Debian's etcd-server) on 127.0.0.1 with its v2 API, in a temporary data
    directory, on free ports; stopped (and its data removed) on exit."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "etcd"
        self.port, peer = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self._cmd = ["etcd", "--name", "cit", "--data-dir", str(self.dir / "data"), "--enable-v2",
                     "--listen-client-urls", f"http://{self.endpoint}", "--advertise-client-urls", f"http://{self.endpoint}",
                     "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
                     f"http://127.0.0.1:{peer}", "--initial-cluster", f"cit=http://127.0.0.1:{peer}"]

    def __enter__(self) -> "Etcd":
        self.dir.mkdir(parents=True)
        self.log = self.dir / "etcd.log"
        self.proc = subprocess.Popen(self._cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        t0 = time.time()
        while not self.healthy():
            assert self.proc.poll() is None and time.time() - t0 < 60, "etcd did not start:\n" + self.log.read_text()[-3000:]
            time.sleep(0.2)
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/v2/keys", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir / "data", ignore_errors=True)
