import pytest
import torch

from cit_fast.models import create_model, model_task
from cit_fast.models.double_branch import blank_like, split_stages
from cit_fast.checkpoint import save_checkpoint


@pytest.mark.parametrize("name, size, shared", [("double_resnet8", 20, True), ("double_resnet8", 20, False),
                                                ("double_resnet18", 40, True)])
def test_shapes_and_gradients(name, size, shared):
    torch.manual_seed(0)
    m = create_model(name, num_classes=7, shared_low=shared)
    c = torch.randn(3, 3, size, size, requires_grad=True)
    x = torch.randn(3, 3, size, size, requires_grad=True)
    feats = m.forward_features(c, x)  # the two branches' spatial maps
    assert len(feats) == 2 and all(f.shape[:2] == (3, m.num_features) and f.dim() == 4 for f in feats)
    out = m.forward_head(feats)
    assert out.shape == (3, 7)
    out.square().sum().backward()
    assert c.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    assert (m.low_content is m.low_context) == shared
    assert model_task(name) == "double"


def test_branches_see_their_own_input():
    torch.manual_seed(0)
    m = create_model("double_resnet8", num_classes=4).eval()
    c, x = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    (c1, x1), (c2, x2) = m.forward_features(c, x), m.forward_features(c, torch.randn(2, 3, 16, 16))
    assert torch.equal(c1, c2)  # the content branch ignores the context input
    assert not torch.allclose(x1, x2)


def test_freeze_low_trains_only_top_two_blocks_and_fc():
    m = create_model("double_resnet18", num_classes=5, freeze_low=True)
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"high_content", "high_context", "fc"}
    # the top two stages of a torchvision ResNet are layer3 and layer4
    assert len(m.high_content) == 2 and m.high_content[0][0].conv1.in_channels == 128
    m.train()
    assert not m.low_content.training and m.high_content.training  # frozen BN keeps its statistics
    before = {k: v.clone() for k, v in m.low_content.state_dict().items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    after = m.low_content.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and running stats


def test_init_from_single_branch_checkpoint(tmp_path):
    torch.manual_seed(1)
    single = create_model("resnet8", num_classes=6).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong copy would show
        for mod in single.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    path = save_checkpoint({"model": single.state_dict(), "epoch": 1, "step_in_epoch": 0}, tmp_path, 1, 0)
    for shared in (True, False):
        m = create_model("double_resnet8", num_classes=6, init_single=str(path), shared_low=shared).eval()
        x = torch.randn(4, 3, 16, 16)
        # the same image on both branches gives exactly the single-branch logits (FC halves = W / 2)
        torch.testing.assert_close(m(x, x), single(x), atol=1e-5, rtol=1e-5)
        stages = split_stages(single)
        torch.testing.assert_close(m.high_context(m.low_context(x)), stages[2](stages[1](stages[0](x))))


def test_init_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.pt: not found"):
        create_model("double_resnet8", num_classes=3, init_single=str(tmp_path / "missing.pt"))
    other = create_model("resnet18", num_classes=3)
    p = save_checkpoint({"model": other.state_dict(), "epoch": 0, "step_in_epoch": 0}, tmp_path, 0, 0)
    with pytest.raises(ValueError, match="does not fit a single-branch resnet8"):
        create_model("double_resnet8", num_classes=3, init_single=str(p))


def test_table1_single_branch_ablations_use_one_input():
    torch.manual_seed(0)
    obj = create_model("objonly_resnet8", num_classes=3).eval()
    bg = create_model("bgonly_resnet8", num_classes=3).eval()
    c, x = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    assert torch.equal(obj(c, x), obj(c, torch.zeros_like(x)))
    assert torch.equal(bg(c, x), bg(torch.zeros_like(c), x))
    assert model_task("objonly_resnet8") == "double"


def test_blank_is_normalised_zero():
    x = torch.randn(2, 3, 4, 4)
    b = blank_like(x, (0.5, 0.4, 0.3), (0.25, 0.2, 0.1))
    torch.testing.assert_close(b[1, :, 2, 3], torch.tensor([-2.0, -2.0, -3.0]))


def test_shared_low_blocks_normalise_content_and_context_alike_in_train_and_eval():
    """Content (object on black) and context differ in distribution; with shared low blocks the
    batch-norm statistics seen in training must be the ones used in evaluation."""
    torch.manual_seed(0)
    m = create_model("double_resnet8", num_classes=3, shared_low=True)
    content = torch.randn(16, 3, 12, 12) * 0.1 - 2.0  # mostly "black" after normalisation
    context = torch.randn(16, 3, 12, 12) * 2.0 + 1.0
    m.train()
    with torch.no_grad():
        for _ in range(200):  # converge the running statistics
            m(content, context)
        train_feats = torch.cat([f.mean(dim=(2, 3)) for f in m.forward_features(content, context)], 1)
    m.eval()
    with torch.no_grad():
        eval_feats = torch.cat([f.mean(dim=(2, 3)) for f in m.forward_features(content, context)], 1)
    torch.testing.assert_close(eval_feats, train_feats, atol=0.05, rtol=0.05)
