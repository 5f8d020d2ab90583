import pytest

from cit_fast.config import ConfigError, TrainConfig, from_dict, load_config, to_dict


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.05\n  milestones: [3, 6]\nintervention:\n  plan: stratify_c\n")
    cfg = load_config(str(f), ["optim.lr=0.01", "data.hflip=false", "data.mean=[0.1,0.2,0.3]", "seed=7"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.optim.lr == 0.01 and cfg.optim.milestones == [3, 6] and cfg.intervention.plan == "stratify_c"
    assert cfg.data.hflip is False and cfg.data.mean == (0.1, 0.2, 0.3) and cfg.seed == 7


def test_round_trip():
    cfg = load_config(None, ["model.name=resnet8", "data.batch_size=16"])
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr'; valid keys under optim: "),
    (["bogus=1"], "unknown config key 'bogus'"),
    (["optim.lr=fast"], "optim.lr: expected a number, got 'fast'"),
    (["optim.epochs=2.5"], "optim.epochs: expected an integer"),
    (["data.hflip=maybe"], "data.hflip: expected a boolean"),
    (["intervention.plan=stratify_x"], "intervention.plan: expected one of none, stratify_c, stratify_b, random"),
    (["data.mean=[1,2]"], "data.mean: expected 3 values"),
    (["optim.lr=-1"], "optim.lr: expected a positive value"),
    (["optim.milestones=[5,2]"], "optim.milestones: expected increasing positive epochs"),
    (["data.source=arrays"], "data.train: a path is required"),
    (["noequals"], "expected key=value"),
    (["model.observed_confounders=true", "model.confounder_source=label"],
     "model.observed_confounders: needs model.confounder_source=kmeans"),
])
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert message in str(e.value)


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    f = tmp_path / "bad.yaml"
    f.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(f))
