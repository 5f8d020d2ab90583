import pytest
import torch

from cit_fast.models import create_model, list_models


@pytest.mark.parametrize("name, params", [("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet56", 0.85e6)])
def test_cifar_resnet_sizes_match_he_et_al(name, params):
    m = create_model(name, num_classes=10)
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - params) / params < 0.03  # Table 6 of He et al.: 0.27M / 0.46M / 0.85M


@pytest.mark.parametrize("name, size", [("resnet8", 32), ("resnet20", 28), ("resnet18", 64), ("resnet50", 64)])
def test_forward_backward_shapes(name, size):
    m = create_model(name, num_classes=7)
    x = torch.randn(2, 3, size, size, requires_grad=True)
    feats = m.forward_features(x)
    assert feats.dim() == 4 and feats.shape[1] == m.num_features
    out = m.forward_head(feats)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_registry():
    assert {"resnet20", "resnet32", "resnet56", "resnet18", "resnet34", "resnet50"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'resnet21'"):
        create_model("resnet21")
