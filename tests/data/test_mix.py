import itertools

import numpy as np
import pytest
import torch

from cit_fast.data.pipelines.batch import DoubleBatch, ImageBatch
from cit_fast.data.pipelines.mix import MixOp, mix_batch, mix_draw, mix_key
from cit_fast.data.plans import draws
from cit_fast.config import load_config
from cit_fast.train.loop import compute_loss, main
from cit_fast.train.losses import build_loss, soft_cross_entropy


def batches(n=6, k=4):
    """An image batch and a double-branch batch of the same samples."""
    g = torch.Generator().manual_seed(0)
    common = dict(label=torch.arange(n) % k, index=torch.arange(n), partner=torch.arange(n))
    return (ImageBatch(image=torch.rand(n, 3, 8, 8, generator=g), **common),
            DoubleBatch(content=torch.rand(n, 3, 8, 8, generator=g), context=torch.rand(n, 3, 8, 8, generator=g),
                        **common))


def test_mixup_is_a_convex_combination_with_matching_targets():
    for b in batches():
        out = mix_batch(b, "mixup", alpha=1.0, prob=1.0, num_classes=4, seed=0, epoch=0, step=0)
        lam, perm = float(out.mix_lambda), out.mix_perm
        assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(6))
        for key, x in b.images().items():  # both branches mixed with the same partner and lam
            assert torch.allclose(getattr(out, key), lam * x + (1 - lam) * x[perm], atol=1e-6)
        onehot = torch.nn.functional.one_hot(b.label, 4).float()
        assert torch.allclose(out.target, lam * onehot + (1 - lam) * onehot[perm])
        assert torch.allclose(out.target.sum(1), torch.ones(6)) and torch.equal(out.label, b.label)
    a, d = (mix_batch(b, "mixup", 1.0, 1.0, 4, seed=0, epoch=0, step=0) for b in batches())
    assert float(a.mix_lambda) == float(d.mix_lambda) and torch.equal(a.mix_perm, d.mix_perm)  # one draw per step


def test_cutmix_pastes_one_box_and_targets_follow_its_area():
    img, dbl = batches()
    for b, key in ((img, "image"), (dbl, "content"), (dbl, "context")):
        out = mix_batch(b, "cutmix", alpha=1.0, prob=1.0, num_classes=4, seed=3, epoch=1, step=2)
        lam, perm = float(out.mix_lambda), out.mix_perm
        x, m = getattr(b, key), getattr(out, key)
        from_partner = (m == x[perm]).all(1)  # (B, H, W): pixels pasted from the partner
        from_self = (m == x).all(1)
        assert (from_partner | from_self).all()  # every pixel comes from one of the two images
        box = from_partner & ~from_self
        rows, cols = box.any(2)[0].nonzero(), box.any(1)[0].nonzero()
        assert len(rows) and len(cols)
        # one rectangle, the same for every sample, of area (1 - lam)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert torch.equal(m[..., y0:y1, x0:x1], x[perm][..., y0:y1, x0:x1])
        assert abs((y1 - y0) * (x1 - x0) / 64 - (1 - lam)) < 1e-6


def test_deterministic_per_step_and_prob_zero_is_identity():
    b, _ = batches()
    a1 = mix_batch(b, "mixup", 0.4, 1.0, 4, seed=1, epoch=2, step=5)
    a2 = mix_batch(b, "mixup", 0.4, 1.0, 4, seed=1, epoch=2, step=5)
    assert torch.equal(a1.image, a2.image) and torch.equal(a1.target, a2.target)
    same = mix_batch(b, "cutmix", 1.0, 0.0, 4, seed=1, epoch=2, step=5)
    assert torch.equal(same.image, b.image)
    assert torch.equal(same.target, torch.nn.functional.one_hot(b.label, 4).float())
    with pytest.raises(ValueError, match="mix mode must be one of"):
        mix_batch(b, "mixcut", 1.0, 1.0, 4, 0, 0, 0)


def test_multilabel_mix_learns_mixed_multi_hot_targets_with_the_configured_loss():
    """Mixup on multi-hot labels: the targets are mixed multi-hot rows, and the step's loss is the
    configured BCE / ASL against them, not a softmax cross-entropy."""
    n, c = 6, 5
    y = (torch.arange(n * c).view(n, c) % 3 == 0).float()
    b = ImageBatch(image=torch.rand(n, 3, 8, 8), label=y, index=torch.arange(n), partner=torch.arange(n))
    out = mix_batch(b, "mixup", 1.0, 1.0, c, seed=0, epoch=0, step=0)
    lam, perm = float(out.mix_lambda), out.mix_perm
    torch.testing.assert_close(out.target, lam * y + (1 - lam) * y[perm])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, c))
    for name in ("bce", "asl"):
        crit = build_loss(name, multilabel=True)
        got = compute_loss(model, out, crit)
        torch.testing.assert_close(got, crit(model(out.image), out.target))
        assert not torch.allclose(got, soft_cross_entropy(model(out.image), out.target))


@pytest.mark.slow
def test_multilabel_training_with_cutmix_runs(tmp_path):
    from cit_fast.data.synthetic.multilabel import make_biased_multilabel
    from cit_fast.data.synthetic.benchmark import save_arrays

    data = make_biased_multilabel(n_train=48, n_test_free=16, seed=0)
    for split in ("train", "test"):
        save_arrays(data[split], str(tmp_path / f"{split}.npz"))
    res = main(load_config(None, [f"data.train={tmp_path / 'train.npz'}", f"data.test={tmp_path / 'test.npz'}",
                                  "model.name=resnet8", "optim.loss=asl", "mix.mode=cutmix", "optim.epochs=1",
                                  "data.batch_size=16", "progress=false", "threads=1", f"out_dir={tmp_path / 'r'}"]))
    assert res["task"] == "multilabel" and res["history"][0]["train_loss"] > 0


def test_mix_keys_are_seed_epoch_rank_step_without_collisions():
    """numpy's default_rng(seed + 7 * rank) of before gave rank 1 of seed 0 the draws of rank 0 of seed 7;
    the key chain (seed, epoch) -> rank -> step keeps every one of the four apart."""
    old = [np.random.default_rng([s + 7 * r, 0, 0, 0x313]).random() for s, r in ((0, 1), (7, 0))]
    assert old[0] == old[1]  # the collision this replaces
    assert mix_key(0, 0, 1, 0) != mix_key(7, 0, 0, 0)
    b, _ = batches(n=8)
    a = MixOp("mixup", 1.0, 1.0, 4, seed=0, rank=1)(b, 0, 0)
    c = MixOp("mixup", 1.0, 1.0, 4, seed=7, rank=0)(b, 0, 0)
    assert float(a.mix_lambda) != float(c.mix_lambda) and not torch.equal(a.image, c.image)
    keys = {(s, e, r, t): mix_key(s, e, r, t) for s in range(16) for e in range(4) for r in range(8) for t in range(16)}
    assert len(set(keys.values())) == len(keys)  # 8192 keys: no two (seed, epoch, rank, step) share one
    # and the key is the draws' chain: stream 0x313 of (seed, epoch), the rank's sub-stream, the step's
    assert mix_key(3, 2, 5, 11) == int(draws.bits(int(draws.bits(draws.key(3, 2, 0x313), 6)[5]), 12)[11])


def test_build_pipeline_gives_the_mix_op_seed_and_rank_apart(tmp_path):
    from cit_fast.data.build import build_pipeline
    from cit_fast.data.sources.records import SampleSet

    samples = SampleSet(np.zeros((8, 8, 8, 3), np.uint8), None, np.arange(8) % 4, [f"c{i}" for i in range(4)])
    ops = [build_pipeline(samples, load_config(None, ["mix.mode=cutmix", f"seed={s}"]), train=True, rank=r).spec.batch_ops
           for s, r in ((0, 1), (7, 0))]
    assert ops[0] == (MixOp("cutmix", 1.0, 1.0, 4, seed=0, rank=1),) and ops[1][0].rank == 0 and ops[1][0].seed == 7
    assert build_pipeline(samples, load_config(None, []), train=True).spec.batch_ops == ()  # Table IV's default


def test_mix_draws_are_pinned_counters():
    """The draws of a fixed grid of (seed, epoch, rank, step), pinned: the project's counter-based draws (no
    numpy Generator), so no numpy release can move them; lam kept to 12 decimals (math.log/cos: libm)."""
    import hashlib

    parts = []
    for s in range(3):
        for e in range(2):
            for r in range(2):
                for t in range(4):
                    d = mix_draw(mix_key(s, e, r, t), 10, alpha=0.4, prob=0.8, h=32, w=24)
                    parts.append(f"{d.mixed}:{d.lam:.12f}:{d.perm.tolist()}:{d.centre}")
    assert hashlib.sha256("|".join(parts).encode()).hexdigest()[:16] == "7379f580f6dea52f"
    ds = [mix_draw(mix_key(0, 0, 0, t), 4, alpha=1.0, prob=0.5, h=32, w=24) for t in range(4000)]
    on = [d for d in ds if d.mixed]
    assert abs(len(on) / len(ds) - 0.5) < 0.03  # mixed with probability prob
    assert all(0 <= d.centre[0] < 32 and 0 <= d.centre[1] < 24 for d in on)
    assert {tuple(d.perm) for d in on} == {tuple(p) for p in itertools.permutations(range(4))}
    assert all(np.array_equal(d.perm, np.arange(4)) and d.lam == 1.0 for d in ds if not d.mixed)
    assert not mix_draw(mix_key(0, 0, 0, 0), 4, alpha=0.0, prob=1.0).mixed  # alpha 0: never mixed


@pytest.mark.parametrize("alpha", [0.05, 0.2, 1.0, 4.0])
def test_beta_draws_have_beta_moments(alpha):
    """Stream.beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) and the CDF of numpy's beta on as many draws."""
    s = draws.Stream(draws.key(5, 1, 0x313))
    x = np.array([s.beta(alpha, alpha) for _ in range(20000)])
    ref = np.random.default_rng(0).beta(alpha, alpha, 20000)
    assert x.min() >= 0 and x.max() <= 1
    assert abs(x.mean() - 0.5) < 0.01
    assert abs(x.var() / (1 / (4 * (2 * alpha + 1))) - 1) < 0.04
    q = np.array([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])  # the two CDFs there (standard error ~0.005)
    np.testing.assert_allclose((x[:, None] < q).mean(0), (ref[:, None] < q).mean(0), atol=0.02)


def test_soft_cross_entropy_equals_ce_on_one_hot():
    logits = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    assert torch.allclose(soft_cross_entropy(logits, torch.nn.functional.one_hot(y, 3).float()),
                          torch.nn.functional.cross_entropy(logits, y))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_cit_with_mix_trains_and_resumes_exactly(tmp_path, mode):
    args = ["model.name=resnet8", "data.synthetic_train_per_class=16", "data.synthetic_test_per_class=4",
            "data.batch_size=32", "optim.epochs=2", "progress=false", "intervention.plan=stratify_c",
            f"mix.mode={mode}", "mix.alpha=1.0"]
    full = main(load_config(None, [*args, f"out_dir={tmp_path / 'a'}"]))
    steps = [x for e in full["history"] for x in e["step_losses"]]
    main(load_config(None, [*args, f"out_dir={tmp_path / 'b'}"]), stop_after_steps=7)
    res = main(load_config(None, [*args, f"out_dir={tmp_path / 'b'}", "resume=auto"]))
    after = [x for e in res["history"] for x in e["step_losses"]]
    assert after[-(len(steps) - 7):] == steps[7:]
