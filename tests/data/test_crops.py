"""ImageNet geometry in both pipelines: torchvision's random-resized training crops with CIT's pairing
(an object and its mask share a window, the context partner has its own) and the evaluation's
Resize + CenterCrop, against torchvision itself.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cit_fast.data.pipelines.contract import (PipelineSpec, crop_window, eval_geometry, random_resized_window,
                                              sample_rng)
from cit_fast.data.pipelines.dali_pipeline import DaliPipeline
from cit_fast.data.pipelines.torch_pipeline import TorchPipeline, draft_factor
from cit_fast.data.sources.records import SampleSet
from cit_fast.errors import ConfigError

PIPELINES = {"torch": TorchPipeline, "dali": DaliPipeline}
# (width, height): landscape, portrait, square, ImageNet's typical 500x375 among them
SHAPES = [(500, 375), (375, 500), (333, 500), (640, 427), (300, 300), (257, 300)]


def _photo(k: int, w: int, h: int) -> Image.Image:
    import skimage.data as sd

    name = ["astronaut", "coffee", "chelsea", "rocket"][k % 4]
    return Image.fromarray(getattr(sd, name)()).convert("RGB").resize((w, h), Image.BICUBIC)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> SampleSet:
    """Real photos at ImageNet-like sizes, JPEG quality 90, no masks."""
    d = tmp_path_factory.mktemp("photos")
    paths = []
    for k, (w, h) in enumerate(SHAPES):
        p = d / f"{k}.jpg"
        _photo(k, w, h).save(p, quality=90)
        paths.append(str(p))
    return SampleSet(paths, None, np.arange(len(paths)) % 2, ["a", "b"])


def _two_colour(tmp_path: Path, n: int = 6, big: bool = False) -> SampleSet:
    """Object pixels pure red, context pure blue, the mask exactly the red region (JPEG 4:4:4)."""
    paths, masks = [], []
    rng = np.random.default_rng(0)
    for k in range(n):
        h, w = (900, 1200) if big else (150 + 10 * k, 200 - 5 * k)
        y, x = np.mgrid[0:h, 0:w]
        cx, cy, r = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h, rng.uniform(0.2, 0.35) * min(h, w)
        obj = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
        img = np.where(obj[..., None], np.array([255, 0, 0], np.uint8), np.array([0, 0, 255], np.uint8))
        Image.fromarray(img.astype(np.uint8)).save(tmp_path / f"{k}.jpg", quality=95, subsampling=0)
        Image.fromarray(obj.astype(np.uint8) * 255).save(tmp_path / f"{k}.png")
        paths.append(str(tmp_path / f"{k}.jpg"))
        masks.append(str(tmp_path / f"{k}.png"))
    return SampleSet(paths, masks, np.arange(n) % 2, ["a", "b"])


def _first(pipe, epoch=0):
    pipe.set_epoch(epoch)
    return next(iter(pipe.raw_batches()))


class _TorchDraws:
    """numpy Generator's uniform/integers on torch's global RNG, in torchvision's order and dtypes."""

    def uniform(self, lo, hi):
        return torch.empty(1).uniform_(float(torch.tensor(lo)), float(torch.tensor(hi))).item()

    def integers(self, lo, hi):
        return torch.randint(lo, hi, size=(1,)).item()


def test_random_resized_window_is_torchvisions_algorithm():
    from torchvision.transforms import RandomResizedCrop

    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    same = 0
    for seed in range(200):
        h, w = [(375, 500), (500, 375), (64, 64), (20, 400)][seed % 4]
        torch.manual_seed(seed)
        ref = RandomResizedCrop.get_params(torch.empty(3, h, w), list(scale), list(ratio))
        torch.manual_seed(seed)
        ours = random_resized_window(_TorchDraws(), h, w, scale, ratio)
        # torchvision draws the aspect in float32: a w/h on a rounding edge may differ by one pixel
        same += tuple(ref) == ours
        top, left, ch, cw = ours
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
    assert same >= 195
    # the fallback after ten misses: the centre crop clamped to the ratio range
    for h, w, sc in [(20, 400, (0.9, 1.0)), (400, 20, (0.9, 1.0)), (100, 110, (1.0, 1.0))]:
        torch.manual_seed(0)
        ref = RandomResizedCrop.get_params(torch.empty(3, h, w), list(sc), list(ratio))
        torch.manual_seed(0)
        assert random_resized_window(_TorchDraws(), h, w, sc, ratio) == tuple(ref)


def test_windows_are_pure_per_sample_and_role():
    spec = PipelineSpec(batch_size=2, image_size=32, train_crop="random_resized", seed=3)
    a = crop_window(spec, 2, 17, 0, 375, 500)
    assert crop_window(spec, 2, 17, 0, 375, 500) == a  # any pipeline, rank, resume
    assert crop_window(spec, 2, 17, 1, 375, 500) != a  # as a context partner: its own window
    assert crop_window(spec, 3, 17, 0, 375, 500) != a  # a new epoch, a new window
    # the window's stream: the project's counter-based draws, sample 17's own key in stream 0xA060 + role
    from cit_fast.data.plans import draws

    k = draws.sample_key(3, 2, 0xA060 + 1, 17)
    assert k == int(draws.bits(draws.key(3, 2, 0xA061), 18)[17])
    assert [sample_rng(3, 2, 17, 1).random() for _ in range(1)][0] == float(draws.uniform(k, 1)[0])
    r = sample_rng(3, 2, 17, 1)
    assert [r.random() for _ in range(5)] == draws.uniform(k, 5).tolist()  # successive draws of that stream
    fracs = []
    for i in range(300):
        top, left, h, w = crop_window(spec, 0, i, 0, 375, 500)
        fracs.append(h * w / (375 * 500))
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    assert min(fracs) >= 0.079 and max(fracs) <= 1.0 and np.mean(fracs) > 0.4


def test_augmentation_draws_are_pinned_counters():
    """Flips, pad-crop offsets and random-resized windows of a fixed seed, pinned: they come from the project's
    counter-based draws (no numpy Generator), so a numpy upgrade cannot move them; each sample's draw depends
    on its index alone (any subset, any order, any rank gives the same)."""
    import hashlib

    from cit_fast.data.pipelines.contract import crop_offsets, flip_flags

    spec = PipelineSpec(batch_size=2, image_size=32, crop_padding=4, hflip=True, seed=3)
    wspec = PipelineSpec(batch_size=2, image_size=32, train_crop="random_resized", seed=3)
    idx = np.arange(200)
    flips, off0, off1 = flip_flags(spec, 2, idx), crop_offsets(spec, 2, idx, 0), crop_offsets(spec, 2, idx, 1)
    wins = np.asarray([crop_window(wspec, 2, int(i), r, 375, 500) for i in range(50) for r in (0, 1)], "<i8")
    blob = flips.tobytes() + off0.astype("<i8").tobytes() + off1.astype("<i8").tobytes() + wins.tobytes()
    assert hashlib.sha256(blob).hexdigest()[:16] == "93817c9d79af8b73"
    sub = np.array([170, 3, 99, 3])
    assert np.array_equal(flip_flags(spec, 2, sub), flips[sub])
    assert np.array_equal(crop_offsets(spec, 2, sub, 1), off1[sub])
    assert 0 <= off0.min() and off0.max() <= 8 and len(np.unique(off0)) == 9
    assert 0.4 < flips.mean() < 0.6 and not np.array_equal(flip_flags(spec, 3, idx), flips)


@pytest.mark.parametrize("kind", PIPELINES)
def test_object_and_mask_share_a_window_the_partner_has_its_own(kind, tmp_path):
    s = _two_colour(tmp_path)
    spec = PipelineSpec(batch_size=6, plan="random", image_size=48, train_crop="random_resized", hflip=False, seed=1)
    raw = _first(PIPELINES[kind](s, spec))
    for img, msk in ((raw["obj"], raw["mask"]), (raw["ctx"], raw["ctx_mask"])):
        img, msk = img.int(), msk.int()
        inside, outside = msk == 255, msk == 0
        # the mask's object pixels are the image's red ones, its context pixels the blue ones
        assert (img[..., 0][inside] > 200).all() and (img[..., 2][inside] < 60).all()
        assert (img[..., 2][outside] > 200).all() and (img[..., 0][outside] < 60).all()
        assert inside.any() and outside.any()
    wi, wj = raw["window_i"], raw["window_j"]
    idx, par = raw["index"].tolist(), raw["partner"].tolist()
    for b, (i, j) in enumerate(zip(idx, par)):
        h, w = Image.open(s.images[i]).size[::-1]
        assert tuple(wi[b].tolist()) == crop_window(spec, 0, i, 0, h, w)
        h, w = Image.open(s.images[j]).size[::-1]
        assert tuple(wj[b].tolist()) == crop_window(spec, 0, j, 1, h, w)
    # a sample that is its own partner (plan none) is cut twice, in two windows
    spec_none = PipelineSpec(batch_size=6, plan="none", image_size=48, train_crop="random_resized", seed=1)
    raw = _first(PIPELINES[kind](s, spec_none))
    assert torch.equal(raw["index"], raw["partner"])
    assert (raw["window_i"] != raw["window_j"]).any(1).all()


@pytest.mark.parametrize("seed", [0, 7])
def test_torch_training_crops_are_torchvisions_resized_crop_within_a_grey_level(tmp_path, seed):
    """Each window is cut, then resized (torchvision's ``resized_crop`` on a PIL image: crop, then antialiased
    bilinear), by torch's uint8 kernel: within one grey level of torchvision's own, object, context and mask."""
    from torchvision.transforms import functional as TF

    paths, masks = [], []
    for k, (w, h) in enumerate(SHAPES):
        _photo(k, w, h).save(tmp_path / f"{k}.jpg", quality=90)
        Image.fromarray((np.asarray(_photo(k + 1, w, h))[..., 1] > 110).astype(np.uint8) * 255).save(tmp_path / f"{k}.png")
        paths.append(str(tmp_path / f"{k}.jpg"))
        masks.append(str(tmp_path / f"{k}.png"))
    s = SampleSet(paths, masks, np.arange(len(paths)) % 2, ["a", "b"])
    spec = PipelineSpec(batch_size=6, plan="random", image_size=56, train_crop="random_resized", hflip=False,
                        seed=seed, draft=False)
    raw = _first(TorchPipeline(s, spec))
    for b, (i, j) in enumerate(zip(raw["index"].tolist(), raw["partner"].tolist())):
        for k, win, img_key, msk_key in ((i, raw["window_i"][b], "obj", "mask"), (j, raw["window_j"][b], "ctx", "ctx_mask")):
            top, left, h, w = win.tolist()
            want_img = np.asarray(TF.resized_crop(Image.open(s.images[k]).convert("RGB"), top, left, h, w, [56, 56],
                                                  antialias=True), np.int32)
            want_msk = np.asarray(TF.resized_crop(Image.open(s.masks[k]).convert("L"), top, left, h, w, [56, 56],
                                                  antialias=True), np.int32)
            assert np.abs(raw[img_key][b].numpy().astype(np.int32) - want_img).max() <= 1, (k, img_key)
            assert np.abs(raw[msk_key][b].numpy().astype(np.int32) - want_msk).max() <= 1, (k, msk_key)


@pytest.mark.parametrize("seed, epoch", [(0, 0), (5, 3)])
def test_torch_and_dali_cut_the_same_windows(photos, seed, epoch):
    spec = PipelineSpec(batch_size=3, plan="random", image_size=64, train_crop="random_resized", seed=seed)
    for a, b in zip(_batches(TorchPipeline, photos, spec, epoch),
                    _batches(DaliPipeline, photos, spec, epoch)):
        for k in ("index", "partner", "flip", "window_i", "window_j"):
            assert torch.equal(a[k], b[k]), k
        for k in ("obj", "ctx"):  # PIL vs DALI resampling (and drafted decodes): close, not equal
            diff = (a[k].int() - b[k].int()).abs().float()
            assert diff.mean() < 1.0, (k, diff.mean())


def _batches(kind, s, spec, epoch):
    p = kind(s, spec)
    p.set_epoch(epoch)
    return list(p.raw_batches())


def test_draft_decodes_large_jpegs_smaller_with_the_same_region(tmp_path, monkeypatch):
    assert draft_factor([(0, 0, 900, 1200)], 48) == 8
    assert draft_factor([(0, 0, 900, 1200), (0, 0, 200, 150)], 48) == 1
    assert draft_factor([(0, 0, 375, 500)], 224) == 1  # ImageNet's sizes at 224: full decode
    s = _two_colour(tmp_path, n=2, big=True)
    spec = PipelineSpec(batch_size=2, plan="none", image_size=48, train_crop="random_resized",
                        crop_scale=(0.5, 1.0), seed=2)
    from PIL import JpegImagePlugin

    drafted = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        drafted.append(size)
        return real(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    with_draft = _first(TorchPipeline(s, spec))
    assert drafted
    without = _first(TorchPipeline(s, PipelineSpec(**{**spec.__dict__, "draft": False})))
    assert torch.equal(with_draft["window_i"], without["window_i"])
    for k in ("obj", "ctx"):
        assert (with_draft[k].int() - without[k].int()).abs().float().mean() < 1.0
    assert torch.equal(with_draft["mask"], without["mask"])  # masks are never drafted


@pytest.mark.parametrize("kind", PIPELINES)
def test_eval_resize_centre_crop_within_a_grey_level_of_torchvision(kind, photos):
    from torchvision import transforms as T

    ref = T.Compose([T.Resize(256), T.CenterCrop(224)])
    spec = PipelineSpec(batch_size=len(SHAPES), train=False, image_size=224, eval_resize=256)
    raw = _first(PIPELINES[kind](photos, spec))
    for b, i in enumerate(raw["index"].tolist()):
        want = np.asarray(ref(Image.open(photos.images[i]).convert("RGB"))).astype(int)
        got = raw["obj"][b].numpy().astype(int)
        assert np.abs(want - got).max() <= 1, (kind, SHAPES[i])
    assert not raw["flip"].any()


@pytest.mark.parametrize("h, w", [(375, 500), (500, 375), (256, 256), (300, 257), (333, 500)])
def test_eval_geometry_is_torchvisions(h, w):
    from torchvision.transforms import functional as TF

    rh, rw, top, left = eval_geometry(h, w, 256, 224)
    resized = TF.resize(torch.empty(1, h, w), 256, antialias=True)
    assert (rh, rw) == tuple(resized.shape[1:])
    # CenterCrop's own arithmetic on the resized image
    assert (top, left) == (int(round((rh - 224) / 2.0)), int(round((rw - 224) / 2.0)))


@pytest.mark.parametrize("kind", PIPELINES)
def test_resume_mid_epoch_with_crops_is_exact(kind, photos):
    spec = PipelineSpec(batch_size=2, plan="random", image_size=32, train_crop="random_resized", seed=4)
    full = PIPELINES[kind](photos, spec)
    full.set_epoch(1)
    everything = list(full)
    part = PIPELINES[kind](photos, spec)
    part.set_epoch(1)
    next(iter(part))
    resumed = PIPELINES[kind](photos, spec)
    resumed.load_state_dict(part.state_dict())
    rest = list(resumed)
    assert len(rest) == len(everything) - 1 >= 1
    for a, b in zip(rest, everything[1:]):
        assert torch.equal(a.index, b.index) and torch.equal(a.image, b.image)


@pytest.mark.parametrize("kw, match", [
    (dict(train_crop="random_resized"), "data.image_size"),
    (dict(eval_resize=256), "data.image_size"),
    (dict(train_crop="random_resized", image_size=32, crop_padding=4), "data.crop_padding"),
    (dict(train_crop="random_resized", image_size=32, crop_scale=(0.5, 0.1)), "data.crop_scale"),
    (dict(train_crop="random_resized", image_size=32, crop_ratio=(0, 1)), "data.crop_ratio"),
    (dict(eval_resize=100, image_size=224), "at least data.image_size"),
    (dict(train_crop="randomresized", image_size=32), "data.train_crop must be one of"),
])
def test_bad_crop_settings_are_one_clear_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        PipelineSpec(batch_size=2, **kw)


def test_default_geometry_is_unchanged(photos):
    """train_crop=resize (the default) with eval_resize=0: no windows, the whole image resized."""
    spec = PipelineSpec(batch_size=2, plan="none", image_size=32, crop_padding=2)
    raw = _first(TorchPipeline(photos, spec))
    assert "window_i" not in raw and raw["obj"].shape == (2, 32, 32, 3)
    assert math.isclose(spec.crop_ratio[0], 0.75)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the lent device)")
def test_mixed_gpu_roi_decoding_cuts_the_cpu_windows(photos):
    """DALI on the GPU (nvJPEG ROI decoding, device="mixed"): the CPU path's windows and pixels."""
    for train in (True, False):
        kw = dict(batch_size=3, plan="random" if train else "none", image_size=64, train_crop="random_resized",
                  eval_resize=73, train=train, seed=2)
        cpu = _batches(DaliPipeline, photos, PipelineSpec(**kw), 1)
        gpu = _batches(DaliPipeline, photos, PipelineSpec(**kw, device=torch.device("cuda")), 1)
        for a, b in zip(cpu, gpu):
            assert b["obj"].is_cuda
            assert torch.equal(a["window_i"], b["window_i"]) and torch.equal(a["window_j"], b["window_j"])
            for k in ("obj", "ctx"):  # nvJPEG's IDCT vs libjpeg-turbo's: close, not equal
                assert (a[k].int() - b[k].cpu().int()).abs().float().mean() < 1.5


@pytest.mark.parametrize("overrides, match", [
    (["data.crop_scale=[0.3,1]"], "data.crop_scale applies to data.train_crop=random_resized"),
    (["data.crop_ratio=[0.5,2]"], "data.crop_ratio applies to data.train_crop=random_resized"),
    (["data.train_crop=random_resized"], "needs data.image_size"),
    (["data.eval_resize=20", "data.image_size=32"], "must be at least data.image_size"),
    (["data.train_crop=random_resized", "data.image_size=32", "data.crop_scale=[0,1]"], "data.crop_scale: expected"),
])
def test_config_mistakes_are_one_clear_error(overrides, match):
    from cit_fast.config import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)
