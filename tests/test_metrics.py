import json
import shutil
import socket
import subprocess
import urllib.request

import pytest

from cit_fast.metrics import TrainingMetrics
from cit_fast.config import MetricsConfig


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


@pytest.fixture
def metrics(tmp_path):
    m = TrainingMetrics(MetricsConfig(enabled=True, base_port=0), rank=1, local_rank=1, model="resnet8",
                        out_dir=str(tmp_path))
    yield m
    m.close()


def test_exports_conventional_names_with_labels(metrics, tmp_path):
    metrics.set_epoch(2)
    for _ in range(3):
        metrics.step(samples=32, duration_s=0.02, data_wait_s=0.005)
    metrics.log_interval(loss=1.25, lr=0.1)
    metrics.evaluation(top1=87.5, top5=99.0)
    metrics.checkpoint(0.3)
    text = scrape(metrics.port)
    lv = 'job="cit_fast",model="resnet8",rank="1"'
    assert f"cit_fast_samples_total{{{lv}}} 96.0" in text
    assert f"cit_fast_steps_total{{{lv}}} 3.0" in text
    assert f"cit_fast_loss{{{lv}}} 1.25" in text
    assert f"cit_fast_epoch{{{lv}}} 2.0" in text
    assert 'cit_fast_eval_score_ratio{job="cit_fast",metric="top1",model="resnet8",rank="1"} 0.875' in text
    assert f"cit_fast_step_duration_seconds_count{{{lv}}} 3.0" in text
    assert 'kind="host_rss"' in text
    sd = json.loads((tmp_path / "prometheus" / "cit_fast_rank1.json").read_text())
    assert sd[0]["targets"] == [f"127.0.0.1:{metrics.port}"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_check_metrics_passes(metrics):
    metrics.step(8, 0.01, 0.001)
    metrics.log_interval(0.5, 0.01)
    r = subprocess.run(["promtool", "check", "metrics"], input=scrape(metrics.port), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_taken_port_never_crashes_training(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        nxt = TrainingMetrics(MetricsConfig(enabled=True, base_port=taken), 0, 0, "m")
        assert nxt.enabled and nxt.port != taken
        nxt.close()
        with pytest.warns(UserWarning, match="taken"):
            off = TrainingMetrics(MetricsConfig(enabled=True, base_port=taken, on_port_taken="disable"), 0, 0, "m")
        assert not off.enabled
        off.step(1, 0.1, 0.1)  # a no-op, not an error
        with pytest.raises(ValueError, match="metrics: cannot serve"):
            TrainingMetrics(MetricsConfig(enabled=True, base_port=taken, on_port_taken="error"), 0, 0, "m")


def test_disabled_by_default_serves_nothing():
    m = TrainingMetrics(MetricsConfig(), 0, 0, "m")
    assert not m.enabled and m.port is None
    m.step(1, 0.1, 0.1)
    m.close()
