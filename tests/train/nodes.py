"""Nodes on one machine, for the node failure tests: agents of launchers/torchrun.sh on 127.0.0.1 that
the tests start, kill as a machine that goes away (agent and workers, SIGKILL) and start again."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = str(ROOT / "launchers" / "torchrun.sh")
# a tiny run: resnet8 on the embedded synthetic data, 2 epochs of 12 steps, a checkpoint every 4 steps
ARGS = ["model.name=resnet8", "data.synthetic_train_per_class=100", "data.synthetic_test_per_class=4",
        "data.batch_size=8", "optim.epochs=2", "max_steps_per_epoch=12", "progress=false", "threads=1",
        "checkpoint_every_steps=4", "keep_checkpoints=100", "intervention.plan=stratify_c", "resume=auto"]
ENGINES = {"ddp": [], "deepspeed": ["dist.engine=deepspeed", "dist.zero_stage=2"]}
RESUMED = re.compile(r"resumed from (\S+) at epoch (\d+), step (\d+)")


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

    def __init__(self, name: str, tmp: Path, env: dict, args: List[str]) -> None:
        self.name, self.tmp, self.env, self.args = name, tmp, env, args
        self.proc: Optional[subprocess.Popen] = None
        self.logs: List[Path] = []

    def start(self) -> "Node":
        log = self.tmp / f"{self.name}.{len(self.logs)}.log"
        self.logs.append(log)
        self.proc = subprocess.Popen([LAUNCHER, "1", "--", *self.args], env={**os.environ, **self.env},
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

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


def descendants(pid: int) -> List[int]:
    """pid and every process under it (the agent starts its workers in sessions of their own)."""
    children: dict = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def wait_for(what: str, ready: Callable[[], bool], nodes: Iterable[Node], timeout: float = 600) -> None:
    """Poll ``ready`` (files, log lines) until it holds; fail early with the logs when a node exits."""
    nodes = list(nodes)
    t0 = time.time()
    while not ready():
        dead = [n for n in nodes if not n.alive()]
        if dead or time.time() - t0 > timeout:
            why = f"{dead[0].name} exited ({dead[0].proc.returncode})" if dead else f"{timeout} s passed"
            raise AssertionError(f"waiting for {what}: {why}\n" + "\n".join(n.text()[-4000:] for n in nodes))
        time.sleep(0.2)


def step_checkpoints(out: Path) -> List[Path]:
    return sorted(p for p in (out / "checkpoints").glob("*_e0000_s*") if not p.name.endswith(".tmp"))


def losses(out: Path) -> List[float]:
    return [x for e in json.loads((out / "results.json").read_text())["history"] for x in e["step_losses"]]


def resumes(nodes: Iterable[Node]) -> List[tuple]:
    """(epoch, step, path) of every 'resumed from' line of the nodes' logs (rank 0's, on either node)."""
    found = [m for n in nodes for m in RESUMED.finditer(n.text())]
    return sorted((int(m.group(2)), int(m.group(3)), m.group(1)) for m in found)


def reference(tmp: Path, checkpoint: str, world: int, args: List[str], timeout: float = 900) -> Path:
    """An uninterrupted single-node run at world size ``world``, resumed from ``checkpoint``."""
    ref = tmp / "ref"
    args = [a for a in args if not a.startswith(("resume=", "out_dir="))]
    r = subprocess.run([LAUNCHER, str(world), "--", *args, f"resume={checkpoint}", f"out_dir={ref}"],
                       env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return ref
