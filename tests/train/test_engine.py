import pytest

from cit_fast.config import load_config
from cit_fast.train.engine import deepspeed_config


def test_deepspeed_config_derives_batch_sizes_once():
    cfg = load_config(None, ["data.batch_size=16", "dist.engine=deepspeed", "dist.grad_accum=4",
                             "dist.zero_stage=2", "dist.precision=bf16", "dist.grad_clip=1.5"])
    conf = deepspeed_config(cfg, world_size=8)
    assert conf["train_batch_size"] == 16 * 8 * 4  # micro x world x accumulation
    assert conf["train_micro_batch_size_per_gpu"] == 16 and conf["gradient_accumulation_steps"] == 4
    assert conf["zero_optimization"] == {"stage": 2} and conf["bf16"]["enabled"] and not conf["fp16"]["enabled"]
    assert conf["gradient_clipping"] == 1.5


def test_user_json_overrides_and_bad_json(tmp_path):
    f = tmp_path / "ds.json"
    f.write_text('{"zero_optimization": {"stage": 3, "overlap_comm": true}, "steps_per_print": 5}')
    cfg = load_config(None, ["dist.engine=deepspeed", f"dist.deepspeed_config={f}"])
    conf = deepspeed_config(cfg, world_size=2)
    assert conf["zero_optimization"] == {"stage": 3, "overlap_comm": True} and conf["steps_per_print"] == 5
    assert conf["train_micro_batch_size_per_gpu"] == cfg.data.batch_size  # untouched keys stay derived
    f.write_text("{not json")
    with pytest.raises(ValueError, match="dist.deepspeed_config .*ds.json: not valid YAML/JSON"):
        deepspeed_config(cfg, 2)
    cfg2 = load_config(None, ["dist.engine=deepspeed", f"dist.deepspeed_config={tmp_path / 'missing.json'}"])
    with pytest.raises(ValueError, match="missing.json: not found"):
        deepspeed_config(cfg2, 2)


@pytest.mark.parametrize("override, message", [
    (["dist.zero_stage=2"], "ZeRO needs dist.engine=deepspeed"),
    (["dist.engine=horovod"], "dist.engine: expected one of ddp, deepspeed"),
    (["dist.precision=fp8"], "dist.precision: expected one of fp32, bf16, fp16"),
    (["dist.engine=deepspeed", "dist.zero_stage=4"], "dist.zero_stage: expected one of 0, 1, 2, 3, got 4"),
])
def test_bad_dist_options(override, message):
    from cit_fast.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, override)
