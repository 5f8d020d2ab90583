"""The confounder check: do k-means clusters of a frozen network's spatial features recover
the scene S that confounds the labels (NMI), and do random confounders not?"""
import numpy as np
import pytest
import torch

from cit_fast.checkpoint import save_checkpoint
from cit_fast.config import load_config
from cit_fast.data.build import build_pipeline
from cit_fast.data.synthetic.scenes import make_scene_multilabel
from cit_fast.models import create_model
from cit_fast.models.confounders import fit_confounders, nmi, scene_nmi


def test_nmi_known_values():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert nmi(a, a) == pytest.approx(1.0)
    assert nmi(a, np.array([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0)  # names do not matter
    assert nmi(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-12)
    # a worked example: H(a) = H(b) = log 2, I = log 2 - H(b | a) with b | a = 0 pure, b | a = 1 half/half
    x, y = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])
    pa, pb = np.array([0.5, 0.5]), np.array([0.75, 0.25])
    h = lambda p: -(p * np.log(p)).sum()
    mi = h(pb) - 0.5 * h(np.array([0.5, 0.5]))
    assert nmi(x, y) == pytest.approx(2 * mi / (h(pa) + h(pb)))
    rng = np.random.default_rng(0)
    assert nmi(rng.integers(0, 4, 20000), rng.integers(0, 16, 20000)) < 0.01
    with pytest.raises(ValueError):
        nmi(a, a[:3])


def test_scene_nmi_counts_tokens_and_each_images_majority():
    assign = torch.tensor([0, 0, 1, 2, 2, 2, 3, 3])
    image = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    got = scene_nmi(assign, image, np.array([0, 1, 1]), 4)
    assert got["images"] == pytest.approx(nmi([0, 2, 3], [0, 1, 1]))
    assert got["tokens"] == pytest.approx(nmi(assign.numpy(), [0, 0, 0, 1, 1, 1, 1, 1]))


def test_kmeans_clusters_of_a_frozen_network_recover_the_scene(tmp_path, capsys):
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=10)  # untrained: the check needs no pre-training to run
    path = save_checkpoint({"model": net.state_dict(), "epoch": 1, "step_in_epoch": 0}, tmp_path, 1, 0)
    data = make_scene_multilabel("15", n_train=160, n_test=16, seed=1)
    cfg = load_config(None, ["model.name=causal_resnet8", f"model.confounder_net={path}", "model.num_confounders=8",
                             "model.embed_dim=16", "model.num_heads=2", "data.batch_size=40", "data.hflip=false"])
    model = create_model("causal_resnet8", num_classes=10, embed_dim=16, num_heads=2, num_confounders=8,
                         confounder_net=str(path))
    pipe = build_pipeline(data["train"], cfg, train=False, device=torch.device("cpu"))
    stats = fit_confounders(model, pipe, seed=0, iters=10, tokens_per_image=16)
    line = capsys.readouterr().out
    assert "NMI" in line and "random confounders" in line
    assert stats["nmi_images"] > 0.6 and stats["nmi_tokens"] > 0.25
    assert stats["nmi_images"] > stats["nmi_images_random"] + 0.3
    assert stats["nmi_tokens"] > 3 * stats["nmi_tokens_random"]
    # batches without a partition into strata: fitted, no check
    batches = list(pipe)
    stats = fit_confounders(model, batches, seed=0, iters=10, tokens_per_image=16)
    assert "nmi_tokens" not in stats
