"""Per-rank Prometheus metrics for training.

Each rank serves its own registry on ``base_port + local_rank`` (0 = an ephemeral port), bound to
127.0.0.1 unless configured otherwise, and (optionally) writes a file-based service-discovery
target so Prometheus finds it (deploy/prometheus.yml). A taken port never stops training: the
exporter tries the next ports, or turns itself off with a warning, as configured.

Names follow Prometheus conventions: the ``cit_fast_`` prefix, base units (seconds, bytes, ratios
in 0..1), ``_total`` for counters. Labels: job, rank, model (low cardinality), plus ``kind`` /
``metric`` on a few gauges.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Optional

from .config import MetricsConfig
from .errors import UsageError
from .utils import atomic_write_text
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, start_http_server)

PREFIX = "cit_fast"
# Step durations from ~1 ms (tiny CPU models) to a minute (huge models on slow hosts).
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class TrainingMetrics:
    """The metrics of one rank; a no-op object when disabled (every method is cheap)."""

    def __init__(self, cfg: MetricsConfig, rank: int, local_rank: int, model: str, out_dir: str = "",
                 device_type: str = "cpu"):
        self.cfg, self.rank, self.local_rank = cfg, rank, local_rank
        self.device_type = device_type
        self.port: Optional[int] = None
        self._server = None
        self._sd_file: Optional[Path] = None
        if not cfg.enabled:
            return
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        labels = ("job", "rank", "model")
        self._lv = dict(job=cfg.job, rank=str(rank), model=model)
        p = PREFIX
        self.samples = Counter(f"{p}_samples", "Training samples processed", labels, registry=r)
        self.steps = Counter(f"{p}_steps", "Training steps (micro-batches) processed", labels, registry=r)
        self.step_duration = Histogram(f"{p}_step_duration_seconds", "Wall time of one training step, data wait included",
                                       labels, buckets=STEP_BUCKETS, registry=r)
        self.data_wait = Histogram(f"{p}_data_wait_seconds", "Time a step waited for its batch", labels,
                                   buckets=STEP_BUCKETS, registry=r)
        self.loss = Gauge(f"{p}_loss", "Training loss at the last log interval", labels, registry=r)
        self.lr = Gauge(f"{p}_learning_rate", "Current learning rate", labels, registry=r)
        self.epoch = Gauge(f"{p}_epoch", "Current epoch (1-based)", labels, registry=r)
        self.throughput = Gauge(f"{p}_throughput_samples_per_second", "Samples/s of this rank over the last log interval",
                                labels, registry=r)
        self.eval = Gauge(f"{p}_eval_score_ratio", "Last evaluation score in 0..1 (metric=top1|top5|map)",
                          labels + ("metric",), registry=r)
        self.ckpt = Histogram(f"{p}_checkpoint_duration_seconds", "Time to write a checkpoint", labels,
                              buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300), registry=r)
        self.memory = Gauge(f"{p}_memory_bytes", "Memory in use (kind=host_rss|gpu_allocated|gpu_reserved|gpu_peak)",
                            labels + ("kind",), registry=r)
        self.gpu_util = Gauge(f"{p}_gpu_utilization_ratio", "GPU utilisation in 0..1 (NVML)", labels, registry=r)
        self.bad_samples = Counter(f"{p}_bad_samples_skipped", "Training samples left out because their image or "
                                   "their context's cannot be read (data.on_bad_sample=skip)", labels, registry=r)
        self.world_size = Gauge(f"{p}_world_size", "Processes in the job since its workers last started", labels,
                                registry=r)
        self.nodes = Gauge(f"{p}_nodes", "Nodes in the job since its workers last started", labels, registry=r)
        self.restarts = Gauge(f"{p}_restarts", "Times the run's workers started again in its out_dir (a node "
                              "left, came back or was restarted, a worker failed, resume)", labels, registry=r)
        self._bad_total = 0
        for m in (self.samples, self.steps, self.step_duration, self.data_wait, self.loss, self.lr, self.epoch,
                  self.throughput, self.ckpt, self.gpu_util, self.bad_samples):
            m.labels(**self._lv)  # series exist from the start: dashboards show zeros, not "no data"
        self._nvml = None
        self._interval_t = time.perf_counter()
        self._interval_samples = 0
        self._start(out_dir)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled and self._server is not None

    # -- exporter -----------------------------------------------------------------------------------
    def _start(self, out_dir: str) -> None:
        cfg = self.cfg
        first = cfg.base_port + self.local_rank if cfg.base_port else 0
        attempts = 16 if (cfg.on_port_taken == "next" and first) else 1
        for k in range(attempts):
            port = first + k * max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if first else 0
            try:
                self._server, _ = start_http_server(port, addr=cfg.host, registry=self.registry)
                self.port = self._server.server_address[1]
                break
            except OSError as e:
                if cfg.on_port_taken == "error":
                    raise UsageError(f"metrics: cannot serve on {cfg.host}:{port} ({e.strerror or e}); set "
                                     f"metrics.base_port or metrics.on_port_taken=next|disable") from None
                warnings.warn(f"metrics: port {port} on {cfg.host} is taken ({e})"
                              + ("; trying the next one" if k + 1 < attempts else "; metrics disabled for this rank"))
        if self._server is None:
            return
        sd_dir = Path(cfg.sd_dir) if cfg.sd_dir else (Path(out_dir) / "prometheus" if out_dir else None)
        if sd_dir is not None:
            host = cfg.host if cfg.host not in ("0.0.0.0", "::") else os.uname().nodename
            self._sd_file = sd_dir / f"{cfg.job}_rank{self.rank}.json"
            atomic_write_text(self._sd_file, json.dumps(
                [{"targets": [f"{host}:{self.port}"], "labels": {"cit_fast_rank": str(self.rank)}}]) + "\n")

    def close(self) -> None:
        if self._server is None:
            return
        if self.cfg.linger_seconds > 0:
            time.sleep(self.cfg.linger_seconds)  # let Prometheus take a last scrape
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        if self._sd_file is not None:
            self._sd_file.unlink(missing_ok=True)  # the target is gone: stop Prometheus scraping it

    # -- recording (all cheap; no device syncs) ---------------------------------------------------------
    def step(self, samples: int, duration_s: float, data_wait_s: float) -> None:
        if not self.enabled:
            return
        lv = self._lv
        self.samples.labels(**lv).inc(samples)
        self.steps.labels(**lv).inc()
        self.step_duration.labels(**lv).observe(duration_s)
        self.data_wait.labels(**lv).observe(data_wait_s)
        self._interval_samples += samples

    def log_interval(self, loss: float, lr: float) -> None:
        """At the log interval (where the loop syncs with the device anyway)."""
        if not self.enabled:
            return
        lv = self._lv
        self.loss.labels(**lv).set(loss)
        self.lr.labels(**lv).set(lr)
        now = time.perf_counter()
        if now > self._interval_t:
            self.throughput.labels(**lv).set(self._interval_samples / (now - self._interval_t))
        self._interval_t, self._interval_samples = now, 0
        self._memory()

    def bad_samples_total(self, total: int) -> None:
        """The pipeline's running count of samples left out (data.on_bad_sample=skip)."""
        if self.enabled and total > self._bad_total:
            self.bad_samples.labels(**self._lv).inc(total - self._bad_total)
            self._bad_total = total

    def membership(self, world_size: int, nodes: int, restarts: int) -> None:
        """At every start of the workers (train/membership.py)."""
        if self.enabled:
            self.world_size.labels(**self._lv).set(world_size)
            self.nodes.labels(**self._lv).set(nodes)
            self.restarts.labels(**self._lv).set(restarts)

    def set_epoch(self, epoch: int) -> None:
        if self.enabled:
            self.epoch.labels(**self._lv).set(epoch)

    def evaluation(self, **scores_percent: float) -> None:
        if self.enabled:
            for name, value in scores_percent.items():
                self.eval.labels(**self._lv, metric=name).set(value / 100.0)

    def checkpoint(self, seconds: float) -> None:
        if self.enabled:
            self.ckpt.labels(**self._lv).observe(seconds)

    def _memory(self) -> None:
        lv = self._lv
        self.memory.labels(**lv, kind="host_rss").set(_rss_bytes())
        if self.device_type != "cuda":
            return
        import torch

        self.memory.labels(**lv, kind="gpu_allocated").set(torch.cuda.memory_allocated())
        self.memory.labels(**lv, kind="gpu_reserved").set(torch.cuda.memory_reserved())
        self.memory.labels(**lv, kind="gpu_peak").set(torch.cuda.max_memory_allocated())
        if self._nvml is False:
            return
        try:
            if self._nvml is None:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            import pynvml

            self.gpu_util.labels(**lv).set(pynvml.nvmlDeviceGetUtilizationRates(self._nvml).gpu / 100.0)
        except Exception:  # NVML is optional
            self._nvml = False


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
