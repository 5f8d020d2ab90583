"""The mask job over processes and ranks (data/masks/job.py): the same masks from 1 or 2 workers and from
1 or 2 ranks, on folders and on shard sets (a masks column beside the image shards), and a job killed
midway resumes without redoing finished work."""
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from cit_fast.cli import main as cli
from cit_fast.data.masks.job import JOB_DIR, run_masks
from cit_fast.data.masks.saliency import SaliencyMasker
from cit_fast.data.sources import load_folder
from cit_fast.data.sources.members import member_bytes
from cit_fast.data.sources.shards import MASKS, load_shards, write_shards
from tests.data.test_pipeline_contract import write_folder


def _folder(root: Path, n=(3, 2, 3), size=(40, 52)) -> Path:
    write_folder(root, n_per_class=n, size=size)
    shutil.rmtree(root / "masks")
    return root


def _masks(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "masks").rglob("*.png"))}


class Bright:
    """A cheap deterministic masker that logs each call (one line per image) to ``log``."""

    def __init__(self, log: Path, kill_at: int = 0):
        self.log, self.kill_at = str(log), kill_at

    def __call__(self, img):
        with open(self.log, "a") as f:
            f.write("x\n")
        if self.kill_at and sum(1 for _ in open(self.log)) >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a worker dies midway (OOM killer, node failure)
        return ((img.mean(2) > 128) * 255).astype(np.uint8)


def calls(log: Path) -> int:
    return sum(1 for _ in open(log)) if log.exists() else 0


def test_one_and_two_workers_write_identical_masks(tmp_path):
    """The default masker (GrabCut, whose OpenCV RNG advances per call) gives the same bytes in any process."""
    a, b = _folder(tmp_path / "a", n=(2, 1, 2)), _folder(tmp_path / "b", n=(2, 1, 2))
    ra = run_masks(str(a), masker=SaliencyMasker(), workers=1, progress=False)
    rb = run_masks(str(b), masker=SaliencyMasker(), workers=2, progress=False)
    assert ra.written == rb.written == 5 and ra.coverages == rb.coverages
    assert _masks(a) == _masks(b)
    assert (a / "masks_montage.png").is_file() and (b / "masks_montage.png").is_file()


class ThreadsSeen(Bright):
    """Logs, per image, the threads its process's OpenCV and BLAS pools would use."""

    def __call__(self, img):
        import cv2
        from threadpoolctl import threadpool_info

        import torch

        blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {cv2.getNumThreads()} {blas} {torch.get_num_threads()}\n")
        return ((img.mean(2) > 128) * 255).astype(np.uint8)


@pytest.mark.parametrize("workers", [1, 2])
def test_each_worker_runs_one_thread_and_the_caller_gets_its_pools_back(tmp_path, workers):
    """The worker processes are the parallelism: OpenCV's and numpy's BLAS pools at one thread in each (BLAS
    threads spinning beside 2 workers on 2 cores made 2 workers slower than 1); the inline (1-worker) path
    leaves torch's threads alone (a model masker's) and restores the caller's pools after the job."""
    cv2 = pytest.importorskip("cv2")
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    import torch

    with threadpool_limits(limits=2, user_api="blas"):  # a caller with 2-thread pools, as on a 2-core machine
        before_cv2, before_blas, before_torch = cv2.getNumThreads(), blas(), torch.get_num_threads()
        cv2.setNumThreads(2)
        torch.set_num_threads(2)
        try:
            run_masks(str(_folder(tmp_path / "d")), masker=ThreadsSeen(tmp_path / "log"), workers=workers,
                      progress=False, montage=None)
            seen = (tmp_path / "log").read_text().split("\n")[:-1]
            assert len(seen) == 8
            assert all(line.split()[1:3] == ["1", "[1]"] for line in seen), seen
            if workers == 1:  # torch's threads are a --model / CAM masker's to use in the 1-worker path
                assert all(line.split()[3] == "2" for line in seen), seen
            pids = {int(line.split()[0]) for line in seen}  # inline: this process; else the workers
            assert pids == {os.getpid()} if workers == 1 else (os.getpid() not in pids and len(pids) <= 2)
            assert cv2.getNumThreads() == 2 and blas() == before_blas and torch.get_num_threads() == 2
        finally:
            cv2.setNumThreads(before_cv2)
            torch.set_num_threads(before_torch)


def test_two_ranks_split_the_folder_and_rank0_merges(tmp_path):
    one, two = _folder(tmp_path / "one"), _folder(tmp_path / "two")
    run_masks(str(one), masker=Bright(tmp_path / "l1"), progress=False)
    r1 = run_masks(str(two), masker=Bright(tmp_path / "r1"), rank=1, world=2, progress=False)
    assert r1.written == 4 and calls(tmp_path / "r1") == 4 and (two / JOB_DIR).is_dir()
    r0 = run_masks(str(two), masker=Bright(tmp_path / "r0"), rank=0, world=2, progress=False)
    assert calls(tmp_path / "r0") == 4  # disjoint halves
    assert r0.written == 8 and len(r0.coverages) == 8 and r0.montage is not None
    assert _masks(one) == _masks(two) and not (two / JOB_DIR).exists()


def test_killed_worker_then_rerun_finishes_without_redoing_work(tmp_path):
    ref, src = _folder(tmp_path / "ref"), _folder(tmp_path / "src")
    run_masks(str(ref), masker=Bright(tmp_path / "ref.log"), progress=False)
    with pytest.raises(RuntimeError, match="worker process died.*rerun"):
        run_masks(str(src), masker=Bright(tmp_path / "k.log", kill_at=4), workers=2, progress=False)
    done = len(_masks(src))
    assert 0 < done < 8
    report = run_masks(str(src), masker=Bright(tmp_path / "rerun.log"), workers=2, progress=False)
    assert calls(tmp_path / "rerun.log") == 8 - done == report.written and report.skipped == done
    assert _masks(src) == _masks(ref)


@pytest.mark.slow
def test_shard_set_masks_column_from_two_ranks_equals_folder_masks(tmp_path):
    src = _folder(tmp_path / "src")
    write_shards(load_folder(str(src)), tmp_path / "sh", samples_per_shard=3, progress=False)
    run_masks(str(src), masker=SaliencyMasker(), progress=False)  # the folder's own masks, for reference
    run_masks(str(tmp_path / "sh"), masker=SaliencyMasker(), rank=1, world=2, workers=2, progress=False)
    assert not (tmp_path / "sh" / MASKS / "index.npz").exists()  # rank 0 writes the index when all are done
    r0 = run_masks(str(tmp_path / "sh"), masker=SaliencyMasker(), rank=0, world=2, progress=False)
    assert r0.written == 8
    got, folder = load_shards(tmp_path / "sh"), load_folder(str(src))
    assert [m.name for m in got.masks][:2] == ["000000000.mask.png", "000000001.mask.png"]
    for i in range(len(got)):
        assert bytes(member_bytes(got.masks[i])) == Path(folder.masks[i]).read_bytes()
    assert not list((tmp_path / "sh").glob("shard-*.tar.*"))  # image shards untouched
    # a rerun skips every finished mask shard
    again = run_masks(str(tmp_path / "sh"), masker=Bright(tmp_path / "again.log"), progress=False)
    assert again.skipped == 8 and again.written == 0 and calls(tmp_path / "again.log") == 0


def test_killed_shard_job_keeps_finished_shards(tmp_path):
    src = _folder(tmp_path / "src")
    write_shards(load_folder(str(src)), tmp_path / "sh", samples_per_shard=3, progress=False)
    with pytest.raises(RuntimeError, match="worker process died"):
        run_masks(str(tmp_path / "sh"), masker=Bright(tmp_path / "k.log", kill_at=5), workers=2, progress=False)
    done = sorted(p.name for p in (tmp_path / "sh" / MASKS).glob("shard-*.tar"))
    assert done == ["shard-000000.tar"]
    report = run_masks(str(tmp_path / "sh"), masker=Bright(tmp_path / "rerun.log"), workers=2, progress=False)
    assert calls(tmp_path / "rerun.log") == 5 and report.skipped == 3
    assert load_shards(tmp_path / "sh").masks is not None


def test_cli_masks_workers_as_a_user(tmp_path, capsys, monkeypatch):
    src = _folder(tmp_path / "src", n=(2, 1, 1))
    monkeypatch.chdir(tmp_path)
    assert cli(["masks", "src", "--workers", "2", "--method", "spectral", "--no-progress"]) == 0
    assert "4 masks written" in capsys.readouterr().out
    assert cli(["masks", "src", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert cli(["masks", "src", "--batch-size", "8"]) == 2
    assert "--batch-size batches a --model" in capsys.readouterr().err
    write_shards(load_folder(str(src)), tmp_path / "sh", progress=False)
    assert cli(["masks", "sh", "out"]) == 2
    assert "leave OUT out" in capsys.readouterr().err
    assert cli(["masks", "sh", "--no-progress"]) == 2  # the shards hold the folder's masks
    assert "hold masks from their source" in capsys.readouterr().err


def test_model_masks_batched_equal_one_by_one(tmp_path):
    """--model --batch-size: images of different sizes in one forward pass; each mask as the masker's own call."""
    import torch

    from cit_fast.data.masks.saliency import TorchMasker
    from tests.data.test_saliency import _RedIsObject

    torch.jit.script(_RedIsObject()).save(str(tmp_path / "sal.pt"))
    masker = TorchMasker(str(tmp_path / "sal.pt"), input_size=32, device="cpu")
    src = _folder(tmp_path / "src", n=(3, 2, 2))
    (src / "images" / "c0" / "c0_0.jpg").write_bytes(b"not a jpeg")  # a bad image among the batch
    with pytest.raises(Exception, match="1 image.*could not be read"):
        run_masks(str(src), masker=masker, batch_size=3, workers=2, progress=False)
    from PIL import Image

    from cit_fast.data.sources.records import decode_image

    imgs = sorted((src / "images").rglob("*.jpg"))[1:]
    assert len(imgs) == 6
    for img_path in imgs:
        mask = np.asarray(Image.open(src / "masks" / img_path.parent.name / f"{img_path.stem}.png"))
        assert np.array_equal(mask, masker(decode_image(str(img_path))))


@pytest.mark.distributed
@pytest.mark.slow
def test_masks_under_torchrun_two_ranks_equal_one_process(tmp_path):
    import subprocess

    one, two = _folder(tmp_path / "one", n=(2, 1, 2)), _folder(tmp_path / "two", n=(2, 1, 2))
    write_shards(load_folder(str(two)), tmp_path / "sh", samples_per_shard=2, progress=False)
    run_masks(str(one), masker=SaliencyMasker("spectral"), progress=False)
    launcher = Path(__file__).resolve().parents[2] / "launchers" / "masks_torchrun.sh"
    r = subprocess.run([str(launcher), "2", str(tmp_path / "sh"), "--method", "spectral", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "5 masks written" in r.stdout and "rank 1:" in r.stdout
    got = load_shards(tmp_path / "sh")
    folder = load_folder(str(one))
    assert all(bytes(member_bytes(got.masks[i])) == Path(folder.masks[i]).read_bytes() for i in range(len(got)))


def test_masks_throughput_benchmark_smoke(tmp_path, capsys):
    """bench/masks.py --throughput end to end on a few JPEGs: 1 and 2 workers alternated, byte-identical masks,
    the section written with the ratio per pair and how busy the cores were."""
    import importlib.util

    pytest.importorskip("cv2")
    path = Path(__file__).resolve().parents[2] / "bench" / "masks.py"
    spec = importlib.util.spec_from_file_location("bench_masks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = tmp_path / "r.md"
    assert mod.main(["--throughput", "--images", "6", "--repeats", "2", "--results-md", str(md)]) == 0
    text = md.read_text()
    assert "--throughput --images 6 --repeats 2" in text and "masks of 1 and 2 workers byte-identical: True" in text
    assert "per pair: " in text and "cores busy with other work before / after" in text
    out = capsys.readouterr().out
    assert out.count("1 worker(s): 6 masks") == 2 and out.count("2 worker(s): 6 masks") == 2
