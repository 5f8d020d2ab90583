"""The rebuilt causal branch (model.intervention=vcrcnn): E over the raw prototypes, branch 2 on [X detached ; E],
probability raising against the no-category baseline, merged with detached presence probabilities, branch 1 on
its own loss, the dictionary fitted once, and the probes after training."""
import json
import math

import pytest
import torch

from cit_fast.checkpoint import save_checkpoint
from cit_fast.config import load_config
from cit_fast.data.synthetic.benchmark import save_arrays
from cit_fast.data.synthetic.multilabel import make_biased_multilabel
from cit_fast.errors import ConfigError
from cit_fast.eval.diagnostics import intervention_probes
from cit_fast.models import create_model
from cit_fast.models.causal_multilabel import MultiLabelOutput
from cit_fast.train.loop import compute_loss
from tests.helpers import image_batch

C, K, D = 6, 5, 24


def vcr(**kw):
    torch.manual_seed(0)
    m = create_model("causal_resnet8", num_classes=C, embed_dim=D, num_heads=3, num_confounders=K, dropout=0.0,
                     intervention="vcrcnn", **kw)
    with torch.no_grad():
        m.confounders.set(torch.randn(m.confounders.z.shape), torch.rand(K) + 0.1)
    return m


def _expected(m, feats):
    """E by hand: K sum_z softmax_z(q(X_i) . k(z) / sqrt(Dz)) P(z) z."""
    z, p = m.confounders.z, m.confounders.prior
    a = torch.softmax(m.q_proj(feats) @ m.k_proj(z).T / math.sqrt(z.shape[1]), -1)  # (B, C, K)
    return K * (a * p) @ z, a


def _s(m, u):
    return torch.relu(m.branch2(u)) @ m.head2.weight.T + m.head2.bias


def test_shapes_raw_prototypes_and_the_expected_confounder():
    m = vcr().eval()
    zdim = m.num_features  # the trunk's raw map's channels (64), not D
    assert m.confounders.z.shape == (K, zdim) and zdim != D
    assert not hasattr(m, "v_proj") and not hasattr(m, "out_proj")  # the values are the raw prototypes
    out = m.forward_all(torch.randn(3, 3, 16, 16))
    assert out["features"].shape == (3, C, D)
    assert out["logits1"].shape == out["logits2"].shape == out["logits"].shape == (3, C)
    assert out["correlations"].shape == (3, C, C)
    e, a = _expected(m, out["features"])
    torch.testing.assert_close(m.expected_confounder(out["features"]), e)
    u, u0 = m.branch2_input(out["features"])
    assert u.shape == (3, C, D + zdim) and u0.shape == (D + zdim,)
    torch.testing.assert_close(u, torch.cat([out["features"], e], -1))
    # a uniform attention gives the prior mean of the prototypes: E on a prototype's scale
    with torch.no_grad():
        m.q_proj.weight.zero_()
        m.q_proj.bias.zero_()
    torch.testing.assert_close(m.expected_confounder(out["features"])[1, 2], m.confounders.prior @ m.confounders.z)


def test_raising_against_the_no_category_baseline_and_the_merge():
    m = vcr().eval()
    out = m.forward_all(torch.randn(2, 3, 16, 16))
    x = out["features"]
    e, _ = _expected(m, x)
    z, p = m.confounders.z, m.confounders.prior
    u0 = torch.cat([torch.zeros(D), p @ z])  # no category acted upon, the confounders at their prior
    r = _s(m, torch.cat([x, e], -1)) - _s(m, u0)  # R[b, i, j] = s_j([X_i ; E_i]) - s_j([0 ; E_0])
    r = r * (1 - torch.eye(C))  # a category does not raise itself
    torch.testing.assert_close(out["correlations"], r)
    assert torch.all(out["correlations"].diagonal(dim1=1, dim2=2) == 0)
    pres = torch.sigmoid(out["logits1"])  # not normalised
    torch.testing.assert_close(out["logits2"], torch.einsum("bi,bij->bj", pres, r))
    torch.testing.assert_close(out["logits"], out["logits1"] + out["logits2"])
    with torch.no_grad():  # branch 1 sees nothing: nothing is raised, the merged logits are branch 1's
        m.head.bias.fill_(-60.0)
    out = m.forward_all(torch.randn(2, 3, 16, 16))
    torch.testing.assert_close(out["logits"], out["logits1"], atol=1e-6, rtol=0)


def _grads(m, value):
    m.zero_grad()
    value.backward(retain_graph=True)
    return {n for n, q in m.named_parameters() if q.grad is not None and q.grad.abs().sum() > 0}


def test_branch_two_writes_nothing_into_trunk_decoder_queries_or_branch_one():
    m = vcr().train()
    x = torch.randn(4, 3, 16, 16)
    out = m.forward_all(x)
    got = _grads(m, (out["logits2"] * torch.randn(4, C)).sum())
    shared = ("backbone.", "proj.", "decoder.", "queries", "head.")
    assert not [n for n in got if n.startswith(shared)], sorted(got)
    assert {"q_proj.weight", "k_proj.weight", "branch2.weight", "head2.weight"} <= got
    # branch 1 learns from its own loss only; the merged loss reaches branch 2 over a fixed branch 1
    y = (torch.rand(4, C) < 0.4).float()
    o = m(x)
    assert isinstance(o, MultiLabelOutput) and o.weights == {"branch1": 1.0}
    torch.testing.assert_close(o.logits, out["logits"])
    bce = torch.nn.BCEWithLogitsLoss()
    loss = compute_loss(m, image_batch(x, y), bce)
    torch.testing.assert_close(loss, bce(out["logits"], y) + bce(out["logits1"], y))
    merged = _grads(m, bce(o.logits, y))
    assert not [n for n in merged if n.startswith(shared)] and "branch2.weight" in merged
    assert vcr(branch1_loss=0.5).train()(x).weights == {"branch1": 0.5}
    assert isinstance(m.eval()(x), torch.Tensor)


@pytest.mark.parametrize("backbone", ["", "resnet18"])
def test_dictionary_from_a_separate_frozen_network(tmp_path, backbone):
    from cit_fast.models.confounders import fit_confounders

    torch.manual_seed(5)
    net = create_model(backbone or "resnet8", num_classes=10)
    path = str(save_checkpoint({"model": net.state_dict(), "epoch": 1, "step_in_epoch": 0}, tmp_path / "n", 1, 0))
    m = vcr(confounder_net=path, confounder_backbone=backbone)
    zdim = net.num_features
    assert m.confounders.z.shape == (K, zdim) and m.k_proj.in_features == m.q_proj.out_features == zdim
    x = torch.rand(8, 3, 32, 32)
    fit_confounders(m, [image_batch(x, torch.zeros(8, C))], seed=1, iters=3, tokens_per_image=4, init_pool=64)
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        tok = net.eval().forward_features(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(m.confounder_tokens(x), tok)  # k-means clustered the frozen network's map
    assert not any(q.requires_grad for q in m._confounder_net[0].parameters())
    assert m.forward_all(x)["logits"].shape == (8, C)
    with pytest.raises(ConfigError, match="model.confounder_backbone"):
        load_config(None, ["model.confounder_backbone=resnet18"])


def test_config_keys_and_old_runs_read_as_the_residual_branch(tmp_path):
    cfg = load_config(None, ["model.name=causal_resnet8", "model.intervention=vcrcnn"])
    assert cfg.model.intervention == "vcrcnn"
    for bad in ("model.confounder_refresh=2", "model.merge=sum", "model.observed_confounders=true"):
        with pytest.raises(ConfigError, match="model.intervention=vcrcnn"):
            load_config(None, ["model.intervention=vcrcnn", bad])
    with pytest.raises(ConfigError, match="model.intervention"):
        load_config(None, ["model.intervention=both"])
    from cit_fast.config import from_dict, to_dict

    tree = to_dict(load_config(None, ["model.name=causal_resnet8"]))
    del tree["model"]["intervention"]  # a run saved before the key existed
    assert from_dict(tree).model.intervention == "residual"


def test_probes_of_the_rebuilt_branch():
    m = vcr().eval()
    feats = torch.randn(10, C, D)
    p = intervention_probes(m, feats)
    with torch.no_grad():
        e, a = _expected(m, feats)
    w = m.branch2.weight.detach()
    ratio = (e @ w[:, D:].T).norm(dim=-1).mean() / (feats @ w[:, :D].T).norm(dim=-1).mean()
    assert p["norm_ratio"] == pytest.approx(float(ratio), rel=1e-5)
    assert p["input_ratio"] == pytest.approx(float(e.norm(dim=-1).mean() / feats.norm(dim=-1).mean()), rel=1e-5)
    ent = float((-(a * a.log()).sum(-1)).mean() / math.log(K))
    assert p["entropy"] == pytest.approx(ent, rel=1e-5) and 0 < p["entropy"] <= 1
    with torch.no_grad():  # a zero query: uniform attention, entropy 1, and E the same for every image
        m.q_proj.weight.zero_()
        m.q_proj.bias.zero_()
    p = intervention_probes(m, feats)
    assert p["entropy"] == pytest.approx(1.0) and p["spread_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert intervention_probes(create_model("decoder_resnet8", num_classes=C, embed_dim=D), feats) == {}


@pytest.mark.slow
def test_training_fits_the_dictionary_once_and_reports_the_probes(tmp_path, monkeypatch, capsys):
    import cit_fast.train.loop as loop

    sets = make_biased_multilabel(n_train=48, n_test_free=8, pair_test=4, size=32, seed=0)
    save_arrays(sets["train"], str(tmp_path / "train.npz"))
    save_arrays(sets["test"], str(tmp_path / "test.npz"))
    fits = []
    real = loop.fit_confounders
    monkeypatch.setattr(loop, "fit_confounders", lambda *a, **k: fits.append(1) or real(*a, **k))
    res = loop.main(load_config(None, [
        "data.source=arrays", f"data.train={tmp_path / 'train.npz'}", f"data.test={tmp_path / 'test.npz'}",
        "model.name=causal_resnet8", "model.intervention=vcrcnn", "model.embed_dim=16", "model.num_heads=2",
        "model.num_confounders=4", "model.confounder_tokens=4", "model.dropout=0", "optim.lr=0.02",
        "optim.epochs=2", "optim.milestones=[1]", "progress=false", "threads=1", "data.batch_size=16",
        f"out_dir={tmp_path / 'run'}"]))
    assert len(fits) == 1  # once, before training: never refitted under learned projections
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("intervention probes")]
    assert len(line) == 1 and "attention entropy" in line[0] and "|E-part| / |x-part|" in line[0]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["intervention"]
    assert saved == res["intervention"]
    assert {"norm_ratio", "input_ratio", "spread_ratio", "entropy", "branch2_share"} <= set(saved)
    assert 0 < saved["entropy"] <= 1 and saved["norm_ratio"] > 0
    from cit_fast import checkpoint as ckpt
    from cit_fast.eval.diagnostics import run_diagnostics

    paths = run_diagnostics(ckpt.find_latest(tmp_path / "run" / "checkpoints"), tmp_path / "diag", max_images=8)
    assert paths["embedding"].stat().st_size > 1000 and paths["attention"].stat().st_size > 1000  # Dz != D: drawn


def test_own_label_reading_raises_each_label_by_its_own_feature_only():
    torch.manual_seed(0)
    m = create_model("causal_resnet8", num_classes=C, embed_dim=D, num_heads=3, num_confounders=K, dropout=0.0,
                     intervention="vcrcnn_own").eval()
    with torch.no_grad():
        m.confounders.set(torch.randn(m.confounders.z.shape), torch.rand(K) + 0.1)
    x = torch.randn(2, 3, 16, 16)
    out = m.forward_all(x)
    f = out["features"]
    e, _ = _expected(m, f)
    u0 = torch.cat([torch.zeros(D), m.confounders.prior @ m.confounders.z])
    own = (_s(m, torch.cat([f, e], -1)) - _s(m, u0)).diagonal(dim1=1, dim2=2)  # s_j([X_j ; E_j]) - s_j([0 ; E_0])
    torch.testing.assert_close(out["logits2"], own)
    torch.testing.assert_close(out["logits"], out["logits1"] + own)
    assert torch.count_nonzero(out["correlations"] * (1 - torch.eye(C))) == 0
    with torch.no_grad():  # another label's feature cannot move label 0's logit
        f2 = f.clone()
        f2[:, 1:] += torch.randn_like(f2[:, 1:])
    torch.testing.assert_close(m.heads_of(f2)["logits2"][:, 0], out["logits2"][:, 0])
    m.train()
    got = _grads(m, (m.forward_all(x)["logits2"]).sum())
    assert got and not [n for n in got if n.startswith(("backbone.", "proj.", "decoder.", "queries", "head."))]
    assert intervention_probes(m.eval(), f)["norm_ratio"] > 0
    with pytest.raises(ConfigError, match="model.intervention=vcrcnn_own"):
        load_config(None, ["model.intervention=vcrcnn_own", "model.merge=sum"])
