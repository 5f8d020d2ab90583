"""Initial weights from torchvision ResNet state dicts and cit_fast checkpoints (models/weights.py)."""
import pytest
import torch
import torchvision

from cit_fast import checkpoint as ckpt
from cit_fast.config import ModelConfig
from cit_fast.models import build_model, create_model
from cit_fast.models.weights import from_torchvision, is_torchvision_resnet, load_weights


@pytest.fixture(scope="module")
def tv18(tmp_path_factory):
    """A torchvision resnet18 state dict file (the format of torchvision's ImageNet weight files)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a wrong mapping shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "resnet18-f37072fd.pth"
    torch.save(net.state_dict(), path)
    return net.eval(), path


def test_torchvision_names_map_onto_the_project_resnet(tv18):
    net, path = tv18
    state = torch.load(path, weights_only=True)
    assert is_torchvision_resnet(state) and not is_torchvision_resnet(from_torchvision(state))
    ours = load_weights(create_model("resnet18", num_classes=1000), str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), net(x))  # the same network, logits and all


def test_head_of_another_class_count_is_reinitialised_with_one_line(tv18, capsys):
    net, path = tv18
    torch.manual_seed(1)
    m = create_model("resnet18", num_classes=5)
    head = m.fc.weight.detach().clone()
    load_weights(m, str(path))
    assert capsys.readouterr().out.count("classifier head re-initialised (1000 -> 5 classes)") == 1
    assert torch.equal(m.fc.weight, head)  # its own initialisation
    torch.testing.assert_close(m.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    torch.testing.assert_close(m.stem[1].running_var, net.bn1.running_var)


def test_a_real_mismatch_is_one_error_naming_keys(tv18):
    _, path = tv18
    with pytest.raises(ValueError, match=r"does not fit resnet34: missing layer1\.2\.conv1\.weight"):
        build_model(ModelConfig(name="resnet34", init=str(path)), 5)
    with pytest.raises(ValueError, match="does not fit a single-branch resnet50: missing"):
        build_model(ModelConfig(name="double_resnet50", init_single=str(path)), 5)


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "module_prefix"])
def test_weight_file_wrappings(tv18, tmp_path, wrap):
    net, path = tv18
    sd = torch.load(path, weights_only=True)
    obj = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
           "module_prefix": {f"module.{k}": v for k, v in sd.items()}}[wrap]
    torch.save(obj, tmp_path / "w.pth")
    m = load_weights(create_model("resnet18", num_classes=1000), str(tmp_path / "w.pth"), quiet=True)
    torch.testing.assert_close(m.layer1[0].conv1.weight, net.layer1[0].conv1.weight)


@pytest.mark.parametrize("key", ["init", "init_single"])
def test_double_branch_starts_both_branches_from_a_torchvision_file(tv18, key):
    net, path = tv18
    m = build_model(ModelConfig(name="double_resnet18", **{key: str(path)}), 5).eval()
    for low, high in ((m.low_content, m.high_content), (m.low_context, m.high_context)):
        torch.testing.assert_close(low[0][0][0].weight, net.conv1.weight)  # stem conv inside res-block 1
        torch.testing.assert_close(high[-1][1].conv2.weight, net.layer4[1].conv2.weight)
    assert m.fc.out_features == 5


@pytest.mark.parametrize("name", ["causal_resnet18", "decoder_resnet18"])
def test_multilabel_trunk_from_a_torchvision_file(tv18, name):
    net, path = tv18
    m = build_model(ModelConfig(name=name, init_single=str(path), embed_dim=32, num_heads=2), 4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
    torch.testing.assert_close(m.forward_features(x), feats)


def test_single_branch_cit_fast_checkpoint_as_init(tmp_path):
    torch.manual_seed(0)
    single = create_model("resnet8", num_classes=3)
    p = ckpt.save_checkpoint({"model": single.state_dict(), "epoch": 1, "step_in_epoch": 0}, tmp_path, 1, 0)
    m = build_model(ModelConfig(name="resnet8", init=str(p)), 3)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), single.state_dict().values()))
