"""The pipeline contract, checked on both implementations (torch, dali), with and without decode reuse.

Sharding, mid-epoch resume, the raw batch layout, and bad input (corrupt JPEG, wrong-size mask,
missing mask) giving a DataError that names the file.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cit_fast.data.pipelines.dali_pipeline import DaliPipeline
from cit_fast.data.pipelines.contract import PipelineSpec
from cit_fast.data.sources.records import DataError, SampleSet
from cit_fast.data.sources import load_folder
from cit_fast.data.pipelines.torch_pipeline import TorchPipeline

PIPELINES = {"torch": TorchPipeline, "dali": DaliPipeline}


def write_folder(root: Path, n_per_class=(5, 4, 6), size=(36, 44), seed: int = 0, fmt: str = "jpg") -> Path:
    """images/<class>/<name>.jpg (smooth colour fields + a little noise) and masks/<class>/<name>.png."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    for c, n in enumerate(n_per_class):
        name = f"c{c}"
        (root / "images" / name).mkdir(parents=True)
        (root / "masks" / name).mkdir(parents=True)
        for k in range(n):
            f = rng.uniform(4, 12, 3)
            img = np.stack([np.sin(x / f[j] + rng.random() * 6) * np.cos(y / f[(j + 1) % 3]) for j in range(3)], -1)
            img = np.clip(img * 90 + 128 + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "images" / name / f"{name}_{k}.{fmt}", quality=92)
            cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(0.2, 0.4) * h
            m = (((x - cx) ** 2 + (y - cy) ** 2) < r * r).astype(np.uint8) * 255
            Image.fromarray(m).save(root / "masks" / name / f"{name}_{k}.png")
    return root


def arrays_set(n=36, h=10, w=12, classes=3, seed=0) -> SampleSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    masks = (rng.random((n, h, w)) > 0.5).astype(np.uint8) * 255
    return SampleSet(images, masks, np.arange(n) % classes, [str(c) for c in range(classes)])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SampleSet:
    return load_folder(str(write_folder(tmp_path_factory.mktemp("contract"))))


RAW_KEYS = {"obj", "mask", "ctx", "ctx_mask", "flip", "label", "index", "partner"}


@pytest.mark.parametrize("kind", PIPELINES)
def test_raw_batch_layout(kind, files):
    spec = PipelineSpec(batch_size=4, plan="stratify_c", image_size=20, crop_padding=2)
    p = PIPELINES[kind](files, spec)
    raw = next(iter(p.raw_batches()))
    assert set(raw) == RAW_KEYS
    assert raw["obj"].shape == raw["ctx"].shape == (4, 20, 20, 3)
    assert raw["mask"].shape == raw["ctx_mask"].shape == (4, 20, 20)
    for k in ("obj", "mask", "ctx", "ctx_mask"):
        assert raw[k].dtype == torch.uint8
    assert raw["flip"].dtype == torch.bool and raw["index"].dtype == raw["partner"].dtype == torch.int64
    assert torch.equal(raw["label"], torch.from_numpy(files.labels[raw["index"].numpy()]))
    out = next(iter(PIPELINES[kind](files, spec)))
    assert out.image.shape == (4, 3, 20, 20) and out.image.dtype == torch.float32


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("kind", PIPELINES)
def test_two_ranks_see_every_index_once(kind, reuse):
    s = arrays_set(48)
    seen, lengths = [], []
    for rank in range(2):
        p = PIPELINES[kind](s, PipelineSpec(batch_size=6, plan="stratify_c", rank=rank, world_size=2,
                                            decode_reuse=reuse))
        p.set_epoch(3)
        lengths.append(len(p))
        batches = [b.index for b in p]
        assert len(batches) == len(p)
        seen += [int(i) for b in batches for i in b]
    assert lengths[0] == lengths[1] > 0
    assert len(seen) == len(set(seen))  # nobody twice
    if not reuse:
        assert sorted(seen) == list(range(48))
    else:  # decode reuse leaves out at most the samples that cannot fill a batch on every rank
        assert len(seen) >= 48 - 2 * 6


@pytest.mark.parametrize("kind", PIPELINES)
def test_two_ranks_on_files_equal_batch_counts(kind, files):
    n = len(files)  # 15: not a multiple of the world size
    seen, lengths = [], []
    for rank in range(2):
        p = PIPELINES[kind](files, PipelineSpec(batch_size=3, plan="stratify_c", image_size=16, rank=rank,
                                                world_size=2))
        lengths.append(len(p))
        seen += [int(i) for b in p for i in b.index]
    assert lengths[0] == lengths[1] == 8 // 3
    assert set(seen) <= set(range(n)) and len(seen) == 2 * lengths[0] * 3


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("kind", PIPELINES)
def test_resume_yields_exactly_the_remaining_batches(kind, reuse, files):
    spec = PipelineSpec(batch_size=4, plan="stratify_c", image_size=16, crop_padding=2, decode_reuse=reuse)
    full = PIPELINES[kind](files, spec)
    full.set_epoch(1)
    everything = list(full)
    assert len(everything) == len(full) >= 3
    part = PIPELINES[kind](files, spec)
    part.set_epoch(1)
    it = iter(part)
    for _ in range(2):
        next(it)
    state = part.state_dict()
    assert state == {"epoch": 1, "start_batch": 2}
    resumed = PIPELINES[kind](files, spec)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(everything) - 2
    for a, b in zip(rest, everything[2:]):
        assert torch.equal(a.index, b.index) and torch.equal(a.partner, b.partner)
        assert torch.equal(a.image, b.image)
    # the next epoch starts from its first batch
    resumed.set_epoch(2)
    assert len(list(resumed)) == len(resumed)


@pytest.mark.parametrize("kind", PIPELINES)
def test_eval_covers_every_sample_once_with_partial_batches(kind, files):
    seen = []
    for rank in range(2):
        p = PIPELINES[kind](files, PipelineSpec(batch_size=4, train=False, image_size=16, rank=rank, world_size=2))
        seen += [int(i) for b in p for i in b.index]
    assert sorted(seen) == list(range(len(files)))


def _copy_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "bad", n_per_class=(3, 3), size=(24, 28), seed=5)


@pytest.mark.parametrize("kind", PIPELINES)
def test_corrupt_jpeg_is_named(kind, tmp_path):
    root = _copy_folder(tmp_path)
    s = load_folder(str(root))
    bad = Path(s.images[4])
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # truncated after loading
    p = PIPELINES[kind](s, PipelineSpec(batch_size=6, plan="none", hflip=False))
    with pytest.raises(DataError, match=bad.name):
        list(p)


@pytest.mark.parametrize("kind", PIPELINES)
def test_garbage_image_is_named(kind, tmp_path):
    root = _copy_folder(tmp_path)
    s = load_folder(str(root))
    Path(s.images[1]).write_bytes(b"\xff\xd8 this is not a jpeg" * 8)
    with pytest.raises(DataError, match=Path(s.images[1]).name):
        list(PIPELINES[kind](s, PipelineSpec(batch_size=3, plan="none", image_size=16)))


@pytest.mark.parametrize("kind", PIPELINES)
def test_mask_of_wrong_size_is_named(kind, tmp_path):
    root = _copy_folder(tmp_path)
    s = load_folder(str(root))
    Image.fromarray(np.zeros((20, 28), np.uint8)).save(s.masks[2])  # after the load-time check
    # even when both are resized to the same output size, the mismatch is caught
    p = PIPELINES[kind](s, PipelineSpec(batch_size=6, plan="none", image_size=16))
    with pytest.raises(DataError, match=rf"{Path(s.masks[2]).name}.*does not match"):
        list(p)


@pytest.mark.parametrize("kind", PIPELINES)
def test_missing_mask_is_named(kind, tmp_path):
    root = _copy_folder(tmp_path)
    s = load_folder(str(root))
    Path(s.masks[3]).unlink()
    with pytest.raises(DataError, match=rf"{Path(s.masks[3]).name}.*not found"):
        list(PIPELINES[kind](s, PipelineSpec(batch_size=6, plan="none", image_size=16)))


def test_missing_mask_is_caught_when_loading(tmp_path):
    root = _copy_folder(tmp_path)
    victim = next((root / "masks" / "c1").glob("*.png"))
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        load_folder(str(root))


@pytest.mark.parametrize("kind", PIPELINES)
def test_build_pipeline_from_config(kind, files, tmp_path):
    from cit_fast.data.build import build_pipeline
    from cit_fast.config import load_config

    cfg = load_config(None, [f"data.pipeline={kind}", "data.source=folder", f"data.train={tmp_path}",
                             "data.image_size=16", "data.batch_size=4", "intervention.plan=stratify_c",
                             "data.decode_reuse=true"])
    p = build_pipeline(files, cfg, train=True)
    assert isinstance(p, PIPELINES[kind]) and p.spec.decode_reuse
    b = next(iter(p))
    assert b.image.shape == (4, 3, 16, 16)
    assert set(b.partner.tolist()) <= set(b.index.tolist())  # partners in the batch
    with pytest.raises(ValueError, match="decode_reuse"):
        build_pipeline(files, load_config(None, ["intervention.plan=stratify_b", "data.decode_reuse=true"]),
                       train=True)
