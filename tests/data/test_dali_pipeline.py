"""DALI pipeline: the same batches as the torch pipeline (equivalence), shared crops, GPU decoding."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cit_fast.data.pipelines.dali_pipeline import DaliPipeline
from cit_fast.data.pipelines.contract import PipelineSpec, crop_batch
from cit_fast.data.sources.records import DataError, SampleSet
from cit_fast.data.sources import load_folder
from cit_fast.data.pipelines.torch_pipeline import TorchPipeline
from tests.data.test_pipeline_contract import arrays_set, write_folder
from tests.helpers import assert_close
from tests.helpers import assert_same_batch

IMAGES = ("obj", "mask", "ctx", "ctx_mask")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SampleSet:
    return load_folder(str(write_folder(tmp_path_factory.mktemp("dali"), n_per_class=(6, 5, 7))))


def both(samples, spec, epoch=0):
    out = []
    for cls in (TorchPipeline, DaliPipeline):
        p = cls(samples, spec)
        p.set_epoch(epoch)
        out.append(list(p.raw_batches()))
    return out


def assert_same_batches(a, b, atol, mean_atol, edge_atol=None):
    """Same samples; pixels within atol, except that a hard 0/255 mask edge may differ by up to
    edge_atol at < 1% of the pixels after resizing (DALI's tabulated triangle filter vs torch's)."""
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for k in ("index", "partner", "label", "flip"):
            assert torch.equal(x[k], y[k]), k
        for k in IMAGES:
            assert x[k].shape == y[k].shape and x[k].dtype == y[k].dtype == torch.uint8, k
            diff = (y[k].float() - x[k].float()).abs()
            if edge_atol is None:
                assert_close(y[k], x[k], atol=atol, rtol=0, name=k)
            else:
                assert_close(y[k], x[k], atol=edge_atol, rtol=0, name=k)
                assert (diff > atol).float().mean() < 0.01, (k, int((diff > atol).sum()))
            assert diff.mean() <= mean_atol, k


@pytest.mark.parametrize("image_size, atol, mean_atol, edge_atol", [(0, 1, 0.05, None), (24, 3, 0.5, 24)])
def test_equivalent_to_torch_pipeline_on_jpeg_files(files, image_size, atol, mean_atol, edge_atol):
    """Augmentation off, same plan: same samples, pixels within JPEG-decoder/resize tolerance."""
    spec = PipelineSpec(batch_size=4, plan="stratify_c", hflip=False, image_size=image_size)
    a, b = both(files, spec, epoch=2)
    assert_same_batches(a, b, atol, mean_atol, edge_atol)


def test_equivalent_with_augmentation_and_decode_reuse(files):
    """Crops and flips are pure functions of (seed, epoch, index): both pipelines apply the same ones."""
    spec = PipelineSpec(batch_size=6, plan="stratify_c", image_size=20, crop_padding=3, hflip=True,
                        decode_reuse=True)
    a, b = both(files, spec, epoch=1)
    assert any(x["flip"].any() for x in a)
    assert_same_batches(a, b, 3, 0.5, 24)


def test_equivalent_on_arrays_exactly():
    s = arrays_set(30)
    for spec in (PipelineSpec(batch_size=5, plan="random", crop_padding=2),
                 PipelineSpec(batch_size=5, plan="stratify_c", output="double", epochwise=True)):
        a, b = both(s, spec)
        assert_same_batches(a, b, 0, 0)
        ta, tb = TorchPipeline(s, spec), DaliPipeline(s, spec)
        for x, y in zip(ta, tb):
            assert_same_batch(x, y)


@pytest.mark.parametrize("pad, size", [(1, (5, 7)), (3, (9, 4)), (4, (16, 16))])
def test_crop_batch_matches_reflect_pad_crop(pad, size):
    rng = np.random.default_rng(pad)
    x = torch.from_numpy(rng.integers(0, 256, (6, *size, 3), dtype=np.uint8))
    off = torch.from_numpy(rng.integers(0, 2 * pad + 1, (6, 2)))
    got = crop_batch(x, pad, off)
    got_mask = crop_batch(x[..., 0], pad, off)
    for b in range(6):
        dy, dx = map(int, off[b])
        h, w = size
        want = np.pad(x[b].numpy(), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")[dy:dy + h, dx:dx + w]
        assert np.array_equal(got[b].numpy(), want)
        assert np.array_equal(got_mask[b].numpy(), want[..., 0])


def test_image_and_its_mask_share_the_crop(tmp_path):
    """An object drawn exactly under its mask stays exactly under it after crop and resize."""
    root = tmp_path / "sq"
    for c in ("a", "b"):
        (root / "images" / c).mkdir(parents=True)
        (root / "masks" / c).mkdir(parents=True)
        for k in range(4):
            img = np.zeros((24, 24, 3), np.uint8)
            m = np.zeros((24, 24), np.uint8)
            img[4 + k:14 + k, 6:16] = 255
            m[4 + k:14 + k, 6:16] = 255
            Image.fromarray(img).save(root / "images" / c / f"{k}.png")
            Image.fromarray(m).save(root / "masks" / c / f"{k}.png")
    s = load_folder(str(root))
    raw = next(iter(DaliPipeline(s, PipelineSpec(batch_size=8, plan="stratify_c", crop_padding=4)).raw_batches()))
    assert torch.equal(raw["obj"][..., 0], raw["mask"]) and torch.equal(raw["ctx"][..., 1], raw["ctx_mask"])
    assert len({m.numpy().tobytes() for m in raw["mask"]}) > 4  # crops differ


def test_abandoned_epoch_then_next_epoch(files):
    spec = PipelineSpec(batch_size=4, plan="stratify_c", image_size=16)
    p = DaliPipeline(files, spec)
    p.set_epoch(0)
    it = iter(p)
    next(it)
    it.close()  # a training loop that stops early (max steps); prefetched batches must not leak
    p.set_epoch(1)
    got = [b.index for b in p]
    ref = TorchPipeline(files, spec)
    ref.set_epoch(1)
    want = [b.index for b in ref]
    assert len(got) == len(want) and all(torch.equal(x, y) for x, y in zip(got, want))
    p.set_epoch(2)  # and a full epoch after a full epoch, on the same DALI pipeline
    ref.set_epoch(2)
    got = [(b.index, b.image) for b in p]
    want = [(b.index, b.image) for b in ref]
    assert len(got) == len(want) == len(p)
    assert all(torch.equal(a[0], b[0]) and (a[1] - b[1]).abs().max() < 0.2 for a, b in zip(got, want))


def test_without_masks_everything_is_object(files):
    s = SampleSet(files.images, None, files.labels, files.classes)
    raw = next(iter(DaliPipeline(s, PipelineSpec(batch_size=4, plan="none", image_size=16)).raw_batches()))
    assert (raw["mask"] == 255).all() and (raw["ctx_mask"] == 255).all()


def test_grey_and_rgba_png_images_become_rgb(tmp_path):
    root = tmp_path / "modes"
    for c, mode in (("grey", "L"), ("rgba", "RGBA")):
        (root / "images" / c).mkdir(parents=True)
        (root / "masks" / c).mkdir(parents=True)
        for k in range(2):
            arr = np.random.default_rng(k).integers(0, 256, (12, 10, len(mode)), dtype=np.uint8)
            Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(root / "images" / c / f"{k}.png")
            Image.fromarray(np.full((12, 10), 255, np.uint8)).save(root / "masks" / c / f"{k}.png")
    s = load_folder(str(root))
    spec = PipelineSpec(batch_size=4, plan="none", hflip=False)
    a, b = both(s, spec)
    assert_same_batches(a, b, 0, 0)


def test_images_of_different_sizes_need_image_size(tmp_path):
    root = write_folder(tmp_path / "a", n_per_class=(2, 2), size=(20, 24))
    extra = write_folder(tmp_path / "b", n_per_class=(2,), size=(30, 24), seed=3)
    for f in (extra / "images" / "c0").iterdir():
        f.rename(root / "images" / "c1" / ("x" + f.name))
    for f in (extra / "masks" / "c0").iterdir():
        f.rename(root / "masks" / "c1" / ("x" + f.name))
    s = load_folder(str(root))
    with pytest.raises(DataError, match="image_size"):
        list(DaliPipeline(s, PipelineSpec(batch_size=6, plan="none")))
    assert len(list(DaliPipeline(s, PipelineSpec(batch_size=6, plan="none", image_size=16)))) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the lent device)")
def test_mixed_gpu_decoding_matches_cpu(files):
    spec_cpu = PipelineSpec(batch_size=4, plan="stratify_c", image_size=24, crop_padding=2, decode_reuse=True)
    spec_gpu = PipelineSpec(batch_size=4, plan="stratify_c", image_size=24, crop_padding=2, decode_reuse=True,
                            device=torch.device("cuda"))
    cpu = list(DaliPipeline(files, spec_cpu).raw_batches())
    gpu = list(DaliPipeline(files, spec_gpu).raw_batches())
    assert gpu[0]["obj"].is_cuda
    assert_same_batches(cpu, [{k: v.cpu() for k, v in b.items()} for b in gpu], 4, 1.0, 32)
    out = next(iter(DaliPipeline(files, spec_gpu)))
    assert out.image.is_cuda and out.image.shape == (4, 3, 24, 24)


def test_dropping_a_pipeline_frees_dali_at_once():
    """No reference cycle through the DALI callback: DALI's threads go with the DaliPipeline, not at
    some later garbage collection (which could run in a forked DataLoader worker)."""
    import gc
    import weakref

    gc.disable()
    try:
        p = DaliPipeline(arrays_set(24), PipelineSpec(batch_size=4, plan="stratify_c", image_size=8))
        assert len(list(p)) == len(p)
        dali_ref, ref = weakref.ref(p._pipe), weakref.ref(p)
        del p
        assert ref() is None and dali_ref() is None
    finally:
        gc.enable()
