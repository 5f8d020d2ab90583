"""The data rules (data/spec.py) run once, in config.finalize, before any data loads: a wrong
combination is one line from `cit-fast train` with nothing run; a spec built by hand meets the same
rules; the one rule that needs the data's size (a batch larger than the shard) stops the run with
one line too."""
import pytest

import cit_fast.data.build as build
import cit_fast.train.loop as loop
from cit_fast.cli import main as cli
from cit_fast.config import ConfigError, finalize, is_final, load_config
from cit_fast.data.pipelines.contract import PipelineSpec
from cit_fast.data.spec import check_config, train_steps

SMALL = ["model.name=resnet8", "data.synthetic_train_per_class=24", "data.synthetic_test_per_class=8",
         "data.batch_size=32", "optim.epochs=1", "progress=false", "threads=1"]


@pytest.mark.parametrize("overrides, message", [
    (["data.pipeline=dali", "data.on_bad_sample=skip"], "data.on_bad_sample=skip works with data.pipeline=torch"),
    (["intervention.plan=stratify_b", "data.decode_reuse=true"],
     "data.decode_reuse works with plans none, stratify_c, random, not 'stratify_b'"),
    (["intervention.plan=stratify_c", "data.decode_reuse=true", "data.batch_size=1"],
     "data.decode_reuse needs data.batch_size >= 2"),
    (["data.train_crop=random_resized"], "data.train_crop=random_resized needs data.image_size"),
    (["data.crop_ratio=[0.5,2]"], "data.crop_ratio applies to data.train_crop=random_resized"),
    (["data.strata=coarse", "data.source=folder", "data.train={folder}", "data.test={folder}"],
     "data.strata=coarse: CIFAR-100's superclasses need data.source=cifar, got folder"),
])
def test_a_wrong_combination_is_one_line_before_any_data_loads(tmp_path, folder_dataset, monkeypatch, capsys,
                                                               overrides, message):
    def no_loading(*a, **k):
        raise AssertionError("data was read before the data rules ran")

    monkeypatch.setattr(build, "build_datasets", no_loading)
    monkeypatch.setattr(loop, "build_datasets", no_loading)
    monkeypatch.setattr(build, "load_split", no_loading)
    out = tmp_path / "run"
    args = [o.format(folder=folder_dataset) for o in overrides]
    assert cli(["train", *SMALL, *args, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cit-fast train: error: ") and message in err and "\n" not in err, err
    assert not out.exists()  # nothing ran: not even config.yaml
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, args)


def test_finalize_runs_once_and_again_after_a_change(tmp_path):
    cfg = load_config(None, [f"out_dir={tmp_path}"])
    assert is_final(cfg) and finalize(cfg) is cfg  # the Trainer's finalize: nothing done twice
    cfg.out_dir = "relative"
    again = finalize(cfg, base=tmp_path)  # changed since: paths resolved and the rules met again
    assert again is not cfg and again.out_dir == str(tmp_path / "relative") and is_final(again)
    again.data.train_crop = "random_resized"
    with pytest.raises(ConfigError, match="needs data.image_size"):
        finalize(again)
    check_config(load_config(None, ["data.train_crop=random_resized", "data.image_size=32"]))  # a right one


@pytest.mark.parametrize("kw, message", [
    (dict(decode_reuse=True, plan="stratify_b"), "data.decode_reuse works with plans"),
    (dict(decode_reuse=True, plan="random", batch_size=1), "data.decode_reuse needs data.batch_size >= 2"),
    (dict(train_crop="random_resized"), "needs data.image_size"),
])
def test_a_spec_built_by_hand_meets_the_same_rules(kw, message):
    with pytest.raises(ConfigError, match=message):
        PipelineSpec(**{"batch_size": 4, **kw})
    PipelineSpec(**{"batch_size": 4, **kw, "train": False, "image_size": 32})  # evaluation: no pairing, a size


def test_from_config_is_the_specs_one_door():
    cfg = load_config(None, ["data.image_size=24", "data.crop_padding=2", "intervention.plan=stratify_c",
                             "data.on_bad_sample=skip", "seed=5"])
    tr = PipelineSpec.from_config(cfg, train=True, rank=1, world_size=2)
    ev = PipelineSpec.from_config(cfg, train=False, batch_size=7)
    assert (tr.plan, tr.image_size, tr.crop_padding, tr.seed, tr.rank, tr.world_size, tr.on_bad_sample) == \
        ("stratify_c", 24, 2, 5, 1, 2, "skip")
    assert (ev.plan, ev.batch_size, ev.train, ev.on_bad_sample) == ("none", 7, False, "error")
    assert PipelineSpec.from_config(cfg, train=True, plan="random").plan == "random"


@pytest.mark.parametrize("batches, max_steps, accum, steps", [(7, 0, 1, 7), (7, 4, 1, 4), (7, 0, 2, 6), (7, 3, 2, 2)])
def test_train_steps(batches, max_steps, accum, steps):
    assert train_steps(batches, max_steps, accum, 32, 240) == steps


def test_a_batch_larger_than_the_shard_is_one_line(tmp_path, capsys):
    assert cli(["train", *SMALL, "data.batch_size=300", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("cit-fast train: error: data.batch_size=300 x dist.grad_accum=1 is larger than the training "
                   "shard (240 samples per rank): no full optimizer step to train on"), err
