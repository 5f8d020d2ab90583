import dataclasses

import pytest

from cit_fast.config import (PATH_KEYS, ConfigError, TrainConfig, _keys, config_yaml, from_dict, load_config,
                             to_dict)


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


def _config_classes(cls=TrainConfig):
    yield cls
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            yield from _config_classes(f.default_factory)


@pytest.mark.parametrize("cls", list(_config_classes()), ids=lambda c: c.__name__)
def test_every_field_has_help(cls):
    missing = [f.name for f in dataclasses.fields(cls) if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"{cls.__name__}: fields without help: {missing}"


CHOICE_KEYS = [key for key, f in _keys() if "choices" in f.metadata]


def test_choice_keys_are_declared():
    assert {"data.source", "intervention.plan", "model.task", "dist.zero_stage", "metrics.on_port_taken"} <= set(CHOICE_KEYS)


@pytest.mark.parametrize("key", CHOICE_KEYS)
def test_every_choice_key_is_checked(key):
    bad = 7 if key == "dist.zero_stage" else "not_a_choice"
    with pytest.raises(ConfigError, match=f"^{key}: expected one of "):
        load_config(None, [f"{key}={bad}"])


def test_config_yaml_documents_every_key_and_loads_back(tmp_path):
    text = config_yaml()
    for key, f in _keys():
        name = key.split(".")[-1]
        indent = "  " * key.count(".")  # a section's keys sit under it: model.intervention is not `intervention:`
        line = next(l for l in text.splitlines() if l.startswith(f"{indent}{name}:"))
        assert "  # " in line and f.metadata["help"].split(";")[0][:20] in line, line
        if "choices" in f.metadata:
            assert "one of " + " | ".join(map(str, f.metadata["choices"])) in line
    f = tmp_path / "c.yaml"
    f.write_text(text)
    assert load_config(str(f)) == load_config(None)
    assert "# synthetic source:" in text  # section comments come from the fields too


def test_path_keys_come_from_the_fields():
    assert set(PATH_KEYS) == {"data.train", "data.test", "data.test_labels", "data.root", "data.strata_file",
                              "model.init", "model.init_single", "model.confounder_net", "dist.deepspeed_config", "out_dir"}


def test_the_source_is_inferred_once_in_finalize(tmp_path):
    import numpy as np
    np.savez(tmp_path / "train.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(2, np.int64))
    cfg = load_config(None, [f"data.train={tmp_path / 'train.npz'}", f"data.test={tmp_path / 'train.npz'}"])
    assert cfg.data.source == "arrays"
    assert load_config(None).data.source == "synthetic"
    from cit_fast.data.build import build_datasets
    with pytest.raises(ValueError, match="finalized config"):
        build_datasets(from_dict({"data": {"source": "auto"}}).data)
