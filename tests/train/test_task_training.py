"""The training loop and `cit-fast eval` with double-branch and multi-label models (tiny data, seconds)."""
import json

import pytest
import torch

from cit_fast.cli import main as cli
from cit_fast.data.synthetic.benchmark import save_arrays
from cit_fast.data.synthetic.multilabel import make_biased_multilabel
from cit_fast import checkpoint as ckpt
from cit_fast.config import ConfigError, load_config
from cit_fast.train.loop import main

COMMON = ["optim.epochs=2", "optim.milestones=[1]", "progress=false", "threads=1", "data.batch_size=16"]


@pytest.fixture(scope="module")
def multilabel_arrays(tmp_path_factory):
    d = tmp_path_factory.mktemp("ml")
    sets = make_biased_multilabel(n_train=96, n_test_free=24, pair_test=6, size=32, seed=0)
    save_arrays(sets["train"], str(d / "train.npz"))
    save_arrays(sets["test"], str(d / "test.npz"))
    return d


def ml_cfg(data, out, *extra):
    return load_config(None, ["data.source=arrays", f"data.train={data / 'train.npz'}",
                              f"data.test={data / 'test.npz'}", "model.name=causal_resnet8", "model.embed_dim=16",
                              "model.num_heads=2", "model.num_confounders=4", "model.confounder_tokens=4", "model.dropout=0",
                              "optim.lr=0.02", f"out_dir={out}", *COMMON, *extra])


@pytest.mark.slow
def test_double_branch_trains_and_evaluates(tmp_path):
    out = tmp_path / "run"
    rc = cli(["train", "model.name=double_resnet8", "data.synthetic_train_per_class=8", "data.synthetic_test_per_class=3",
              "intervention.plan=stratify_c", "intervention.epochwise=true", "model.freeze_low=true",
              f"out_dir={out}", *COMMON])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "double" and res["test_top1"] == res["history"][-1]["test_top1"]
    ck = ckpt.find_latest(out / "checkpoints")
    assert cli(["eval", "--checkpoint", str(ck), "--bg-challenge", "--table2", "--out", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["test"]["top1"] == pytest.approx(res["test_top1"])
    assert set(ev["table2"]) == {"obj_and_bg", "only_obj", "only_bg"}
    bg = ev["bg_challenge"]
    assert bg["bg_gap"] == pytest.approx(bg["mixed_same"] - bg["mixed_rand"])
    assert bg["original"] == pytest.approx(res["test_top1"])


@pytest.mark.slow
def test_causal_multilabel_trains_with_confounders_and_resumes_exactly(tmp_path, multilabel_arrays):
    full = main(ml_cfg(multilabel_arrays, tmp_path / "full", "optim.loss=asl"))
    assert full["task"] == "multilabel" and full["test_mAP"] == full["history"][-1]["test_mAP"]
    state = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "full" / "checkpoints"))
    assert bool(state["model"]["confounders.fitted"]) and state["model"]["confounders.z"].shape == (4, 16)
    assert torch.isclose(state["model"]["confounders.prior"].sum(), torch.tensor(1.0))
    steps = [x for e in full["history"] for x in e["step_losses"]]
    k = 3  # stop inside epoch 1 (6 steps per epoch), then resume from the checkpoint
    part = main(ml_cfg(multilabel_arrays, tmp_path / "part", "optim.loss=asl"), stop_after_steps=k)
    assert part["stopped_at_step"] == k
    resumed = main(ml_cfg(multilabel_arrays, tmp_path / "part", "optim.loss=asl", "resume=auto"))
    after = [x for e in resumed["history"] for x in e["step_losses"]]
    assert after[-(len(steps) - k):] == steps[k:]  # bitwise: the confounders came back with the checkpoint
    assert resumed["test_mAP"] == full["test_mAP"]


def test_eval_reports_biased_pairs(tmp_path, multilabel_arrays, capsys):
    main(ml_cfg(multilabel_arrays, tmp_path, "model.name=decoder_resnet8", "optim.epochs=1"))
    ck = str(ckpt.find_latest(tmp_path / "checkpoints"))
    assert cli(["eval", "--checkpoint", ck, "--pairs", "circle:ring,square:frame", "--out", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "Exclusive" in text and "circle" in text
    ev = json.loads((tmp_path / "e.json").read_text())
    bp = ev["test"]["biased_pairs"]
    assert [p["b"] for p in bp["pairs"]] == ["circle", "square"] and bp["pairs"][0]["n_exclusive"] >= 6
    assert len(ev["test"]["per_class_ap"]) == 10 and "top3_recall" in ev["test"]
    assert cli(["eval", "--checkpoint", ck, "--pairs", "circle:unicorn"]) == 2
    assert "'unicorn' is not among the classes" in capsys.readouterr().err
    assert cli(["eval", "--checkpoint", ck, "--bg-challenge"]) == 2


@pytest.mark.parametrize("override, message", [
    ("model.merge=max", "model.merge: expected one of sum, linear, proposed"),
    ("model.confounder_source=pca", "model.confounder_source"),
    ("model.embed_dim=30", "model.embed_dim: 30 must be divisible"),
    ("optim.loss=focal", "optim.loss"),
    ("model.task=video", "model.task"),
])
def test_bad_model_options(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_multilabel_loss_on_single_label_data_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="needs multi-hot labels"):
        main(load_config(None, ["model.name=resnet8", "optim.loss=bce", "data.synthetic_train_per_class=4",
                                "data.synthetic_test_per_class=2", f"out_dir={tmp_path}", *COMMON]))


def test_adamw_option():
    from cit_fast.train.loop import build_optimizer

    cfg = load_config(None, ["optim.optimizer=adamw", "optim.lr=0.001"])
    opt = build_optimizer(cfg, torch.nn.Linear(3, 2))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 0.001
    with pytest.raises(ConfigError, match="optim.optimizer"):
        load_config(None, ["optim.optimizer=lion"])


def test_pretrained_trunk_and_observed_confounders_train_and_evaluate(tmp_path, multilabel_arrays):
    torch.manual_seed(3)
    from cit_fast.models import create_model

    single = create_model("resnet8", num_classes=10)
    init = ckpt.save_checkpoint({"model": single.state_dict(), "epoch": 1, "step_in_epoch": 0}, tmp_path / "pre", 1, 0)
    res = main(ml_cfg(multilabel_arrays, tmp_path / "run", f"model.init_single={init}",
                      "model.observed_confounders=true", "optim.epochs=1"))
    assert res["task"] == "multilabel" and res["test_mAP"] == res["history"][-1]["test_mAP"]
    state = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "run" / "checkpoints"))
    assert "ctx_proj.weight" in state["model"] and bool(state["model"]["confounders.fitted"])
    init.unlink()  # evaluation takes the weights from the run's checkpoint, not from the init file
    ck = str(ckpt.find_latest(tmp_path / "run" / "checkpoints"))
    assert cli(["eval", "--checkpoint", ck, "--out", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["test"]["mAP"] == pytest.approx(res["test_mAP"])
    from cit_fast.eval import load_run

    model = load_run(ck).model  # cit-fast explain rebuilds it without the init file too
    assert torch.equal(model.backbone.conv1.weight, state["model"]["backbone.conv1.weight"])
    with pytest.raises(ValueError, match="not found"):  # training from it again needs the file
        main(ml_cfg(multilabel_arrays, tmp_path / "again", f"model.init_single={init}"))
