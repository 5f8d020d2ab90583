"""What happens around each training step besides the step itself: small callbacks of the loop.

The loop calls, for every callback in order, ``on_epoch_start`` before an epoch's first step,
``on_step_end`` after every step (a true return value stops the run there: the loop checkpoints
mid-epoch and ends), and ``on_epoch_end`` after the epoch's last step. The loss is a device tensor;
``StepInfo.loss_value()`` syncs with the device at most once per step, and only at a log point.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class StepInfo:
    epoch: int
    step: int  # batches done in this epoch before this one
    total_steps: int  # micro-steps done in the run, this one included
    samples: int  # this rank's samples in the step
    loss: torch.Tensor  # detached, on the device
    step_s: float  # wall time of the step, waiting for the batch included
    wait_s: float  # of which waiting for the batch
    log_point: bool  # the run's first step, every log_interval-th and the epoch's last: gauges and bars update
    last_in_epoch: bool
    _value: Optional[float] = field(default=None, repr=False)

    def loss_value(self) -> float:
        if self._value is None:
            self._value = float(self.loss)  # host sync: only at log points
        return self._value


class Callback:
    """Every hook is optional."""

    def on_epoch_start(self, trainer, epoch: int, start_step: int) -> None:
        pass

    def on_step_end(self, trainer, info: StepInfo) -> Optional[bool]:
        return None

    def on_epoch_end(self, trainer, epoch: int) -> None:
        pass


class ProgressBar(Callback):
    """A tqdm bar per epoch on rank 0, with the loss at log points."""

    def __init__(self) -> None:
        self.bar = None

    def on_epoch_start(self, trainer, epoch, start_step):
        from tqdm import tqdm

        self.bar = tqdm(total=trainer.steps_per_epoch, initial=start_step, leave=False, mininterval=1.0,
                        dynamic_ncols=True, desc=f"epoch {epoch + 1}/{trainer.cfg.optim.epochs}")

    def on_step_end(self, trainer, info):
        self.bar.update(1)
        if info.log_point:
            self.bar.set_postfix(loss=f"{info.loss_value():.3f}")

    def on_epoch_end(self, trainer, epoch):
        self.bar.close()


class PrometheusSteps(Callback):
    """Step counters and timings every step; loss, learning rate, throughput and memory at log points."""

    def on_step_end(self, trainer, info):
        m = trainer.metrics
        m.step(info.samples, info.step_s, info.wait_s)
        m.bad_samples_total(getattr(trainer.train_pipe, "bad_samples", 0))
        if info.log_point:
            m.log_interval(info.loss_value(), trainer.engine.lr)


class StepCheckpoints(Callback):
    """A checkpoint every ``checkpoint_every_steps`` steps inside an epoch (at optimizer-step boundaries)."""

    def __init__(self, every: int, grad_accum: int) -> None:
        self.every, self.grad_accum = every, grad_accum

    def on_step_end(self, trainer, info):
        done = info.step + 1
        if not info.last_in_epoch and done % self.grad_accum == 0 and done % self.every == 0:
            trainer.save(info.epoch, done)


class StopAfter(Callback):
    """End the run after ``steps`` micro-steps in all (checkpointed there): tests of exact resume."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, trainer, info):
        return info.total_steps >= self.steps
