import pytest
import torch
import torch.nn.functional as F

from cit_fast.train.losses import asl_loss, bce_loss, build_loss


def test_bce_sums_classes_and_averages_batch():
    x, y = torch.randn(5, 7), (torch.rand(5, 7) > 0.5).float()
    assert bce_loss(x, y) == pytest.approx(float(F.binary_cross_entropy_with_logits(x, y) * 7), rel=1e-6)


def test_asl_without_focusing_or_shift_is_bce():
    x, y = torch.randn(4, 9), (torch.rand(4, 9) > 0.5).float()
    assert asl_loss(x, y, 0, 0, 0) == pytest.approx(float(bce_loss(x, y)), rel=1e-6)


def test_asl_matches_its_definition():
    """Ridnik et al. Eq. 2-4: L+ = (1-p)^g+ log p, L- = p_m^g- log(1-p_m), p_m = max(p - m, 0)."""
    x = torch.tensor([[2.0, -1.0, 0.3], [-3.0, 0.01, 1.5]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    p = torch.sigmoid(x)
    pm = (p - 0.05).clamp(min=0)
    ref = -(y * (1 - p) ** 1 * torch.log(p) + (1 - y) * pm ** 4 * torch.log(1 - pm)).sum() / 2
    assert float(asl_loss(x, y, gamma_neg=4, gamma_pos=1, clip=0.05)) == pytest.approx(float(ref), rel=1e-5)
    # easy negatives (p < clip) cost nothing: the probability shift discards them
    assert float(asl_loss(torch.tensor([[-5.0]]), torch.tensor([[0.0]]))) == 0.0


def test_asl_gradients_flow():
    x = torch.randn(3, 4, requires_grad=True)
    asl_loss(x, (torch.rand(3, 4) > 0.5).float()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_build_loss_choices():
    y = torch.tensor([1, 0])
    assert float(build_loss("auto", False)(torch.zeros(2, 3), y)) == pytest.approx(float(torch.log(torch.tensor(3.0))))
    assert build_loss("auto", True) is bce_loss
    with pytest.raises(ValueError, match="needs multi-hot labels"):
        build_loss("asl", False)
    with pytest.raises(ValueError, match="use bce or asl"):
        build_loss("ce", True)
    with pytest.raises(ValueError, match="loss must be one of"):
        build_loss("focal", True)
