"""A run's config.yaml records what ran (``resolved``: the class count, the input size, the source)
beside what was asked (model.num_classes 0, data.image_size 0: "from the data"), its checkpoints
carry the same record, and the saved config.yaml reruns the run (the record is not a setting)."""
import json

import pytest
import yaml

from cit_fast import checkpoint as ckpt
from cit_fast.cli import main as cli
from cit_fast.config import RESOLVED, from_dict, load_config, without_resolved
from cit_fast.eval.run import load_run

SMALL = ["model.name=resnet8", "data.synthetic_train_per_class=24", "data.synthetic_test_per_class=8",
         "data.batch_size=32", "optim.epochs=1", "max_steps_per_epoch=3", "progress=false", "threads=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli(["train", *SMALL, f"out_dir={out}"]) == 0
    return out


def test_config_yaml_records_what_ran_beside_what_was_asked(run):
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 0 and saved["data"]["image_size"] == 0  # what was asked
    r = saved[RESOLVED]
    assert (r["num_classes"], r["image_size"], r["source"]) == (10, 32, "synthetic")  # what ran
    assert (r["task"], r["multilabel"], r["train_samples"], r["test_samples"]) == ("single", False, 240, 80)
    assert (r["world_size"], r["global_batch_size"], r["steps_per_epoch"]) == (1, 32, 3)
    assert list(saved)[-1] == RESOLVED  # after the settings, apart from them
    state = ckpt.load_checkpoint(ckpt.find_latest(run / "checkpoints"))
    assert state["config"][RESOLVED] == r
    assert json.loads((run / "results.json").read_text())[RESOLVED] == r


def test_a_size_that_was_asked_is_recorded_as_asked(tmp_path):
    assert cli(["train", *SMALL, "max_steps_per_epoch=1", "data.image_size=28", f"out_dir={tmp_path}"]) == 0
    r = yaml.safe_load((tmp_path / "config.yaml").read_text())[RESOLVED]
    assert (r["num_classes"], r["image_size"]) == (10, 28)


def test_the_saved_config_yaml_reruns_the_run(run, tmp_path):
    again = tmp_path / "again"
    assert cli(["train", "--config", str(run / "config.yaml"), f"out_dir={again}"]) == 0
    first = json.loads((run / "results.json").read_text())
    second = json.loads((again / "results.json").read_text())
    assert second["history"][0]["step_losses"] == first["history"][0]["step_losses"]  # bitwise on the CPU
    a, b = (yaml.safe_load((d / "config.yaml").read_text()) for d in (run, again))
    assert {**a, "out_dir": ""} == {**b, "out_dir": ""}  # the same settings and the same record
    # the record is not a setting: reading a saved tree ignores it, whatever it says
    tree = {**a, RESOLVED: {"num_classes": 99}}
    assert from_dict(tree) == from_dict(without_resolved(a))
    # and the one door back from a checkpoint reads it as before
    back = load_run(ckpt.find_latest(run / "checkpoints"), datasets=False)
    assert back.model.fc.out_features == 10 and back.cfg.model.num_classes == 0
    assert load_config(str(run / "config.yaml")).model.num_classes == 0
