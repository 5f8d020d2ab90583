import pytest
import torch

from cit_fast.data.pipelines.batch import DoubleBatch, ImageBatch
from cit_fast.data.pipelines.mix import mix_batch, soft_cross_entropy
from cit_fast.config import load_config
from cit_fast.train.loop import compute_loss, main
from cit_fast.train.losses import build_loss


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
