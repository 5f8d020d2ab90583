"""A one-node SLURM cluster on this machine, for tests: munged on a private socket with a key written
here, slurmctld and slurmd in the foreground (-D) as child processes, every file (config, state,
spool, logs, sockets) under one directory, free ports, the running user as SlurmUser (root or not).
Debian's packages: slurmctld, slurmd, slurm-client and munge (22.05 in bookworm). A requeued job
starts again within seconds (cred_expire=5, sched_interval=1; SLURM's defaults hold it ~2.5 min).

    with SlurmCluster(tmp_path / "slurm") as c:
        job = c.sbatch(["launchers/slurm.sbatch", ...], cwd=tmp_path)
        c.wait_for(job, {"COMPLETED"}, timeout=600)

No cgroups (proctrack/linuxproc, task/none) and no accounting database: job states come from
`scontrol show job`. The daemons and every job are stopped on exit, failures included."""
from __future__ import annotations

import getpass
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from tests.processes import descendants

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE"}


# the Debian package of each program the cluster runs
PACKAGES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "slurmstepd": "slurmd",
            "sbatch": "slurm-client", "scontrol": "slurm-client", "sinfo": "slurm-client", "scancel": "slurm-client"}


def missing_packages() -> List[str]:
    """The Debian packages whose programs are missing (empty: everything is there)."""
    return sorted({pkg for prog, pkg in PACKAGES.items() if shutil.which(prog) is None})


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def first_job_id(jobs: int = 8) -> int:
    """A first job id whose jobs' rendezvous ports (launchers/slurm.sbatch: 20000 + id % 20000) are
    free now, so that two clusters on one machine (or other tests) do not meet at one port."""
    rng = random.Random()
    while True:
        first = rng.randrange(1, 20000 - jobs)
        if all(_port_free(20000 + first + k) for k in range(jobs)):
            return first


def free_ports(n: int) -> List[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()




def _wait_until(cond, timeout: float, what: str, alive=None, log: Optional[Path] = None) -> None:
    t0 = time.monotonic()
    while not cond():
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"{what}: the daemon exited with {alive.returncode}\n" + _tail(log))
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n" + _tail(log))
        time.sleep(0.2)


def _tail(path: Optional[Path], n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:] if path else ""
    except OSError:
        return ""


class SlurmCluster:
    def __init__(self, root: Path, cpus: int = 4, memory_mb: int = 4000):
        """cpus: what the node declares (a job's --cpus-per-task is counted against it, not against
        the machine's cores: with 4, two 1-CPU jobs and a 2-task job can run side by side)."""
        self.root = Path(root)
        self.cpus, self.memory_mb = cpus, memory_mb
        self.user = getpass.getuser()
        self.first_job_id = first_job_id()
        self.node = socket.gethostname().split(".")[0]
        self.procs: Dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for k in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if k != "SLURM_CONF":
                del self.env[k]  # a test run inside a SLURM job must not submit to that job's cluster

    # -- bring-up ----------------------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log", "run"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.munge_socket = r / "munge" / "munge.socket"
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--log-file={r / 'log' / 'munged.log'}", f"--pid-file={r / 'munge' / 'munged.pid'}",
                               f"--seed-file={r / 'munge' / 'munged.seed'}", "--num-threads=2"],
                    r / "log" / "munged.log")
        _wait_until(self.munge_socket.exists, 30, "munged socket", self.procs["munged"], r / "log" / "munged.log")
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(self._config(ctld_port, slurmd_port))
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)], r / "log" / "slurmctld.out")
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node], r / "log" / "slurmd.out")
        _wait_until(self._node_idle, 120, "the node to be idle", None, r / "log" / "slurmd.log")
        for name in ("slurmctld", "slurmd"):
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited\n" + _tail(r / "log" / f"{name}.log"))

    def _config(self, ctld_port: int, slurmd_port: int) -> str:
        r = self.root
        return f"""# written by tests/slurm_cluster.py: a one-node cluster under {r}
ClusterName=cittest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={self.user}
SlurmdUser={self.user}
FirstJobId={self.first_job_id}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool' / '%n'}
SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}
SlurmdPidFile={r / 'run' / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
# requeueable only when a job asks (--requeue): the launchers' own directive is what a requeue test sees
JobRequeue=0
KillWait=30
MinJobAge=3600
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""

    def _spawn(self, name: str, argv: List[str], log: Path) -> None:
        self.procs[name] = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True, cwd=self.root)

    def _node_idle(self) -> bool:
        for name in ("slurmctld", "slurmd"):
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}\n"
                                   + _tail(self.root / "log" / f"{name}.log") + _tail(self.root / "log" / f"{name}.out"))
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True, timeout=30)
        return r.returncode == 0 and r.stdout.strip().rstrip("*") == "idle"

    # -- jobs --------------------------------------------------------------------------------------
    def run(self, argv: List[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True,
                              timeout=kw.pop("timeout", 60), **kw)

    def sbatch(self, argv: List[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> str:
        r = self.run(["sbatch", "--parsable", *argv], cwd=cwd, env=env or {})
        if r.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(argv)} failed: {r.stderr.strip()}")
        return r.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> Dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...)."""
        r = self.run(["scontrol", "show", "job", "-o", job_id])
        if r.returncode != 0:
            raise RuntimeError(f"scontrol show job {job_id}: {r.stderr.strip()}")
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", r.stdout))

    def wait_for(self, job_id: str, states: Iterable[str], timeout: float, log: Optional[Path] = None) -> Dict[str, str]:
        """Poll until the job is in one of ``states``; a terminal state that is not one of them fails."""
        states = set(states)
        t0 = time.monotonic()
        while True:
            info = self.job(job_id)
            if info["JobState"] in states:
                return info
            if info["JobState"] in TERMINAL:
                raise AssertionError(f"job {job_id} ended {info['JobState']} (exit {info.get('ExitCode')}), "
                                     f"expected {sorted(states)}\n{_tail(log)}\n{self.logs()}")
            for name in ("slurmctld", "slurmd"):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited during job {job_id}\n{self.logs()}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"job {job_id} still {info['JobState']} after {timeout:.0f} s\n{_tail(log)}\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        return "".join(f"--- {n}.log\n{_tail(self.root / 'log' / f'{n}.log', 2000)}" for n in ("slurmctld", "slurmd"))

    # -- teardown ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job (3 s for its processes to go, then SIGKILL), then stop the daemons
        (SIGTERM, then SIGKILL for whatever is left): nothing of the cluster survives the test, and
        stopping takes ~0.5 s instead of slurmd's wait for its job steps."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self.run(["scancel", "--full", "--user", str(os.getuid())], timeout=20)
            except (subprocess.SubprocessError, OSError):
                pass
        # the jobs' processes first (slurmd waits for its job steps on SIGTERM): a moment to go, then SIGKILL
        daemons = {p.pid for p in self.procs.values()} | set(descendants(self.procs["slurmctld"].pid)
                                                             if "slurmctld" in self.procs else [])  # + slurmscriptd
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 and set(self._cluster_processes()) - daemons:
            time.sleep(0.1)
        self._kill(set(self._cluster_processes()) - daemons)
        pids = []
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None:
                continue
            pids += descendants(p.pid)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None:
                continue
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # slurmstepd and the jobs' processes are not the daemons' children once they daemonise: every
        # process whose environment names this cluster's config
        self._kill(set(pids + self._cluster_processes()))

    @staticmethod
    def _kill(pids: Iterable[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _cluster_processes(self) -> List[int]:
        mine = f"SLURM_CONF={self.conf}".encode()
        ours, pid = set(), os.getpid()
        while pid > 1:  # this process and its ancestors, whatever their environment
            ours.add(pid)
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                break
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) not in ours:
                try:
                    env = (d / "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if mine in env:
                    out.append(int(d.name))
        return out
