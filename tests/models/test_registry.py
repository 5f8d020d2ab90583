"""Every registered model builds from a ModelConfig, runs forward and backward; registration rules."""
import dataclasses

import pytest
import torch

from cit_fast.config import ModelConfig
from cit_fast.models import build_model, list_models, model_task, register_model
from cit_fast.models.build import model_kwargs
from cit_fast.models.registry import MODEL_TASKS, model_entry

CONFIG_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
TINY = dict(embed_dim=8, num_heads=2, num_confounders=3, confounder_tokens=4)  # small transformer heads
BIG_TRUNKS = ("resnet34", "resnet50", "resnet56")  # several seconds each on a loaded 2-core CPU: make test only
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n.endswith(BIG_TRUNKS) else n for n in list_models()]


@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_runs_forward_and_backward(name):
    torch.manual_seed(0)
    entry = model_entry(name)
    assert entry.task in MODEL_TASKS
    assert set(entry.options) <= CONFIG_FIELDS, f"{name}: options no config key can set"
    model = build_model(ModelConfig(name=name, **TINY), num_classes=3).train()
    if hasattr(model, "confounders"):  # fitted over the training set before the first step
        with torch.no_grad():
            model.confounders.set(torch.randn(model.confounders.z.shape), torch.rand(model.confounders.num) + 0.1)
    x = torch.randn(2, 3, 32, 32)  # the smallest input every trunk (stride 32) takes
    out = model(x, torch.randn_like(x)) if entry.task == "double" else model(x)
    logits = getattr(out, "logits", out)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_options_reach_the_constructor_that_names_them():
    cfg = ModelConfig(merge="linear", shared_low=False, embed_dim=16)
    assert model_kwargs("resnet20", cfg) == {"feature_split": False}  # its multi-label option (Singh et al.)
    assert model_kwargs("double_resnet8", cfg) == {"shared_low": False, "freeze_low": False, "init_single": ""}
    assert model_kwargs("objonly_resnet8", cfg) == {"init_single": ""}
    assert model_kwargs("causal_resnet8", cfg)["merge"] == "linear"
    assert "merge" not in model_kwargs("decoder_resnet8", cfg) and model_kwargs("decoder_resnet8", cfg)["embed_dim"] == 16
    assert model_kwargs("decoder_resnet8", dataclasses.replace(cfg, feature_split=True))["feature_split"] is True
    assert "feature_split" not in model_kwargs("causal_resnet8", cfg)  # the decoder-only model's option


@pytest.mark.parametrize("name, data_multilabel, task", [
    ("resnet20", False, "single"), ("resnet20", True, "multilabel"), ("double_resnet20", False, "double"),
    ("bgonly_resnet8", False, "double"), ("causal_resnet8", False, "multilabel"), ("decoder_resnet18", True, "multilabel"),
])
def test_task_declared_at_registration(name, data_multilabel, task):
    assert model_task(name, data_multilabel) == task


def test_registration_rules():
    with pytest.raises(TypeError, match="name its options"):
        register_model(lambda num_classes=2, **kw: None, name="_test_kwargs_model")
    with pytest.raises(TypeError, match="num_classes"):
        register_model(lambda classes=2: None, name="_test_no_classes_model")
    with pytest.raises(ValueError, match="task must be one of"):
        register_model(task="video")
    with pytest.raises(ValueError, match="registered twice"):
        register_model(lambda num_classes=2: None, name="resnet20")
    assert "_test_kwargs_model" not in list_models() and "_test_no_classes_model" not in list_models()
