"""Feature splitting (Singh et al., CVPR 2020): the split forward, the weighted loss, the salient scene arm,
the context lift, and a tiny training through the CLI."""
import math

import numpy as np
import pytest
import torch

from cit_fast.data.synthetic.benchmark import save_arrays
from cit_fast.data.synthetic.scenes import SCENE_PAIRS, make_scene_multilabel
from cit_fast.eval.context_bias import context_lift
from cit_fast.models.causal_multilabel import CausalMultiLabel
from cit_fast.models.feature_split import FeatureSplit, FeatureSplitOutput
from cit_fast.models.resnet_cifar import CifarResNet
from cit_fast.train.losses import FeatureSplitLoss, feature_split_weights


@pytest.mark.parametrize("per_label", [True, False])
def test_split_logits_give_x_s_no_gradient(per_label):
    torch.manual_seed(0)
    rows, d, c = (3, 8, 3) if per_label else (1, 8, 3)
    fs = FeatureSplit(rows, d).train()
    w, bias = torch.randn(c, d, requires_grad=True), torch.randn(c, requires_grad=True)
    x = torch.randn(5, rows, d) if per_label else torch.randn(5, d)
    x.requires_grad_(True)
    out, context = fs(x, w, bias)
    assert out.shape == (5, c) and context.shape == (c,)
    out[:, 1].sum().backward()
    g = x.grad if per_label else x.grad[:, None]
    assert g[..., 4:].abs().max() == 0  # x_s: nothing from the split logit
    assert g[..., :4].abs().max() > 0
    ctx = (x if per_label else x[:, None]).detach()[..., 4:].mean(0)  # the first batch: its own mean
    expect = ctx[1] if per_label else ctx[0]
    torch.testing.assert_close(w.grad[1, 4:], expect * 5)  # W_s sees the mean, once per image
    # value: x_o . W_o + mean(x_s) . W_s + b
    xo = (x if per_label else x[:, None]).detach()[..., :4]
    ref = (xo[:, 1 if per_label else 0] * w.detach()[1, :4]).sum(-1) + (expect * w.detach()[1, 4:]).sum() + bias[1]
    torch.testing.assert_close(out[:, 1].detach(), ref.detach())
    torch.testing.assert_close(context[1].detach(), (expect * w.detach()[1, 4:]).sum())


def test_context_mean_is_over_the_last_ten_batches():
    fs = FeatureSplit(1, 4, history=10).train()
    w, b = torch.zeros(2, 4), torch.zeros(2)
    for k in range(12):
        fs(torch.full((3, 4), float(k)), w, b)
    assert int(fs.count) == 12
    torch.testing.assert_close(fs.context_mean(), torch.full((1, 2), float(np.mean(range(2, 12)))))
    fs.eval()
    fs(torch.full((3, 4), 100.0), w, b)  # evaluation records nothing
    assert int(fs.count) == 12


def test_models_return_both_logits_in_training_only():
    x = torch.randn(4, 3, 16, 16)
    dec = CausalMultiLabel("resnet8", 5, embed_dim=16, num_heads=2, causal=False, feature_split=True).train()
    res = CifarResNet(8, 5, feature_split=True).train()
    for m in (dec, res):
        out = m(x)
        assert isinstance(out, FeatureSplitOutput) and out.logits.shape == out.split_logits.shape == (4, 5)
        assert out.context.shape == (5,)
        a, b = out.chunk(2)
        assert a.logits.shape == (2, 5) and b.split_logits.shape == (2, 5) and b.context is out.context
        assert m.eval()(x).shape == (4, 5)
    with pytest.raises(ValueError, match="decoder-only"):
        CausalMultiLabel("resnet8", 5, embed_dim=16, num_heads=2, causal=True, feature_split=True)


def test_weights_are_singh_et_al():
    t = np.zeros((100, 3), np.float32)
    t[:90, 0] = 1; t[:81, 1] = 1  # b=0: 81 co-occur, 9 exclusive -> sqrt(9) = 3
    t[:50, 2] = 1  # pair (2, 1): 50 co-occur, 0 exclusive -> alpha_min
    assert feature_split_weights(t, [(0, 1), (2, 1)], alpha_min=2.0) == [3.0, 2.0]
    t[:40, 1] = 0  # b=0: 41 co-occur, 49 exclusive -> sqrt < 1 -> the floor
    assert feature_split_weights(t, [(0, 1)], alpha_min=3.0) == [3.0]
    t[:80, 1] = 1; t[80:89, 1] = 1  # 89 co-occur, 1 exclusive
    assert feature_split_weights(t, [(0, 1)], alpha_min=3.0) == [pytest.approx(math.sqrt(89))]


def test_loss_against_a_hand_computation():
    """Image 0 holds b=0 without c=1 (exclusive): all its terms read the split logits, b's weighted by 4;
    image 1 holds b with c and image 2 no b: plain BCE on the full logits."""
    y = torch.tensor([[1., 0., 0.], [1., 1., 0.], [0., 1., 1.]])
    full = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7], [-2.0, 1.0, 0.1]])
    split = torch.tensor([[-0.4, 0.2, 1.0], [9.0, 9.0, 9.0], [9.0, 9.0, 9.0]])  # rows 1, 2 never read
    loss = FeatureSplitLoss([(0, 1)], [4.0])

    def bce(z, t):  # -[t log sigma(z) + (1 - t) log(1 - sigma(z))]
        return -(t * math.log(1 / (1 + math.exp(-z))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-z))))

    rows = [[4.0 * bce(-0.4, 1), bce(0.2, 0), bce(1.0, 0)],
            [bce(1.5, 1), bce(0.3, 1), bce(-0.7, 0)],
            [bce(-2.0, 0), bce(1.0, 1), bce(0.1, 1)]]
    expect = sum(map(sum, rows)) / 3
    got = loss(FeatureSplitOutput(full, split, torch.zeros(3)), y)
    assert got.item() == pytest.approx(expect, rel=1e-6)
    groups = FeatureSplitLoss([(0, 1)], [4.0], norm="groups")  # the exclusive image over 1, the others over 2
    got = groups(FeatureSplitOutput(full, split, torch.zeros(3)), y)
    assert got.item() == pytest.approx(sum(rows[0]) / 1 + (sum(rows[1]) + sum(rows[2])) / 2, rel=1e-6)
    no_exclusive = y.clone()
    no_exclusive[0, 1] = 1  # image 0 now holds c too: every image plain BCE, groups = batch mean
    torch.testing.assert_close(groups(FeatureSplitOutput(full, split, torch.zeros(3)), no_exclusive),
                               loss(FeatureSplitOutput(full, split, torch.zeros(3)), no_exclusive))
    with pytest.raises(ValueError, match="norm must be one of"):
        FeatureSplitLoss([(0, 1)], [4.0], norm="mean")
    bce_t = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(loss(full, y), bce_t(full, y, reduction="sum") / 3)  # no split: plain BCE


@pytest.mark.parametrize("per_label", [True, False])
def test_exclusive_images_train_x_o_and_leave_w_s_of_b_alone(per_label):
    """Through a model: an exclusive image of b gives W_s of b no gradient and x_s none at all; W_o of b
    and W_s of the other classes still learn from it; a co-occur image trains W_s of b."""
    torch.manual_seed(0)
    if per_label:
        model = CausalMultiLabel("resnet8", 3, embed_dim=16, num_heads=2, dropout=0.0, causal=False,
                                 feature_split=True).train()
        head, k = model.head, model.feature_split.split
    else:
        model = CifarResNet(8, 3, feature_split=True).train()
        head, k = model.fc, model.feature_split.split
    loss = FeatureSplitLoss([(0, 1)], [3.0])
    x = torch.randn(2, 3, 16, 16)
    model(x)  # a first batch: x_s's running mean is set
    exclusive = torch.tensor([[1., 0., 1.]])
    cooccur = torch.tensor([[1., 1., 0.]])
    for y, ws_b_learns in ((exclusive, False), (cooccur, True)):
        model.zero_grad()
        feats = {}
        hook = (model.feature_split.register_forward_pre_hook(lambda m, a: feats.update(x=a[0].retain_grad() or a[0])))
        out = model(x[:1])
        hook.remove()
        loss(out, y).backward()
        g = head.weight.grad
        assert bool(g[0, k:].abs().max() > 0) is ws_b_learns
        assert g[0, :k].abs().max() > 0 and g[2, k:].abs().max() > 0
        xs_grad = feats["x"].grad[..., k:]
        if not ws_b_learns:  # the split logits: nothing reaches x_s (the full logits do, for a co-occur image)
            assert xs_grad.abs().max() == 0


def test_salient_arm_rendering():
    """The salient arm draws c in up to 3 cells (more mask, the same labels) and b at its own opacity
    (exact label counts: tests/data/test_synthetic_scenes.py)."""
    arm = make_scene_multilabel("salient", n_train=60, n_test=8, seed=1)
    one = make_scene_multilabel("salient", n_train=60, n_test=8, seed=1, c_copies=1)["train"]
    three = arm["train"]
    np.testing.assert_array_equal(one.labels, three.labels)
    has_c = (three.labels[:, [c for _, c in arm["pairs"]]] > 0).any(1)
    area = lambda s: (s.masks > 127).reshape(len(s.masks), -1).sum(1)  # noqa: E731
    assert area(three)[has_c].mean() > 1.8 * area(one)[has_c].mean()  # c's copies: ~3x its pixels
    assert area(three)[~has_c].mean() < 1.3 * area(one)[~has_c].mean()  # (other instances, same counts)
    faint = make_scene_multilabel("salient", n_train=60, n_test=8, seed=1, b_alpha=0.5)["train"]
    np.testing.assert_array_equal(faint.labels, three.labels)
    assert (faint.images != three.images).any() and (faint.masks == three.masks).all()
    with pytest.raises(ValueError, match="c_copies"):
        make_scene_multilabel("salient", n_train=8, n_test=8, c_copies=0)


def test_context_lift_on_a_model_that_reads_b_off_c():
    rng = np.random.default_rng(0)
    t = np.zeros((2000, 2), np.float32)
    t[:, 0] = rng.random(2000) < 0.3
    t[:, 1] = rng.random(2000) < 0.5
    s = rng.normal(size=(2000, 2))
    s[:, 0] += 2 * t[:, 0] + 0.8 * t[:, 1]  # b's logit reads c too
    s[:, 1] += 2 * t[:, 1]  # c's logit reads c alone
    r = context_lift(s, t, [(0, 1)])
    b, c = t[:, 0] > 0, t[:, 1] > 0
    assert r["with_b"] == pytest.approx(s[b & c, 0].mean() - s[b & ~c, 0].mean())
    assert 0.6 < r["with_b"] < 1.0 and 0.6 < r["without_b"] < 1.0
    assert abs(context_lift(s, t, [(1, 0)])["with_b"]) < 0.2  # c's own logit does not depend on b


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny salient-arm data set, written once for the CLI tests."""
    d, path = make_scene_multilabel("salient", n_train=64, n_test=32, seed=0), tmp_path_factory.mktemp("salient")
    save_arrays(d["train"], str(path / "train.npz"))
    save_arrays(d["test"], str(path / "test.npz"))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("model", ["decoder_resnet8", "resnet8"])
def test_tiny_training_through_the_cli(tmp_path, data_dir, model, capsys):
    from cit_fast.cli import main

    pairs = ",".join(f"{b}:{c}" for b, c in SCENE_PAIRS)
    args = ["train", f"data.train={data_dir / 'train.npz'}", f"data.test={data_dir / 'test.npz'}",
            f"model.name={model}", "model.feature_split=true", f"model.biased_pairs={pairs}", "model.embed_dim=16",
            "model.num_heads=2", "data.batch_size=16", "optim.epochs=1", "max_steps_per_epoch=2", "threads=1",
            "progress=false", f"out_dir={tmp_path / 'run'}", "optim.optimizer=adamw", "optim.lr=0.001"]
    main(args)
    out = capsys.readouterr().out
    assert "feature split: circle:frame" in out and "weight 3.00" in out
    assert (tmp_path / "run" / "results.json").exists()
    state = torch.load(next((tmp_path / "run" / "checkpoints").glob("*.pt")), weights_only=False)
    model_state = state.get("model", state)
    counts = [v for k, v in model_state.items() if k.endswith("feature_split.count")]
    assert [int(v) for v in counts] == [2]  # both training steps went through the split forward


@pytest.mark.parametrize("extra, match", [
    (["model.biased_pairs="], "model.feature_split: needs model.biased_pairs"),
    (["model.biased_pairs=circle:blob"], "model.biased_pairs"),
    (["model.biased_pairs=circle"], "model.biased_pairs"),
    (["model.biased_pairs=circle:frame", "model.feature_split_alpha_min=0.5"],
     "model.feature_split_alpha_min: expected a weight >= 1, got 0.5"),
    (["model.biased_pairs=circle:frame", "optim.loss=asl"], "model.feature_split's weighted loss is BCE"),
    (["model.name=causal_resnet8", "model.biased_pairs=circle:frame"], "has no feature split"),
    (["model.biased_pairs=circle:frame", "model.feature_split_norm=mean"],
     "model.feature_split_norm: expected one of batch, groups"),
])
def test_errors_are_one_line_naming_the_key(tmp_path, data_dir, extra, match, capsys):
    from cit_fast.cli import main

    args = ["train", f"data.train={data_dir / 'train.npz'}", f"data.test={data_dir / 'test.npz'}",
            "model.name=decoder_resnet8", "model.feature_split=true", "optim.epochs=1", "max_steps_per_epoch=1",
            "threads=1", "progress=false", f"out_dir={tmp_path / 'run'}", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "results.json").exists()
