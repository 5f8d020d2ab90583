"""A node killed and started again does not lose the job: two agents of launchers/torchrun.sh on
127.0.0.1, resume=auto. After the first step checkpoint of the 2-node run one node's agent and worker
are SIGKILLed and its command is run again; both commands finish (exit 0), the run ends at world
size 2 with the losses of an uninterrupted 2-process run resumed from the checkpoint the job last
resumed from, and rank 0 said what happened in one line per restart (which node, the world size,
the checkpoint).

- c10d (the default): node A hosts the rendezvous store, node B is killed; NNODES=2 with DDP and
  NNODES=1:2 with DeepSpeed ZeRO-2 (the two node specs, the two engines).
- DeepSpeed's launcher (launchers/deepspeed.sh, not elastic): a lost worker stops the whole job
  (every process ends, the launcher exits non-zero, no hang); the same command run again continues
  from the newest checkpoint with the losses of an uninterrupted run from it.
- etcd-v2 against a real etcd server the test starts: the node whose worker is rank 0 (and hosts
  the workers' store) is killed, which c10d's store host could not survive; NNODES=1:2, DDP. A node
  started with the finished job's JOB_ID then ends with one line (etcd keeps the rendezvous closed).
"""
import json
import shutil
import socket

import pytest

from tests.train.nodes import ARGS, DS_LAUNCHER, ENGINES, STEPS, Etcd, Node, events, free_port, listening, \
    losses, processes_with, rank0_node, reference, resumes, step_checkpoints, wait_for

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def agents_env(nnodes: str, **rdzv) -> dict:
    return {"NNODES": nnodes, "JOB_ID": "restart", "MAX_RESTARTS": "3", "RDZV_LAST_CALL_TIMEOUT": "60",
            "RDZV_KEEP_ALIVE": "1", "DS_ACCELERATOR": "cpu", **rdzv}


def kill_and_restart(tmp_path, out, nodes, pick) -> Node:
    """Wait for the first step checkpoint, SIGKILL the node ``pick(nodes)`` names and start its command
    again; wait for both commands to finish. Returns the node that was killed."""
    wait_for("a step checkpoint", lambda: step_checkpoints(out), nodes)
    victim = pick(nodes)
    victim.kill()  # the node is gone: its agent and its worker
    victim.start()  # ... and back: its command run again
    for n in nodes:
        assert n.wait(timeout=900) == 0, n.text()[-6000:] + "\n".join(m.text()[-3000:] for m in nodes if m is not n)
    return victim


def check_the_job(tmp_path, out, nodes, victim, args, deepspeed_launcher: bool = False) -> None:
    logs = "\n".join(n.text()[-3000:] for n in nodes)
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2, logs  # the killed node is back in the job
    done = resumes(nodes)
    assert done, "the job never resumed from a checkpoint\n" + logs
    assert (done[-1][0] - 1) * STEPS // 2 + done[-1][1] < STEPS, "the kill came after the last step"
    # what rank 0 said: one line per restart, each naming the killed node; the last one at world size 2
    said = events(nodes)
    assert said and [e[0] for e in said] == list(range(1, len(said) + 1)), logs
    assert all(f"node {victim.name} " in e[1] for e in said), said
    names = ["a", "b"] if len(nodes) == 2 else [victim.name]
    assert said[-1][2] == 2 and sorted(said[-1][3].split(", ")) == names, said
    assert said[-1][4].startswith(f"resumed from {done[-1][2]} "), said
    assert json.loads((out / "nodes.json").read_text())["restarts"] == len(said)
    ref = reference(tmp_path, done[-1][2], 2, args, deepspeed_launcher=deepspeed_launcher)
    assert losses(out) == losses(ref)
    assert results["test_top1"] == json.loads((ref / "results.json").read_text())["test_top1"]


@pytest.mark.parametrize("nnodes, engine", [("2", "ddp"), ("1:2", "ddp"), ("2", "deepspeed"), ("1:2", "deepspeed")])
def test_the_non_host_node_killed_and_started_again_finishes_the_job(tmp_path, nnodes, engine):
    out, port = tmp_path / "run", free_port()
    args = [*ARGS, *ENGINES[engine], f"out_dir={out}"]
    env = agents_env(nnodes, RDZV_HOST="127.0.0.1", RDZV_PORT=str(port))
    a = Node("a", tmp_path, {**env, "RDZV_IS_HOST": "1"}, args).start()
    b = Node("b", tmp_path, {**env, "RDZV_IS_HOST": "0"}, args)
    try:
        wait_for("node A's rendezvous store", lambda: listening(port), [a])
        b.start()
        victim = kill_and_restart(tmp_path, out, [a, b], lambda nodes: b)
    finally:
        a.kill()
        b.kill()
    check_the_job(tmp_path, out, [a, b], victim, args)


def test_deepspeed_launcher_a_lost_worker_stops_the_job_and_the_same_command_continues_it(tmp_path):
    out = tmp_path / "run"
    args = [*ENGINES["deepspeed"], *ARGS, f"out_dir={out}"]
    env = {"DS_ACCELERATOR": "cpu", "NUM_GPUS": "2", "MASTER_PORT": str(free_port())}
    # DeepSpeed's launcher names each node by its host name
    node = Node(socket.gethostname(), tmp_path, env, args, command=[DS_LAUNCHER, "--"]).start()
    try:
        wait_for("a step checkpoint", lambda: step_checkpoints(out), [node])
        node.kill_worker("--local_rank=1")  # one of its processes is gone, as with a lost node
        code = node.wait(timeout=300)
        assert code != 0 and not processes_with(str(out)), node.text()[-4000:]  # every process ended
        node.start()  # the same command again
        assert node.wait(timeout=900) == 0, node.text()[-6000:]
    finally:
        node.kill()
    check_the_job(tmp_path, out, [node], node, args, deepspeed_launcher=True)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd not installed (Debian package etcd-server)")
def test_the_first_node_killed_and_started_again_with_an_etcd_store(tmp_path):
    pytest.importorskip("etcd", reason="python-etcd not installed (pip install python-etcd)")
    out = tmp_path / "run"
    args = [*ARGS, f"out_dir={out}"]
    with Etcd(tmp_path) as etcd:
        env = agents_env("1:2", RDZV_BACKEND="etcd-v2", RDZV_ENDPOINT=etcd.endpoint)
        a = Node("a", tmp_path, env, args).start()
        b = Node("b", tmp_path, env, args).start()
        late = Node("c", tmp_path, env, args)
        try:
            victim = kill_and_restart(tmp_path, out, [a, b], rank0_node)
            late.start()  # the finished job's JOB_ID used again
            assert late.wait(timeout=300) == 2, late.text()[-3000:]
        finally:
            for n in (a, b, late):
                n.kill()
    said = [s for s in late.logs[0].read_text().splitlines() if s.strip()]
    assert len(said) == 1 and said[0].startswith("cit_fast.launch: the rendezvous of JOB_ID=restart is closed"), said
    check_the_job(tmp_path, out, [a, b], victim, args)
