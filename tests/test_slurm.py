"""The SLURM launchers under a real SLURM: Debian's slurmctld + slurmd brought up on this machine as a
one-node cluster (tests/slurm_cluster.py: munge with a key of its own, a config written here, no
cgroups), the jobs submitted from a directory that is not the repository, by the launchers' absolute
paths, on a CPU partition (--gpus-per-node=0: one process per node).

- launchers/slurm.sbatch: a short training on the embedded data finishes (results.json); the same job
  `scontrol requeue`d after a step checkpoint runs again (same job id, its log appended) and resumes
  from the newest checkpoint with the step losses of the uninterrupted job from there on. The two jobs
  share the node, each at its own rendezvous port.
- launchers/masks.sbatch: two srun tasks (ranks) write the masks of a small folder, byte for byte the
  masks of one process.
"""
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.slurm_cluster import TERMINAL, SlurmCluster, missing_packages

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
MISSING = missing_packages()
if MISSING and not os.environ.get("CI"):
    pytest.skip(f"SLURM tests: Debian package(s) {' '.join(MISSING)} not installed; .ci/run installs them",
                allow_module_level=True)

# a tiny run: 2 epochs of 12 steps, a checkpoint every 4 steps (steps 4 and 8 of each epoch, and each
# epoch's end); the requeued job is stopped after its 16th step (epoch 2, step 4)
TRAIN = ["model.name=resnet8", "data.synthetic_train_per_class=24", "data.synthetic_test_per_class=4",
         "data.batch_size=8", "optim.epochs=2", "max_steps_per_epoch=12", "progress=false", "threads=1",
         "checkpoint_every_steps=4", "keep_checkpoints=100", "intervention.plan=stratify_c"]
PAUSE_AT = 16
CPU_JOB = ["--gpus-per-node=0", "--cpus-per-task=1"]  # the scripts ask 8 GPUs and 32/64 cores: a CPU node's job
HOOKS = ROOT / "tests" / "slurm_hooks"  # sitecustomize.py: the pause of the requeued job (CIT_TEST_PAUSE_*)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def wait_for_file(cluster: SlurmCluster, job: str, path: Path, log: Path, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not path.exists():
        info = cluster.job(job)
        if info["JobState"] in TERMINAL or time.monotonic() - t0 > timeout:
            raise AssertionError(f"job {job} ({info['JobState']}) never wrote {path}\n{tail(log)}\n{cluster.logs()}")
        time.sleep(0.2)


def tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} not written)"


def history(out: Path) -> list:
    return [e["step_losses"] for e in json.loads((out / "results.json").read_text())["history"]]


def test_training_job_and_a_requeued_one_resume_exactly(cluster, tmp_path):
    sbatch = str(ROOT / "launchers" / "slurm.sbatch")
    full, requeued = tmp_path / "full", tmp_path / "requeued"
    marker = tmp_path / "paused"
    pause = {"PYTHONPATH": os.pathsep.join([str(HOOKS), *filter(None, [os.environ.get("PYTHONPATH")])]),
             "CIT_TEST_PAUSE_AT_STEP": str(PAUSE_AT), "CIT_TEST_PAUSE_MARKER": str(marker)}
    a = cluster.sbatch([*CPU_JOB, sbatch, *TRAIN, f"out_dir={full}"], cwd=tmp_path)
    b = cluster.sbatch([*CPU_JOB, sbatch, *TRAIN, f"out_dir={requeued}"], cwd=tmp_path, env=pause)
    log_a, log_b = tmp_path / f"cit_fast-{a}.out", tmp_path / f"cit_fast-{b}.out"  # the script's --output

    wait_for_file(cluster, b, marker, log_b)  # job B stopped after step 16, its step checkpoint written
    newest = sorted(p.name for p in (requeued / "checkpoints").glob("ckpt_*.pt"))[-1]
    assert newest == "ckpt_e0001_s000004.pt"
    r = cluster.run(["scontrol", "requeue", b])
    assert r.returncode == 0, r.stderr

    info_a = cluster.wait_for(a, {"COMPLETED"}, timeout=600, log=log_a)
    info_b = cluster.wait_for(b, {"COMPLETED"}, timeout=600, log=log_b)
    assert info_a["ExitCode"] == info_b["ExitCode"] == "0:0"
    assert info_b["Restarts"] == "1" and info_a["Restarts"] == "0"

    # job A: the short training, from start to results
    res = json.loads((full / "results.json").read_text())
    assert res["world_size"] == 1 and res["epochs"] == 2 and res["test_top1"] is not None
    assert [len(s) for s in history(full)] == [12, 12]

    # job B: killed by the requeue, run again under the same id (log appended), resumed from the newest checkpoint
    text = log_b.read_text()
    assert text.count("starting fresh") == 1 and "DUE TO JOB REQUEUE" in text
    assert f"resumed from {requeued / 'checkpoints' / newest} at epoch 2, step 4" in text
    # the losses from the checkpoint on are the uninterrupted job's (bitwise: one process on the CPU)
    (a1, a2), (b1, b2) = history(full), history(requeued)
    assert b1 == a1  # epoch 1, carried in the checkpoint
    assert b2 == a2[PAUSE_AT - 12:]  # epoch 2's steps 4..11, trained again after the requeue
    assert json.loads((requeued / "results.json").read_text())["test_top1"] == res["test_top1"]


def test_masks_job_two_ranks_write_the_masks_of_one_process(cluster, tmp_path):
    from cit_fast.data.masks.job import run_masks
    from cit_fast.data.masks.saliency import SaliencyMasker
    from tests.data.test_pipeline_contract import write_folder

    src, ref = write_folder(tmp_path / "src", n_per_class=(3, 2, 2)), tmp_path / "ref"
    shutil.rmtree(src / "masks")
    shutil.copytree(src, ref)
    job = cluster.sbatch(["--ntasks-per-node=2", *CPU_JOB, str(ROOT / "launchers" / "masks.sbatch"), str(src),
                          "--method", "spectral"], cwd=tmp_path,
                         env={"RANK": "0", "WORLD_SIZE": "1"})  # left in the submitting shell: srun's ranks win
    log = tmp_path / f"cit_fast_masks-{job}.out"
    assert cluster.wait_for(job, {"COMPLETED"}, timeout=300, log=log)["ExitCode"] == "0:0"
    text = log.read_text()
    assert "7 masks written" in text and "rank 1:" in text, text[-3000:]
    assert (src / "masks_montage.png").is_file()
    run_masks(str(ref), masker=SaliencyMasker("spectral"), progress=False)
    masks = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "masks").rglob("*.png"))}
    got, want = masks(src), masks(ref)
    assert len(got) == 7 and got == want
