"""`cit-fast export`: each format read back by its own consumer (torchvision, safetensors, onnxruntime,
torch.jit.load) gives the checkpoint's logits; formats that cannot hold a model are refused in one line."""
import json
from pathlib import Path

import pytest
import torch

from cit_fast.cli import main as cli
from cit_fast.config import load_config
from cit_fast.data.synthetic.benchmark import save_arrays
from cit_fast.data.synthetic.multilabel import make_biased_multilabel
from cit_fast.eval.run import load_run
from cit_fast.train.loop import main

COMMON = ["optim.epochs=1", "optim.milestones=[1]", "progress=false", "threads=1", "data.batch_size=8"]
SYNTH = ["data.synthetic_train_per_class=4", "data.synthetic_test_per_class=2", "data.image_size=32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short run per kind of model: single-branch torchvision ResNet, its Only-Obj ablation, a CIFAR
    ResNet, a double-branch model and a multi-label model."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in [("resnet18", []), ("objonly_resnet18", ["intervention.plan=stratify_c"]), ("resnet8", []),
                        ("double_resnet8", ["intervention.plan=stratify_c"])]:
        main(load_config(None, [*COMMON, *SYNTH, f"model.name={name}", f"out_dir={root / name}", *extra]))
        out[name] = root / name
    sets = make_biased_multilabel(n_train=32, n_test_free=8, pair_test=2, size=32, seed=0)
    save_arrays(sets["train"], str(root / "train.npz"))
    save_arrays(sets["test"], str(root / "test.npz"))
    main(load_config(None, [*COMMON, "data.source=arrays", f"data.train={root / 'train.npz'}",
                            f"data.test={root / 'test.npz'}", "model.name=causal_resnet8", "model.embed_dim=16",
                            "model.num_heads=2", "model.num_confounders=4", "model.confounder_tokens=4",
                            "model.dropout=0", f"out_dir={root / 'causal_resnet8'}"]))
    out["causal_resnet8"] = root / "causal_resnet8"
    return out


def _inputs(run, batch=5, size=32):
    g = torch.Generator().manual_seed(7)
    n = 2 if run.task == "double" and not hasattr(run.model, "which") else 1
    return tuple(torch.randn(batch, 3, size, size, generator=g) for _ in range(n))


def _close(got, want):
    got = torch.as_tensor(got)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))


def _export(run_dir, fmt, out, capsys):
    assert cli(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "checked with" in text and "usage:" in text
    return json.loads(Path(str(out) + ".json").read_text())


@pytest.mark.parametrize("name", ["resnet18", "objonly_resnet18"])
def test_torchvision_state_dict_loads_into_torchvision(runs, name, tmp_path, capsys):
    import torchvision

    facts = _export(runs[name], "torchvision", tmp_path / "m.pth", capsys)
    net = torchvision.models.resnet18(num_classes=facts["num_classes"]).eval()
    net.load_state_dict(torch.load(tmp_path / "m.pth", weights_only=True))  # strict: every key, no extras
    run = load_run(runs[name], device="cpu")
    xs = _inputs(run)
    with torch.no_grad():
        want = run.model.net(*xs) if name.startswith("objonly") else run.model(*xs)
        _close(net(*xs), want)
    assert facts["classes"] is None or len(facts["classes"]) == facts["num_classes"]
    assert facts["mean"] == [0.5, 0.5, 0.5] and facts["image_size"] == 32


@pytest.mark.parametrize("name", ["resnet18", "double_resnet8", "causal_resnet8"])
def test_safetensors_read_back(runs, name, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from cit_fast.models import build_model

    _export(runs[name], "safetensors", tmp_path / "m.safetensors", capsys)
    run = load_run(runs[name], device="cpu")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["model"]) == name
    fresh = build_model(run.cfg.model, run.train_set.num_classes).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    xs = _inputs(run)
    with torch.no_grad():
        _close(fresh(*xs), run.model(*xs))


@pytest.mark.parametrize("name", ["resnet18", "double_resnet8", "causal_resnet8", "objonly_resnet18"])
def test_torchscript_read_back_at_another_batch_size(runs, name, tmp_path, capsys):
    import warnings

    facts = _export(runs[name], "torchscript", tmp_path / "m.pt", capsys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
    run = load_run(runs[name], device="cpu")
    xs = _inputs(run, batch=5)  # traced with 2 samples
    assert len(xs) == len(facts["inputs"])
    with torch.no_grad():
        want = run.model.net(*xs) if name.startswith("objonly") else run.model(*xs)
        _close(loaded(*xs), want)


@pytest.mark.parametrize("name", ["resnet8", "double_resnet8", "causal_resnet8"])
def test_onnx_read_back_by_onnxruntime(runs, name, tmp_path, capsys):
    import onnxruntime as ort

    facts = _export(runs[name], "onnx", tmp_path / "m.onnx", capsys)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == facts["inputs"] == (["content", "context"] if name.startswith("double") else ["image"])
    run = load_run(runs[name], device="cpu")
    for batch in (1, 5):  # a dynamic batch
        xs = _inputs(run, batch=batch)
        with torch.no_grad():
            _close(sess.run(None, {n: x.numpy() for n, x in zip(names, xs)})[0], run.model(*xs))


@pytest.mark.parametrize("name, why", [("double_resnet8", "takes two inputs"), ("resnet8", "not one of torchvision's"),
                                       ("causal_resnet8", "multi-label model")])
def test_a_format_that_cannot_hold_the_model_is_refused_in_one_line(runs, name, why, tmp_path, capsys):
    assert cli(["export", str(runs[name]), "--format", "torchvision", "--out", str(tmp_path / "m.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err and "use --format safetensors, onnx or torchscript" in err
    assert not any(tmp_path.iterdir())


def test_user_mistakes(runs, tmp_path, capsys):
    assert cli(["export", str(tmp_path / "nothing"), "--format", "onnx"]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli(["export", str(runs["resnet8"]), "--format", "onnx", "--out", str(tmp_path / "m.pth")]) == 2
    assert "--format onnx writes a .onnx file" in capsys.readouterr().err
    # a directory (made if missing): the default name inside it
    assert cli(["export", str(runs["resnet8"]), "--format", "safetensors", "--out", str(tmp_path / "new") + "/"]) == 0
    assert [p.name for p in sorted((tmp_path / "new").iterdir())] == ["resnet8_e0001.safetensors",
                                                                     "resnet8_e0001.safetensors.json"]
