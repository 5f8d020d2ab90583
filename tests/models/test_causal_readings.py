"""The causal multi-label model's options: the probability-raising reading of the correlation branch, branch 1
supervised on its own, a frozen trunk, and confounders from a separate pre-trained network."""
from pathlib import Path

import pytest
import torch

from cit_fast.checkpoint import save_checkpoint
from cit_fast.config import load_config
from cit_fast.errors import ConfigError
from cit_fast.kernels import causal_attention_ref
from cit_fast.models import create_model
from cit_fast.models.causal_multilabel import MultiLabelOutput
from cit_fast.models.confounders import fit_confounders, kmeans, select_tokens
from cit_fast.train.loop import compute_loss
from tests.helpers import image_batch

C = 7


def small(name="causal_resnet8", **kw):
    torch.manual_seed(0)
    kw = {"embed_dim": 24, "num_heads": 3, "num_confounders": 5, "dropout": 0.0, **kw}
    if name.startswith("decoder_"):
        kw = {k: v for k, v in kw.items() if k in ("embed_dim", "num_heads", "dropout", "freeze_trunk")}
    m = create_model(name, num_classes=C, **kw)
    if hasattr(m, "confounders"):
        with torch.no_grad():
            m.confounders.set(torch.randn(m.confounders.z.shape), torch.rand(m.confounders.num) + 0.1)
    return m


def test_raising_measures_each_effect_against_the_labels_baseline():
    m = small(correlation="raising").eval()
    x = torch.randn(2, 3, 16, 16)
    out = m.forward_all(x)
    z, p = m.confounders.z, m.confounders.prior
    # H_0: the confounders at their prior with no category acted upon (uniform attention)
    e0 = (p[:, None] * m.v_proj(z)).mean(0)
    h0 = m.norm(m.out_proj(e0))
    torch.testing.assert_close(m.baseline_feature(), h0)
    torch.testing.assert_close(m.baseline_feature(), m.norm(m.out_proj(causal_attention_ref(
        torch.zeros(1, 1, 24), m.k_proj(z), m.v_proj(z), p, 3)))[0, 0])
    h = m.intervene(out["features"])
    s = lambda f: f @ m.head2.weight.T + m.head2.bias  # s_j(h) for every j
    r = out["correlations"]
    torch.testing.assert_close(r, s(h) - s(h0))  # R[b, i, j] = s_j(H_i) - s_j(H_0)
    # logits2 = baseline + each category's raising weighted by its presence probability (not normalised)
    a = torch.sigmoid(out["logits1"])
    torch.testing.assert_close(out["logits2"], s(h0) + torch.einsum("bi,bij->bj", a, r))
    torch.testing.assert_close(out["logits"], out["logits1"] + out["logits2"])


def test_raising_absent_categories_raise_nothing():
    m = small(correlation="raising").eval()
    with torch.no_grad():
        m.head.bias.fill_(-50.0)  # branch 1 sees no category at all
    out = m.forward_all(torch.randn(2, 3, 16, 16))
    base = m.head2(m.baseline_feature()[None, None].expand(1, C, -1))
    torch.testing.assert_close(out["logits2"], base.expand(2, -1), atol=1e-5, rtol=0)


def test_residual_reading_is_unchanged_by_default():
    m = small().eval()
    assert m.correlation == "residual" and m.branch1_loss == 0
    out = m.forward_all(torch.randn(2, 3, 16, 16))
    a = torch.sigmoid(out["logits1"])
    a = a / a.sum(1, keepdim=True)
    torch.testing.assert_close(out["logits2"], torch.einsum("bi,bij->bj", a, out["correlations"]))


def test_branch_one_supervised_on_its_own_in_training_only():
    m = small(correlation="raising", branch1_loss=0.5).train()
    x, y = torch.randn(4, 3, 16, 16), (torch.rand(4, C) < 0.3).float()
    out = m(x)
    assert isinstance(out, MultiLabelOutput) and out.weights == {"branch1": 0.5}
    full = m.forward_all(x)
    torch.testing.assert_close(out.logits, full["logits"])
    torch.testing.assert_close(out.aux["branch1"], full["logits1"])
    bce = torch.nn.BCEWithLogitsLoss()
    batch = image_batch(x, y)
    loss = compute_loss(m, batch, bce)
    torch.testing.assert_close(loss, bce(full["logits"], y) + 0.5 * bce(full["logits1"], y))
    # epoch-wise augmentation (Eq. 12): the output splits into the two halves
    loss2 = compute_loss(m, batch.replace(original=x), bce)
    torch.testing.assert_close(loss2, 2 * loss)
    assert isinstance(m.eval()(x), torch.Tensor)  # evaluation keeps receiving plain logits
    assert isinstance(small(correlation="raising").train()(x), torch.Tensor)  # no aux loss: a tensor


@pytest.mark.parametrize("name", ["causal_resnet8", "decoder_resnet8"])
def test_frozen_trunk_is_not_trained(name):
    m = small(name, freeze_trunk=True).train()
    assert not m.backbone.training and m.decoder.training
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), (torch.rand(4, C) < 0.3).float()
    q0 = m.queries.detach().clone()
    torch.nn.functional.binary_cross_entropy_with_logits(m(x), y).backward()
    opt.step()
    for k, v in m.backbone.state_dict().items():  # weights and batch-norm statistics
        assert torch.equal(v, before[k]), k
    assert not torch.equal(m.queries, q0)


def _random_net(tmp_path):
    torch.manual_seed(5)
    net = create_model("resnet8", num_classes=10)
    path = save_checkpoint({"model": net.state_dict(), "epoch": 1, "step_in_epoch": 0}, tmp_path / "net", 1, 0)
    return net, str(path)


def test_confounders_from_a_separate_network(tmp_path):
    net, path = _random_net(tmp_path)
    m = small(confounder_net=path)
    assert m.confounders.z.shape == (5, 64)  # the network's channels, not D
    assert m.k_proj.in_features == 64
    x = torch.rand(12, 3, 16, 16)
    batches = [image_batch(x[s:s + 4], torch.zeros(4, C), torch.arange(s, s + 4)) for s in (0, 4, 8)]
    fit_confounders(m, batches, seed=2, iters=5, tokens_per_image=8, init_pool=64)
    net.eval()
    with torch.no_grad():
        tok = net.forward_features(x).flatten(2).transpose(1, 2)  # what k-means must cluster: (B, T, 64)
    f, i = select_tokens(tok, torch.arange(12), 8, 2)
    centers, _, _ = kmeans(f, i, 5, 5, 2, 64)
    torch.testing.assert_close(m.confounders.z, centers)
    # a run rebuilt from its checkpoint does not need the network's file any more: Z is in the state dict
    state = m.state_dict()
    Path(path).unlink()
    again = small(confounder_net=path)
    again.load_state_dict(state)
    torch.testing.assert_close(again.eval()(x[:2]), m.eval()(x[:2]))


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="correlation"):
        small(correlation="both")
    with pytest.raises(ValueError, match="confounder_net"):
        small(confounder_net="x.pt", confounder_source="random")
    with pytest.raises(ConfigError, match="model.correlation"):
        load_config(None, ["model.correlation=both"])
    with pytest.raises(ConfigError, match="model.branch1_loss"):
        load_config(None, ["model.branch1_loss=-1"])
    with pytest.raises(ConfigError, match="model.confounder_net"):
        load_config(None, ["model.confounder_net=x.pt", "model.confounder_source=label"])
    cfg = load_config(None, ["model.confounder_net=x.pt"], base=tmp_path)
    assert cfg.model.confounder_net == str(tmp_path / "x.pt")  # a path key: made absolute


def test_frozen_trunk_cache_serves_seen_inputs_exactly():
    m = small(freeze_trunk=True, trunk_cache_mb=1).train()
    ref = small(freeze_trunk=True).train()  # same seed: same weights, no cache
    calls, trunk = [], m.backbone.forward_features
    m.backbone.forward_features = lambda x: calls.append(len(x)) or trunk(x)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(m(x), ref(x))
    assert len(m._trunk_cache) == 4 and calls == [4]
    y = torch.cat([x[2:], torch.randn(1, 3, 16, 16)])  # two seen inputs, one new
    torch.testing.assert_close(m(y), ref(y))
    assert calls == [4, 1] and len(m._trunk_cache) == 5
    m.eval()(x)  # evaluation never reads the cache
    assert calls[-1] == 4
    m.train().load_state_dict(ref.state_dict())  # new weights: the cache is emptied
    assert not m._trunk_cache
    tiny = small(freeze_trunk=True, trunk_cache_mb=1)
    tiny.trunk_cache_bytes = 3 * 64 * 4 * 4 * 4  # room for three 16x16 inputs' maps (64 x 4 x 4 floats)
    tiny.train()(x)
    assert len(tiny._trunk_cache) == 3
    with pytest.raises(ValueError, match="frozen"):
        small(trunk_cache_mb=1)
    with pytest.raises(ConfigError, match="model.trunk_cache_mb"):
        load_config(None, ["model.trunk_cache_mb=10"])
