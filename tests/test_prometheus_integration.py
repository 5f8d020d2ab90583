"""A real Prometheus server scrapes a 2-process training job; every PromQL query of the shipped
Grafana dashboard must return data for both ranks. Loopback only; bounded in time."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.distributed]

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "cit_fast.json"
PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None and not os.environ.get("CI"):
    pytest.skip("the prometheus server (Debian package prometheus) is not installed; .ci/run installs it",
                allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_queries():
    d = json.loads(DASHBOARD.read_text())
    out = []
    for p in d["panels"]:
        for t in p["targets"]:
            # Grafana's variables, as Grafana would expand them for "All jobs" and a 1 s scrape
            out.append((p["title"], t["expr"].replace("$job", ".*").replace("$__rate_interval", "15s")))
    return out


def query(port: int, expr: str):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def has_data_for_both_ranks(result) -> bool:
    values = [float(s["value"][1]) for s in result]
    if not result or any(v != v for v in values):  # empty or NaN
        return False
    ranks = {s["metric"].get("rank") for s in result}
    if ranks == {None}:  # an aggregate over ranks (e.g. total throughput): data is all it can show
        return True
    return {"0", "1"} <= ranks


def test_dashboard_queries_return_data_for_both_ranks(tmp_path):
    assert PROMETHEUS, "prometheus server not installed"
    sd_dir = tmp_path / "sd"
    sd_dir.mkdir()
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: cit_fast
    honor_labels: true
    file_sd_configs: [{{files: ["{sd_dir}/*.json"], refresh_interval: 1s}}]
""")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train = None
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/-/ready", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "prometheus did not become ready"
                time.sleep(0.5)
        torchrun = str(Path(sys.executable).parent / "torchrun")
        train = subprocess.Popen(
            [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "cit_fast.cli", "train",
             "model.name=resnet8", "data.synthetic_train_per_class=40", "data.synthetic_test_per_class=8",
             "data.batch_size=8", "optim.epochs=40", "progress=false", "threads=1", "log_interval=2",
             "metrics.enabled=true", "metrics.base_port=0", f"metrics.sd_dir={sd_dir}", "metrics.linger_seconds=30",
             f"out_dir={tmp_path / 'run'}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pending = {f"{title}: {expr}": expr for title, expr in dashboard_queries()}
        assert len(pending) >= 13
        deadline = time.time() + 150
        while pending and time.time() < deadline:
            assert train.poll() is None, f"training ended before Prometheus saw data for: {sorted(pending)}"
            for name, expr in list(pending.items()):
                if has_data_for_both_ranks(query(prom_port, expr)):
                    del pending[name]
            time.sleep(1)
        assert not pending, f"no data for both ranks after 150 s: {sorted(pending)}"
        up = query(prom_port, 'up{job="cit_fast"}')
        assert len(up) == 2 and all(s["value"][1] == "1" for s in up)
    finally:
        if train is not None and train.poll() is None:
            train.terminate()
            try:
                train.wait(timeout=20)
            except subprocess.TimeoutExpired:
                train.kill()
        prom.terminate()
        prom.wait(timeout=20)
