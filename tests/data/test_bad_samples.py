"""An image that cannot be read mid-epoch (it passed the start-up header check): one error naming
the file and the sample index, or, with data.on_bad_sample=skip, the samples it touches left out
and every other sample's pairing unchanged."""
import numpy as np
import pytest
from PIL import Image

from cit_fast.config import load_config
from cit_fast.data.pipelines.contract import PipelineSpec
from cit_fast.data.pipelines.torch_pipeline import TorchPipeline
from cit_fast.data.sources import load_folder
from cit_fast.errors import ConfigError, DataError
from cit_fast.metrics import TrainingMetrics


def _folder(tmp_path, per_class=6):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "d" / c / f"{k}.jpg")
    samples = load_folder(str(tmp_path / "d"))
    bad = int(np.flatnonzero([p.endswith("b/3.jpg") for p in samples.images])[0])
    # the header check at start-up passed; the file goes bad afterwards (a JPEG with no image data)
    (tmp_path / "d" / "b" / "3.jpg").write_bytes(b"\xff\xd8" + b"\x00" * 100 + b"\xff\xd9")
    return samples, bad


def _spec(**kw):
    return PipelineSpec(batch_size=4, plan="stratify_c", image_size=16, **kw)


def test_default_stops_with_one_line_naming_file_and_sample(tmp_path):
    samples, bad = _folder(tmp_path)
    with pytest.raises(DataError) as e:
        list(TorchPipeline(samples, _spec()).raw_batches())
    msg = str(e.value)
    assert "\n" not in msg and "b/3.jpg" in msg and f"(sample {bad})" in msg and "on_bad_sample=skip" in msg


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_leaves_out_the_samples_it_touches_and_keeps_the_other_pairs(tmp_path, capsys, workers):
    samples, bad = _folder(tmp_path)
    clean = TorchPipeline(samples, _spec())
    keys = clean.batch_keys()
    pipe = TorchPipeline(samples, _spec(on_bad_sample="skip", num_workers=workers))
    got = list(pipe.raw_batches())
    assert len(got) == len(keys)  # every step still happens (on every rank alike)
    touched = 0
    for (index, partner), b in zip(keys, got):
        keep = (index != bad) & (partner != bad)
        touched += int((~keep).sum())
        assert b["index"].tolist() == index[keep].tolist()
        assert b["partner"].tolist() == partner[keep].tolist()  # the plan's pairs, unchanged
    assert touched > 0 and pipe.bad_samples == touched
    err = capsys.readouterr().err
    assert err.count("b/3.jpg") == 1 and f"sample {bad}" in err  # logged once per file


def test_skip_is_counted_for_prometheus(tmp_path):
    from cit_fast.config import MetricsConfig

    m = TrainingMetrics(MetricsConfig(enabled=True, base_port=0, sd_dir=str(tmp_path)), 0, 0, "resnet8")
    try:
        m.bad_samples_total(3)
        m.bad_samples_total(3)
        m.bad_samples_total(5)
        value = m.registry.get_sample_value("cit_fast_bad_samples_skipped_total",
                                            {"job": m.cfg.job, "rank": "0", "model": "resnet8"})
        assert value == 5
    finally:
        m.close()


def test_skip_is_a_config_choice_and_needs_the_torch_pipeline(tmp_path):
    cfg = load_config(None, ["data.on_bad_sample=skip"])
    assert cfg.data.on_bad_sample == "skip"
    with pytest.raises(ConfigError, match="on_bad_sample"):
        load_config(None, ["data.on_bad_sample=ignore"])
    pytest.importorskip("nvidia.dali")
    from cit_fast.data.pipelines.dali_pipeline import DaliPipeline

    samples, _ = _folder(tmp_path)
    with pytest.raises(ConfigError, match="on_bad_sample=skip works with data.pipeline=torch"):
        DaliPipeline(samples, _spec(on_bad_sample="skip"))
