import os

import numpy as np
import pytest
import torch

from cit_fast.data.pipelines.contract import PipelineSpec
from cit_fast.data.sources.records import SampleSet
from cit_fast.data.pipelines.torch_pipeline import TorchPipeline
from cit_fast.kernels import composite_ref
from tests.helpers import assert_same_batch

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def make_set(n=24, h=8, w=6, classes=3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    masks[:, 2:6, 1:4] = 255
    return SampleSet(images, masks, np.arange(n) % classes, [str(c) for c in range(classes)])


def denorm(x):
    return (x.permute(0, 2, 3, 1) * torch.tensor(STD) + torch.tensor(MEAN)) * 255


def test_stratify_c_composite_pastes_object_on_partner_context():
    s = make_set()
    p = TorchPipeline(s, PipelineSpec(batch_size=8, plan="stratify_c", hflip=False, mean=MEAN, std=STD))
    p.set_epoch(1)
    for b in p:
        img = denorm(b.image).round().to(torch.uint8).numpy()
        i, j = b.index.numpy(), b.partner.numpy()
        assert (s.labels[j] == s.labels[i]).all()
        inside = s.masks[0] == 255
        assert (img[:, inside] == s.images[i][:, inside]).all()  # object pixels from i
        assert (img[:, ~inside] == s.images[j][:, ~inside]).all()  # context pixels from j


def test_epochwise_gives_original_beside_intervened():
    s = make_set()
    p = TorchPipeline(s, PipelineSpec(batch_size=8, plan="random", epochwise=True, hflip=False, mean=MEAN, std=STD))
    b = next(iter(p))
    orig = denorm(b.original).round().to(torch.uint8).numpy()
    assert (orig == s.images[b.index.numpy()]).all()
    assert not torch.equal(b.original, b.image)


def test_double_output():
    s = make_set()
    p = TorchPipeline(s, PipelineSpec(batch_size=8, plan="stratify_c", output="double", hflip=False,
                                      mean=MEAN, std=STD))
    b = next(iter(p))
    content, context = denorm(b.content), denorm(b.context)
    inside = torch.from_numpy(s.masks[0] == 255)
    assert (content[:, ~inside].abs() < 1e-3).all()  # content keeps only the object
    assert (context[:, inside].abs() < 1e-3).all()  # context has the partner's object removed


def test_flip_and_crop_shared_by_image_and_mask():
    """Crop + flip move an image and its own mask together: the object stays under the mask."""
    n, h, w = 16, 10, 10
    images = np.zeros((n, h, w, 3), np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    images[:, 3:6, 1:4] = 200
    masks[:, 3:6, 1:4] = 255
    s = SampleSet(images, masks, np.zeros(n, np.int64), ["x"])
    spec = PipelineSpec(batch_size=16, plan="none", crop_padding=2, hflip=True, mean=(0, 0, 0), std=(1, 1, 1))
    p = TorchPipeline(s, spec)
    raw = next(iter(p.raw_batches()))
    obj, mask = raw["obj"].numpy(), raw["mask"].numpy()
    assert ((obj[..., 0] == 200) == (mask == 255)).all()
    assert len({m.tobytes() for m in mask}) > 1  # crops differ between samples
    out = next(iter(TorchPipeline(s, spec))).image
    flip = raw["flip"].numpy()
    assert flip.any() and (~flip).any()
    expect = torch.where(torch.from_numpy(flip)[:, None, None, None],
                         torch.from_numpy(obj).float().flip(2), torch.from_numpy(obj).float()) / 255
    assert torch.allclose(out.permute(0, 2, 3, 1), expect)


def test_matches_reference_composite():
    s = make_set()
    spec = PipelineSpec(batch_size=8, plan="stratify_c", mean=MEAN, std=STD)
    p = TorchPipeline(s, spec)
    raw = next(iter(p.raw_batches()))
    out = next(iter(TorchPipeline(s, spec))).image
    ref = composite_ref(raw["obj"], raw["mask"], raw["ctx"], flip=raw["flip"], mean=MEAN, std=STD)
    assert torch.equal(out, ref)


def test_resume_mid_epoch_yields_the_remaining_batches():
    s = make_set(40)
    spec = PipelineSpec(batch_size=6, plan="stratify_c", crop_padding=1)
    full = TorchPipeline(s, spec)
    full.set_epoch(2)
    all_batches = [b for b in full]
    part = TorchPipeline(s, spec)
    part.set_epoch(2)
    it = iter(part)
    for _ in range(3):
        next(it)
    state = part.state_dict()
    assert state == {"epoch": 2, "start_batch": 3}
    resumed = TorchPipeline(s, spec)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(all_batches) - 3
    for a, b in zip(rest, all_batches[3:]):
        assert torch.equal(a.index, b.index) and torch.equal(a.image, b.image)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_see_each_index_once(world):
    s = make_set(36)
    seen, lengths = [], []
    for rank in range(world):
        p = TorchPipeline(s, PipelineSpec(batch_size=6, plan="random", rank=rank, world_size=world))
        p.set_epoch(0)
        lengths.append(len(p))
        seen += [int(i) for b in p for i in b.index]
    assert len(set(lengths)) == 1
    assert sorted(seen) == list(range(36))


def test_eval_covers_every_sample_once_with_partial_batch():
    s = make_set(25)
    seen = []
    for rank in range(2):
        p = TorchPipeline(s, PipelineSpec(batch_size=4, train=False, rank=rank, world_size=2))
        seen += [int(i) for b in p for i in b.index]
    assert sorted(seen) == list(range(25))


def test_files_with_resize(folder_dataset):
    from cit_fast.data.sources import load_folder

    s = load_folder(str(folder_dataset))
    p = TorchPipeline(s, PipelineSpec(batch_size=5, plan="stratify_c", image_size=12, num_workers=0))
    b = next(iter(p))
    assert b.image.shape == (5, 3, 12, 12)


def test_cpu_workers_hand_over_raw_uint8_batches_and_compose_runs_after_the_loader(monkeypatch):
    """On a CPU the workers send the uint8 raw batch (a quarter of the float32 inputs' bytes) and
    the main process composes it: model batches are compose(raw batch), the same bits."""
    from cit_fast.data.pipelines import contract as pipeline_mod
    from cit_fast.data.pipelines.contract import compose

    s = make_set(n=30)
    spec = PipelineSpec(batch_size=6, plan="stratify_c", crop_padding=1, mean=MEAN, std=STD, num_workers=2,
                        epochwise=True)
    raw_p = TorchPipeline(s, spec)
    raw_p.set_epoch(2)
    raws = list(raw_p.raw_batches())
    assert raws and all(r["obj"].dtype == torch.uint8 for r in raws)
    want = [compose(raw, spec) for raw in raws]
    calls = []
    monkeypatch.setattr(pipeline_mod, "compose", lambda raw, sp: calls.append(os.getpid()) or compose(raw, sp))
    p = TorchPipeline(s, spec)
    p.set_epoch(2)
    got = list(p)
    assert len(got) == len(want) == len(p) == len(calls) and set(calls) == {os.getpid()}
    for a, b in zip(got, want):
        assert_same_batch(a, b)