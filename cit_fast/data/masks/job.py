"""The mask job at scale: worker processes on one machine, ranks across machines, restartable.

``run_masks(src, out, masker, workers=N)`` computes the masks of a folder dataset or of a shard set
(``data/sources/shards.py``). Under torchrun or SLURM (RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS),
rank r of W takes images r, r+W, r+2W, ... of a folder, or whole shards k with k % W == r of a shard
set; each rank runs its ``workers`` processes. Every output is written atomically (a mask file; a
mask shard, then its part of the index), and what exists is skipped, so a job killed at any point
continues where it stopped. Each rank leaves a summary of its part; rank 0 waits for all of them and
merges the coverage summary and the montage (and, for shards, the masks column's index).

A mask is a function of its image alone: the masker's random state (OpenCV's, numpy's) is reset
before each image, so 1 or N workers, 1 or W ranks, give the same bytes. A ``--model`` masker runs
batched (``batch_size`` images per forward pass) in the rank's main process, the images decoded by
``workers`` threads.
"""
from __future__ import annotations

import copyreg
import io
import json
import os
import signal
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ...errors import DataError, UsageError
from ...utils import atomic_path, atomic_write_bytes, atomic_write_text, dist_info
from ..sources.records import decode_image
from ..sources.shards import INDEX, MASKS, PARTS, ShardIndex, TarOut, is_shard_dir, sample_key, shard_name
from .quality import coverage, spread, write_montage
from .outputs import MONTAGE_TILES, UMASK, MaskReport, find_images, mask_layout, montage_path, thumbnail
from .saliency import SaliencyMasker

JOB_DIR = ".cit-fast-masks-job"  # the ranks' summaries, beside the montage; removed by rank 0 when merged
WAIT_S = float(os.environ.get("CIT_FAST_MASKS_WAIT_S", 7 * 24 * 3600))  # rank 0 waits this long for the others

_MASKER = None  # the masker of a worker process (pickled into it when the pool starts)


def _init_worker(masker) -> None:
    global _MASKER
    _MASKER = masker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the job through its main process
    _one_thread()


def _one_thread(torch_too: bool = True) -> Callable[[], None]:
    """One thread per worker: the worker processes are the parallelism. OpenCV's, the BLAS libraries' and
    torch's pools would otherwise oversubscribe the cores (numpy's OpenBLAS spun a thread per core on the
    Lab conversion's small matmul, for no gain: 2 workers ran slower than 1). ``torch_too=False`` (the
    1-worker path) leaves torch's own threads to a --model or CAM masker. Returns what restores them."""
    undo = []
    try:
        import cv2

        n = cv2.getNumThreads()
        cv2.setNumThreads(1)
        undo.append(lambda: cv2.setNumThreads(n))
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=1, user_api=None if torch_too else "blas")
        undo.append(limits.restore_original_limits)
    except ImportError:  # the masks extra brings it; without it, numpy's BLAS keeps its threads
        pass
    torch = sys.modules.get("torch")  # only where a --model masker brought it: importing it costs a worker ~2 s
    if torch is not None and torch_too:
        t = torch.get_num_threads()
        torch.set_num_threads(1)
        undo.append(lambda: torch.set_num_threads(t))

    def restore() -> None:
        for f in reversed(undo):
            f()
    return restore


def _reset_rng() -> None:
    """Each mask from a fresh random state: the same bytes whichever process, in whatever order."""
    np.random.seed(0)
    try:
        import cv2

        cv2.setRNGSeed(0)
    except ImportError:
        pass


def _mask_of(masker, img: np.ndarray, class_name: str, where: str) -> np.ndarray:
    _reset_rng()
    m = masker(img, class_name) if getattr(masker, "uses_class", False) else masker(img)
    if m.shape != img.shape[:2] or m.dtype != np.uint8:
        raise DataError(f"masks: the mask maker returned {m.dtype} {m.shape} for {where} "
                        f"({img.shape[1]}x{img.shape[0]}); expected uint8 of the image's size")
    return m


def _png(m: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(m).save(buf, format="PNG")
    return buf.getvalue()


def _task(job: Tuple) -> dict:
    """One image in a worker: decode, mask, (folder) write the mask file; what the summary needs."""
    ref, key, target, class_name, tile = job
    try:
        img = decode_image(ref)
    except DataError as e:
        return {"key": key, "ref": str(ref), "failed": str(e)}
    m = _mask_of(_MASKER, img, class_name, str(ref))
    return _finish(img, m, key, ref, target, tile)


def _finish(img, m, key, ref, target, tile) -> dict:
    out = {"key": key, "ref": str(ref), "coverage": coverage(m), "empty": not m.any(), "full": bool(m.all())}
    if target:
        with atomic_path(Path(target)) as tmp:
            Image.fromarray(m).save(tmp, format="PNG")
            tmp.chmod(0o666 & ~UMASK)  # mkstemp makes it private; a mask is as readable as its image
        out["target"] = str(target)
    else:
        out["png"] = _png(m)
    if tile:
        out["tile"] = (thumbnail(img), thumbnail(m))
    return out


def _model_batches(jobs: Sequence[Tuple], masker, batch_size: int, threads: int) -> Iterator[dict]:
    """A --model masker (``TorchMasker.batch``): images decoded by threads, ``batch_size`` per forward pass."""
    def load(job):
        try:
            return decode_image(job[0]), None
        except DataError as e:
            return None, str(e)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        for lo in range(0, len(jobs), batch_size):
            chunk = jobs[lo:lo + batch_size]
            loaded = list(pool.map(load, chunk))
            for job, (img, err) in zip(chunk, loaded):
                if err is not None:
                    yield {"key": job[1], "ref": str(job[0]), "failed": err}
            ok = [(job, img) for job, (img, err) in zip(chunk, loaded) if img is not None]
            if ok:
                masks = masker.batch([img for _, img in ok])
                for (job, img), m in zip(ok, masks):
                    yield _finish(img, m, job[1], job[0], job[2], job[4])


def _results(jobs: Sequence[Tuple], masker, workers: int, batch_size: int, progress: bool) -> Iterator[dict]:
    """Each job's result, in order: inline, in ``workers`` processes, or batched through a --model."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="masks", unit="img", disable=not progress)
    try:
        if hasattr(masker, "batch") and batch_size > 1:
            for r in _model_batches(jobs, masker, batch_size, workers):
                bar.update(1)
                yield r
            return
        if workers <= 1 or len(jobs) <= 1:
            _init_worker_inline(masker)
            restore = _one_thread(torch_too=False)  # no spinning BLAS threads; torch's are a model's
            try:
                for job in jobs:
                    bar.update(1)
                    yield _task(job)
            finally:
                restore()
            return
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context(_start_method(masker)),
                                 initializer=_init_worker, initargs=(masker,)) as pool:
            try:
                for r in pool.map(_task, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers)))):
                    bar.update(1)
                    yield r
            except BrokenProcessPool:
                raise RuntimeError(f"masks: a worker process died (killed, or out of memory); the masks written so "
                                   f"far are kept: rerun the same command to compute the rest") from None
    finally:
        bar.close()


def _start_method(masker) -> str:
    """spawn where the masker pickles (the saliency methods): a process that has run DALI or OpenCV's
    thread pools (a notebook, a test session) can leave locks held in a forked child, which then
    hangs; fork otherwise (a TorchScript model does not pickle: the workers inherit it)."""
    import pickle

    try:
        pickle.dumps(masker)
        return "spawn"
    except Exception:
        return "fork"


def _saliency_masker(*fields_):
    return SaliencyMasker(*fields_)


# a SaliencyMasker holds the cv2 module: rebuilt from its fields in a spawned worker
copyreg.pickle(SaliencyMasker, lambda m: (_saliency_masker, tuple(getattr(m, f.name) for f in fields(m))))


def _init_worker_inline(masker) -> None:
    global _MASKER
    _MASKER = masker


def _summary(results: Iterator[dict], report: MaskReport, tiles: list) -> None:
    for r in results:
        if "failed" in r:
            report.failed[r["ref"]] = r["failed"]
            continue
        report.written += 1
        report.coverages.append(r["coverage"])
        where = r.get("target", r["ref"])
        if r["empty"]:
            report.empty.append(where)
        elif r["full"]:
            report.full.append(where)
        if "tile" in r:
            img, m = r["tile"]
            tiles.append((img, m, f"{r['key']} {100 * r['coverage']:.0f}%"))


# -- the ranks' summaries -----------------------------------------------------------------------------
def _run_id() -> str:
    env = os.environ
    run = env.get("TORCHELASTIC_RUN_ID") or env.get("SLURM_JOB_ID") or "local"
    return f"{run}.{env.get('TORCHELASTIC_RESTART_COUNT') or env.get('SLURM_RESTART_COUNT') or 0}"


def _save_part(job_dir: Path, rank: int, report: MaskReport, tiles: list) -> None:
    d = {k: v for k, v in asdict(report).items() if k not in ("masks_root", "montage")}
    d["run"] = _run_id()
    buf = io.BytesIO()
    np.savez(buf, **{f"t{i}_{part}": x for i, t in enumerate(tiles) for part, x in zip(("img", "mask"), t[:2])},
             labels=np.array([t[2] for t in tiles] or [""]))
    atomic_write_bytes(job_dir / f"rank-{rank:05d}.tiles.npz", buf.getvalue())
    atomic_write_text(job_dir / f"rank-{rank:05d}.json", json.dumps(d))


def _merge_parts(job_dir: Path, world: int, report: MaskReport, show: bool) -> list:
    """Rank 0: wait for every rank's summary of this run, add them to ``report``; their montage tiles."""
    deadline = time.monotonic() + WAIT_S
    waiting_said = False
    tiles = []
    for r in range(1, world):
        f = job_dir / f"rank-{r:05d}.json"
        while True:
            if f.is_file():
                part = json.loads(f.read_text())
                if part.get("run") == _run_id():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"masks: rank {r} left no summary in {job_dir} after {WAIT_S:.0f} s; its masks "
                                   f"are kept, rerun the job to finish")
            if show and not waiting_said:
                print(f"masks: rank 0 done, waiting for the other ranks' summaries in {job_dir}", file=sys.stderr)
                waiting_said = True
            time.sleep(1.0)
        report.written += part["written"]
        report.skipped += part["skipped"]
        report.empty += part["empty"]
        report.full += part["full"]
        report.failed.update(part["failed"])
        report.coverages += part["coverages"]
        with np.load(job_dir / f"rank-{r:05d}.tiles.npz") as z:
            labels = [str(x) for x in z["labels"]]
            tiles += [(z[f"t{i}_img"], z[f"t{i}_mask"], labels[i]) for i in range(len(labels)) if f"t{i}_img" in z]
    return tiles


def _finish_report(report: MaskReport, tiles: list, montage, default_montage: Path, job_dir: Path) -> MaskReport:
    tiles.sort(key=lambda t: t[2])  # by key: the same montage whichever rank drew a tile
    if tiles and montage is not None:
        report.montage = write_montage(tiles, Path(montage) if montage else default_montage)
    if job_dir.is_dir():
        for f in job_dir.iterdir():
            f.unlink()
        job_dir.rmdir()
    if report.failed:
        lines = "; ".join(list(report.failed.values())[:5])
        raise DataError(f"masks: {len(report.failed)} image(s) could not be read, the rest are done "
                        f"({report.summary()}): {lines}")
    return report


# -- the job ---------------------------------------------------------------------------------------------
def run_masks(src: str, out: Optional[str] = None, masker: Optional[Callable] = None, *, workers: int = 1,
              batch_size: int = 1, overwrite: bool = False, progress: Optional[bool] = None,
              montage: Optional[str | Path] = "", rank: Optional[int] = None,
              world: Optional[int] = None) -> MaskReport:
    """Masks for every image of ``src`` (a folder dataset or a shard set) that lacks one; see the module doc.

    rank/world: this process's part (default: from the torchrun / SLURM environment). Rank 0 returns the
    merged report (its montage written), other ranks their own part.
    """
    if workers < 1:
        raise UsageError(f"--workers: expected at least 1, got {workers}")
    if batch_size < 1:
        raise UsageError(f"--batch-size: expected at least 1, got {batch_size}")
    env_rank, env_world, _ = dist_info()
    rank, world = (env_rank if rank is None else rank), (env_world if world is None else world)
    if not 0 <= rank < world:
        raise UsageError(f"masks: rank {rank} is not in 0..{world - 1}")
    masker = masker if masker is not None else SaliencyMasker()
    dev = getattr(masker, "device", None)
    if workers > 1 and getattr(dev, "type", "cpu") == "cuda" and batch_size == 1:
        raise UsageError("--workers with a model on the GPU: batch it with --batch-size instead (one process per "
                         "GPU; for more GPUs, more ranks under torchrun / SLURM)")
    show = sys.stderr.isatty() if progress is None else progress
    if is_shard_dir(src):
        if out:
            raise UsageError(f"masks: the masks of the shard set {src} go beside its image shards ({src}/{MASKS}/); "
                             f"leave OUT out")
        return _shard_masks(Path(src), masker, workers, batch_size, overwrite, show, montage, rank, world)
    layout = mask_layout(src, out)
    images = find_images(layout)
    shown = set(spread([k for _, k in images], MONTAGE_TILES)) if montage is not None else set()
    report = MaskReport(masks_root=layout.masks_root)
    jobs = []
    for i in range(rank, len(images), world):
        img_path, key = images[i]
        target = layout.mask_path(img_path)
        if target.is_file() and not overwrite:
            report.skipped += 1
        else:
            jobs.append((str(img_path), key, str(target), img_path.parent.name, i in shown))
    tiles: list = []
    _summary(_results(jobs, masker, workers, batch_size, show), report, tiles)
    return _ranks_done(report, tiles, montage, montage_path(layout), montage_path(layout).parent / JOB_DIR,
                       rank, world, show)


def _ranks_done(report, tiles, montage, default_montage: Path, job_dir: Path, rank: int, world: int,
                show: bool) -> MaskReport:
    if world == 1:
        return _finish_report(report, tiles, montage, default_montage, job_dir)
    if rank != 0:
        _save_part(job_dir, rank, report, tiles)
        return report
    tiles += _merge_parts(job_dir, world, report, show)
    return _finish_report(report, tiles, montage, default_montage, job_dir)


def _shard_masks(root: Path, masker, workers: int, batch_size: int, overwrite: bool, show: bool, montage,
                 rank: int, world: int) -> MaskReport:
    """Mask shards ``root/masks/shard-K.tar`` (members ``KEY.mask.png``, the image shards' keys), each
    written whole then recorded in ``root/masks/.parts/``; rank 0 writes ``root/masks/index.npz``."""
    idx = ShardIndex.load(root / INDEX)
    if idx.has_masks:
        raise UsageError(f"masks: the shards in {root} hold masks from their source already; shard a source "
                         f"without masks, or train with the ones they hold")
    mroot = root / MASKS
    parts = mroot / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    if overwrite and rank == 0 and (mroot / INDEX).is_file():
        (mroot / INDEX).unlink()
    refs = idx.column("image")
    labels = idx.columns["labels"]
    shown = set(spread([f"{idx.classes[int(y)] if labels.ndim == 1 else 's'}/{sample_key(i)}"
                        for i, y in enumerate(labels)], MONTAGE_TILES)) if montage is not None else set()
    report = MaskReport(masks_root=mroot)
    tiles: list = []
    for k in range(rank, len(idx.shards), world):
        info = idx.shards[k]
        name = shard_name(k)
        part = parts / f"{k:06d}.npz"
        if not overwrite and part.is_file() and (mroot / name).is_file():
            report.skipped += info["count"]
            continue
        rows = range(info["first"], info["first"] + info["count"])
        jobs = [(refs[i], sample_key(i), "", idx.classes[int(labels[i])] if labels.ndim == 1 else "", i in shown)
                for i in rows]
        results = list(_results(jobs, masker, workers, batch_size, show))
        bad = [r for r in results if "failed" in r]
        if bad:  # a mask shard is whole or absent
            report.failed.update({r["ref"]: r["failed"] for r in bad})
            continue
        with atomic_path(mroot / name) as tmp:
            t = TarOut(tmp)
            loc = [t.add(f"{r['key']}.mask.png", r["png"]) for r in results]
            size = t.close()
        buf = io.BytesIO()
        np.savez(buf, mask=np.asarray(loc, np.int64).reshape(-1, 2),
                 mask_crc=np.asarray([zlib.crc32(r["png"]) for r in results], np.uint32),
                 meta=np.frombuffer(json.dumps({"name": name, "bytes": size, "first": info["first"],
                                                "count": info["count"]}).encode(), np.uint8))
        atomic_write_bytes(part, buf.getvalue())
        for r in results:
            r.pop("png")
            r["target"] = f"{mroot / name}[{r['key']}.mask.png]"
        _summary(iter(results), report, tiles)
    job_dir = mroot / JOB_DIR
    if world > 1 and rank != 0:
        return _ranks_done(report, tiles, montage, mroot / "masks_montage.png", job_dir, rank, world, show)
    if world > 1:
        tiles += _merge_parts(job_dir, world, report, show)
    if not report.failed:
        _write_mask_index(idx, mroot)
    return _finish_report(report, tiles, montage, mroot / "masks_montage.png", job_dir)


def _write_mask_index(idx: ShardIndex, mroot: Path) -> None:
    """The masks column's index, from every mask shard's part (all ranks done)."""
    parts = mroot / PARTS
    shards, mask, crc = [], [], []
    for k in range(len(idx.shards)):
        f = parts / f"{k:06d}.npz"
        if not f.is_file():
            raise RuntimeError(f"masks: {f} missing after every rank finished; rerun the job")
        with np.load(f) as z:
            info = json.loads(bytes(z["meta"]).decode())
            mask.append(z["mask"])
            crc.append(z["mask_crc"])
        shards.append(info)
    cols = {"shard": idx.columns["shard"], "labels": idx.columns["labels"], "strata": idx.columns["strata"],
            "bias": idx.columns["bias"], "mask": np.concatenate(mask), "mask_crc": np.concatenate(crc),
            "mask_ext": np.zeros(idx.n, np.uint8)}
    ShardIndex(mroot, shards, list(idx.classes), ["png"], cols, source=str(idx.root)).save(mroot / INDEX)
