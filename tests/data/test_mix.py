import pytest
import torch

from cit_fast.data.mix import mix_batch, soft_cross_entropy
from cit_fast.config import load_config
from cit_fast.train.loop import main


def batch(n=6, k=4):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(n, 3, 8, 8, generator=g), "label": torch.arange(n) % k,
            "content": torch.rand(n, 3, 8, 8, generator=g), "context": torch.rand(n, 3, 8, 8, generator=g)}


def test_mixup_is_a_convex_combination_with_matching_targets():
    b = batch()
    out = mix_batch(b, "mixup", alpha=1.0, prob=1.0, num_classes=4, seed=0, epoch=0, step=0)
    lam, perm = float(out["mix_lambda"]), out["mix_perm"]
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(6))
    for key in ("image", "content", "context"):  # both branches mixed with the same partner and lam
        assert torch.allclose(out[key], lam * b[key] + (1 - lam) * b[key][perm], atol=1e-6)
    onehot = torch.nn.functional.one_hot(b["label"], 4).float()
    assert torch.allclose(out["target"], lam * onehot + (1 - lam) * onehot[perm])
    assert torch.allclose(out["target"].sum(1), torch.ones(6))


def test_cutmix_pastes_one_box_and_targets_follow_its_area():
    b = batch()
    out = mix_batch(b, "cutmix", alpha=1.0, prob=1.0, num_classes=4, seed=3, epoch=1, step=2)
    lam, perm = float(out["mix_lambda"]), out["mix_perm"]
    from_partner = (out["image"] == b["image"][perm]).all(1)  # (B, H, W): pixels pasted from the partner
    from_self = (out["image"] == b["image"]).all(1)
    assert (from_partner | from_self).all()  # every pixel comes from one of the two images
    box = from_partner & ~from_self
    rows, cols = box.any(2)[0].nonzero(), box.any(1)[0].nonzero()
    assert len(rows) and len(cols)
    # one rectangle, the same for every sample and every branch, of area (1 - lam)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert torch.equal(out["context"][..., y0:y1, x0:x1], b["context"][perm][..., y0:y1, x0:x1])
    assert abs((y1 - y0) * (x1 - x0) / 64 - (1 - lam)) < 1e-6


def test_deterministic_per_step_and_prob_zero_is_identity():
    b = batch()
    a1 = mix_batch(b, "mixup", 0.4, 1.0, 4, seed=1, epoch=2, step=5)
    a2 = mix_batch(b, "mixup", 0.4, 1.0, 4, seed=1, epoch=2, step=5)
    assert torch.equal(a1["image"], a2["image"]) and torch.equal(a1["target"], a2["target"])
    same = mix_batch(b, "cutmix", 1.0, 0.0, 4, seed=1, epoch=2, step=5)
    assert torch.equal(same["image"], b["image"])
    assert torch.equal(same["target"], torch.nn.functional.one_hot(b["label"], 4).float())
    with pytest.raises(ValueError, match="mix mode must be one of"):
        mix_batch(b, "mixcut", 1.0, 1.0, 4, 0, 0, 0)


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
