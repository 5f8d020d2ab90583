"""A node killed and started again does not lose the job: two agents of launchers/torchrun.sh on
127.0.0.1 (node A hosts the rendezvous store), resume=auto. Node B's agent and worker are SIGKILLed
after a step checkpoint of the 2-node run and node B's command is run again; both commands finish
(exit 0) and the run ends at world size 2 with the losses of an uninterrupted 2-process run resumed
from the checkpoint the job last resumed from. For NNODES=2 and NNODES=1:2, DDP and DeepSpeed."""
import json

import pytest

from cit_fast.checkpoint import load_checkpoint
from tests.train.nodes import ARGS, ENGINES, Node, free_port, listening, losses, reference, resumes, \
    step_checkpoints, wait_for

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def agents_env(nnodes: str, port: int) -> dict:
    return {"NNODES": nnodes, "RDZV_HOST": "127.0.0.1", "RDZV_PORT": str(port), "JOB_ID": "restart",
            "MAX_RESTARTS": "3", "RDZV_LAST_CALL_TIMEOUT": "60", "RDZV_KEEP_ALIVE": "1", "DS_ACCELERATOR": "cpu"}


@pytest.mark.parametrize("engine", ["ddp", "deepspeed"])
@pytest.mark.parametrize("nnodes", ["2", "1:2"])
def test_a_killed_node_started_again_finishes_the_job(tmp_path, nnodes, engine):
    out, port = tmp_path / "run", free_port()
    args = [*ARGS, *ENGINES[engine], f"out_dir={out}"]
    env = agents_env(nnodes, port)
    a = Node("a", tmp_path, {**env, "RDZV_IS_HOST": "1"}, args).start()
    b = Node("b", tmp_path, {**env, "RDZV_IS_HOST": "0"}, args)
    try:
        wait_for("node A's rendezvous store", lambda: listening(port), [a])
        b.start()
        wait_for("a step checkpoint", lambda: step_checkpoints(out), [a, b])
        assert load_checkpoint(step_checkpoints(out)[0])["world_size"] == 2, "node B was not part of the job"
        b.kill()  # node B is gone: its agent and its worker
        b.start()  # ... and back: its command run again
        assert a.wait(timeout=900) == 0, a.text()[-6000:] + b.text()[-3000:]
        assert b.wait(timeout=900) == 0, b.text()[-6000:] + a.text()[-3000:]
    finally:
        a.kill()
        b.kill()
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2  # node B is back in the job
    done = resumes([a, b])
    assert done, "the job never resumed from a checkpoint"
    ref = reference(tmp_path, done[-1][2], 2, args)
    assert losses(out) == losses(ref)
    assert results["test_top1"] == json.loads((ref / "results.json").read_text())["test_top1"]
