import pytest
import torch

from cit_fast.kernels import causal_attention_ref
from cit_fast.models import create_model, model_task
from cit_fast.models.causal_multilabel import MERGES, CausalMultiLabel, sine_positions
from cit_fast.checkpoint import load_checkpoint, save_checkpoint

C = 7  # labels: not a power of two


def small(name="causal_resnet8", **kw):
    torch.manual_seed(0)
    kw = {"embed_dim": 24, "num_heads": 3, "num_confounders": 5, "dropout": 0.0, **kw}
    if name.startswith("decoder_"):
        kw = {k: v for k, v in kw.items() if k not in ("num_confounders", "merge", "confounder_source")}
    return create_model(name, num_classes=C, **kw)


@pytest.mark.parametrize("merge", MERGES)
def test_shapes_and_gradients(merge):
    m = small(merge=merge)
    with torch.no_grad():
        m.confounders.set(torch.randn(5, 24), torch.rand(5) + 0.1)
    x = torch.randn(3, 3, 20, 20, requires_grad=True)  # 5x5 = 25 tokens
    out = m.forward_all(x)
    assert out["features"].shape == (3, C, 24)
    assert out["logits1"].shape == out["logits2"].shape == out["logits"].shape == (3, C)
    assert out["correlations"].shape == (3, C, C)
    g = torch.randn(3, C)
    (out["logits"] * g).sum().backward()
    assert x.grad.abs().sum() > 0
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    assert model_task("causal_resnet8") == "multilabel"


def test_decoder_baseline_is_branch_one_alone():
    m = small("decoder_resnet8").eval()
    assert not hasattr(m, "confounders")
    x = torch.randn(2, 3, 16, 16)
    out = m.forward_all(x)
    assert torch.equal(out["logits"], out["logits1"]) and "correlations" not in out
    # the causal model with the same seed has the same branch 1
    c = small("causal_resnet8").eval()
    torch.testing.assert_close(c.forward_all(x)["logits1"], out["logits1"])


def test_intervention_is_the_prior_weighted_attention():
    m = small().eval()
    z, p = torch.randn(5, 24), torch.softmax(torch.randn(5), 0)
    m.confounders.set(z, p)
    feats = torch.randn(2, C, 24)
    e = causal_attention_ref(m.q_proj(feats), m.k_proj(z), m.v_proj(z), p, 3)
    torch.testing.assert_close(m.intervene(feats), m.norm(feats + m.out_proj(e)))
    r = m.correlations(feats)
    h = m.intervene(feats)
    # R[b, i, j] is classifier j of branch 2 applied to the intervened feature of label i
    torch.testing.assert_close(r[1, 4, 2], h[1, 4] @ m.head2.weight[2] + m.head2.bias[2])


def test_proposed_merge_weights_present_categories():
    m = small(merge="proposed").eval()
    x = torch.randn(2, 3, 16, 16)
    out = m.forward_all(x)
    a = torch.sigmoid(out["logits1"])
    a = a / a.sum(1, keepdim=True)
    torch.testing.assert_close(out["logits2"], torch.einsum("bi,bij->bj", a, out["correlations"]))
    torch.testing.assert_close(out["logits"], out["logits1"] + out["logits2"])


def test_checkpoint_round_trip_keeps_confounders(tmp_path):
    m = small().eval()
    z, p = torch.randn(5, 24), torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])
    m.confounders.set(z, p)
    path = save_checkpoint({"model": m.state_dict(), "epoch": 1, "step_in_epoch": 0}, tmp_path, 1, 0)
    m2 = create_model("causal_resnet8", num_classes=C, embed_dim=24, num_heads=3, num_confounders=5,
                      dropout=0.0).eval()
    assert not bool(m2.confounders.fitted)
    m2.load_state_dict(load_checkpoint(path)["model"])
    assert bool(m2.confounders.fitted)
    torch.testing.assert_close(m2.confounders.z, z)
    torch.testing.assert_close(m2.confounders.prior, p)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(m2(x), m(x))


@pytest.mark.parametrize("source, zdim, k", [("early", 16, 5), ("label", 24, C), ("random", 24, 5)])
def test_confounder_sources_set_the_bank_shape(source, zdim, k):
    m = small(confounder_source=source)
    assert tuple(m.confounders.z.shape) == (k, zdim)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, C)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="merge must be one of"):
        small(merge="max")
    with pytest.raises(ValueError, match="confounder_source must be one of"):
        small(confounder_source="pca")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        small(embed_dim=20, num_heads=3)
    with pytest.raises(ValueError, match="confounders must be"):
        small().confounders.set(torch.zeros(4, 24), torch.ones(4))


def test_sine_positions_distinct():
    p = sine_positions(3, 5, 16)
    assert p.shape == (15, 16)
    assert torch.cdist(p, p).add(torch.eye(15)).min() > 1e-3


def test_confounder_mix_counts_each_token_nearest_prototype():
    m = small(observed_confounders=True)
    z = torch.eye(5, 24) * 10  # prototypes far apart
    m.confounders.set(z, torch.full((5,), 0.2))
    # image 0: 3 tokens near z1, 1 near z4; image 1: all 4 near z0
    tokens = torch.stack([z[[1, 1, 4, 1]], z[[0, 0, 0, 0]]]) + 0.1 * torch.randn(2, 4, 24)
    mix = m.confounder_mix(tokens)
    torch.testing.assert_close(mix, torch.tensor([[0, 0.75, 0, 0, 0.25], [1.0, 0, 0, 0, 0]]))


def test_observed_confounders_seen_in_training_marginalised_in_evaluation():
    m = small(observed_confounders=True)
    z, p = torch.randn(5, 24), torch.softmax(torch.randn(5), 0)
    m.confounders.set(z, p)
    x = torch.randn(3, 3, 20, 20, requires_grad=True)
    out = m.train().forward_all(x)  # P(Y | X, z): each image's own mix
    tokens = m.proj(m.backbone.forward_features(x)).flatten(2).transpose(1, 2)
    mix = m.confounder_mix(tokens)
    assert torch.allclose(mix.sum(1), torch.ones(3)) and not mix.requires_grad
    u = m.ctx_head(m.ctx_proj(z))  # (K, C)
    torch.testing.assert_close(out["context_logits"], mix @ u)
    merged = out["logits1"] + out["logits2"]
    torch.testing.assert_close(out["logits"], merged + out["context_logits"])
    out["logits"].sum().backward()
    assert m.ctx_proj.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    # sum_z P(Y | X, z) P(z): the same context term for every image, so each class ranks images as
    # the two branches do
    ev = m.eval().forward_all(x.detach())
    torch.testing.assert_close(ev["context_logits"], (p @ u).expand(3, -1))
    torch.testing.assert_close(ev["logits"], ev["logits1"] + ev["logits2"] + p @ u)


def test_observed_confounders_need_kmeans_prototypes():
    for kw in ({"confounder_source": "label"}, {"confounder_source": "random"}):
        with pytest.raises(ValueError, match="observed_confounders needs"):
            small(observed_confounders=True, **kw)
    with pytest.raises(ValueError, match="observed_confounders needs"):
        CausalMultiLabel("resnet8", C, embed_dim=24, num_heads=3, causal=False, observed_confounders=True)


@pytest.mark.parametrize("name", ["causal_resnet8", "decoder_resnet8"])
def test_trunk_initialised_from_a_single_branch_checkpoint(tmp_path, name):
    torch.manual_seed(1)
    single = create_model("resnet8", num_classes=4)
    path = save_checkpoint({"model": single.state_dict(), "epoch": 1, "step_in_epoch": 0}, tmp_path, 1, 0)
    m = small(name, init_single=str(path))
    trunk = {k: v for k, v in single.state_dict().items() if not k.startswith("fc.")}
    got = {k: v for k, v in m.backbone.state_dict().items()}
    assert trunk.keys() == got.keys()
    for k in trunk:
        torch.testing.assert_close(got[k], trunk[k])
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(m.eval().forward_features(x), single.eval().forward_features(x))
    with pytest.raises(ValueError, match="does not fit a single-branch resnet8"):
        torch.manual_seed(2)
        other = create_model("resnet20", num_classes=4)
        bad = save_checkpoint({"model": other.state_dict(), "epoch": 1, "step_in_epoch": 0}, tmp_path / "b", 1, 0)
        small(name, init_single=str(bad))
