"""A run that diverges stops, and says so: non-finite losses and weights, and a loss that explodes.

The loop hands ``DivergenceWatch`` every micro-step's loss (a device scalar, kept as is) and, at each
optimizer step, whether the loss scaler skipped it (fp16: GradScaler or DeepSpeed's scaler). Nothing
is read back per step. At each log point and before every checkpoint write, ``check`` reads the steps
since the last check at once (one host sync, and one small all-reduce when there are several ranks)
and, when a step had a non-finite loss that the scaler did not skip, raises ``Diverged`` on every
rank together; rank 0's message names the step and the last finite checkpoint. A step the scaler
skipped (fp16 overflow) left the weights as they were: it is not a failure, unless the scaler
skips ``MAX_SKIPPED_STEPS`` in a row (no scale makes the loss finite: the run no longer trains). Before a checkpoint is
written, the weights themselves are checked too (``Engine.nonfinite_weights``), so no checkpoint
with a non-finite value is ever written.

A loss that *explodes* gets one warning line (per run), naming optim.lr and data.batch_size: a
logged loss (the mean of the finite losses since the last log point) above ``EXPLODE_FACTOR`` times
the reference, which is the first logged loss but at least the loss of a chance prediction (log C
for C classes; log 2 for multi-label), so a run resumed late, at a small loss, is not flagged by noise.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

import torch
import torch.distributed as dist

from ..utils import print0

EXIT_CODE = 3  # `cit-fast train` exits with it when the run stopped on a non-finite loss or weights
EXPLODE_FACTOR = 10.0
# skipped in a row, a run has stopped training: GradScaler halves its scale at each skip, so a real
# overflow recovers within ~20 steps, while a loss that is inf at every scale is skipped for ever
MAX_SKIPPED_STEPS = 100

SkipFlag = Union[bool, torch.Tensor]  # a Python bool, or a device bool scalar (GradScaler: not read back)


class Diverged(Exception):
    """The run stopped because its loss or weights are not finite; the message is one line."""

    exit_code = EXIT_CODE


@dataclass
class _Step:
    epoch: int  # 0-based
    step: int  # 0-based batch index in the epoch
    loss: torch.Tensor  # detached scalar on the device
    skipped: Optional[SkipFlag]  # None: its optimizer step has not happened yet


def chance_loss(num_classes: int, multilabel: bool) -> float:
    """The loss of an uninformed prediction: log C (cross-entropy), log 2 (one binary label)."""
    return math.log(2.0) if multilabel or num_classes < 2 else math.log(num_classes)


def skipped_mask(flags: List[SkipFlag], device: torch.device) -> torch.Tensor:
    """(n,) bool on ``device`` from the scaler's per-step flags (host bools or device scalars): no sync."""
    if not flags:
        return torch.zeros(0, dtype=torch.bool, device=device)
    return torch.stack([f.to(device) if torch.is_tensor(f) else torch.full((), bool(f), device=device)
                        for f in flags])


class DivergenceWatch:
    def __init__(self, env, steps_per_epoch: int, scaled: bool, floor: float, advice: str) -> None:
        self.env, self.steps_per_epoch = env, steps_per_epoch
        self.scaled = scaled  # a loss scaler may skip optimizer steps (fp16)
        self.floor, self.advice = floor, advice
        self.pending: List[_Step] = []
        self.reference: Optional[float] = None  # the first logged loss
        self.warned = False
        self.skipped_run = 0  # micro-steps the loss scaler skipped in a row, up to the last check

    def record(self, epoch: int, step: int, loss: torch.Tensor) -> None:
        """One micro-step's loss (no sync). Without a loss scaler, no step is ever skipped."""
        self.pending.append(_Step(epoch, step, loss.detach(), None if self.scaled else False))

    def optimizer_step(self, skipped: Optional[SkipFlag]) -> None:
        """The optimizer step of the micro-steps recorded since the last one: skipped by the scaler?
        (``None``: no optimizer step at this micro-step, inside an accumulation.)"""
        if skipped is None:
            return
        for s in reversed(self.pending):
            if s.skipped is not None:
                break
            s.skipped = skipped

    def check(self, last_checkpoint: Callable[[], str], explosion: bool = True) -> None:
        """Collective (every rank calls it at the same step): read the decided steps since the last
        check; raise ``Diverged`` on every rank if one had a non-finite loss that was not skipped."""
        ready = [s for s in self.pending if s.skipped is not None]
        if not ready and not self.env.distributed:
            return
        self.pending = [s for s in self.pending if s.skipped is None]
        device = self.env.device
        n = len(ready)
        if n:
            losses = torch.stack([s.loss.float() for s in ready])  # (n,)
            skipped = skipped_mask([s.skipped for s in ready], losses.device)  # (n,) bool
            finite = torch.isfinite(losses)
            bad = ~finite & ~skipped
            # the first bad step and the lowest rank at it as one number, min-reduced over ranks
            idx = torch.where(bad, torch.arange(n, device=losses.device), torch.full_like(bad, n, dtype=torch.long))
            code = idx.min().double() * self.env.world_size + self.env.rank
            good = finite & ~skipped
            mean = torch.where(good, losses, torch.zeros_like(losses)).sum() / good.sum().clamp(min=1)
            # the skipped steps at the end (n: all of them); the scaler's flags are the same on every rank
            applied = torch.where(~skipped, torch.arange(n, device=losses.device), torch.full_like(idx, -1))
            trailing = (n - 1 - applied.max()).double()
            stats = torch.stack([code, -mean.double(), trailing]).to(device)
        else:  # nothing decided on this rank (cannot happen when all ranks run the same steps)
            stats = torch.tensor([float(n * self.env.world_size), 0.0, 0.0], dtype=torch.float64, device=device)
        sentinel = n * self.env.world_size
        if self.env.distributed and dist.is_initialized():
            dist.all_reduce(stats, op=dist.ReduceOp.MIN)  # collective at a log point / checkpoint: [first bad, -max mean, .]
        code, neg_mean, trailing = stats.tolist()  # host sync: once per log interval (and before each checkpoint)
        if code < sentinel:
            idx, rank = divmod(int(code), self.env.world_size)
            s = ready[idx]
            value = float(s.loss)  # the failure path: syncs freely
            raise Diverged(
                f"the loss is not finite ({value}) at epoch {s.epoch + 1}, step {s.step + 1}/{self.steps_per_epoch}"
                + (f" (rank {rank})" if self.env.distributed else "")
                + f"; no checkpoint was written after it; the last finite checkpoint is {last_checkpoint()}; "
                + self.advice)
        if not n:
            return
        self.skipped_run = self.skipped_run + n if trailing == n else int(trailing)
        if self.skipped_run >= MAX_SKIPPED_STEPS:  # the scaler cannot find a scale: nothing trains any more
            s = ready[-1]
            raise Diverged(
                f"the loss scaler skipped the last {self.skipped_run} steps (to epoch {s.epoch + 1}, step {s.step + 1}/"
                f"{self.steps_per_epoch}): the loss or its gradients are not finite at any loss scale, the weights "
                f"no longer change; the last finite checkpoint is {last_checkpoint()}; " + self.advice)
        if explosion and trailing < n:  # (a check whose steps were all skipped has no loss to compare)
            self._explosion(-neg_mean, ready[-1])

    def _explosion(self, logged: float, at: _Step) -> None:
        if self.reference is None:
            self.reference = logged
            return
        limit = EXPLODE_FACTOR * max(self.reference, self.floor)
        if not self.warned and logged > limit:
            self.warned = True
            print0(f"warning: the training loss exploded: {logged:.4g} at epoch {at.epoch + 1}, step {at.step + 1} "
                   f"against {self.reference:.4g} at the first logged step (over {EXPLODE_FACTOR:g}x); "
                   f"{self.advice}", file=sys.stderr)

    def weights(self, nonfinite: tuple, epoch: int, step_in_epoch: int, last_checkpoint: Callable[[], str]) -> None:
        """Before a checkpoint of (epoch, step_in_epoch): stop if the weights hold non-finite values
        (``nonfinite`` = (count, names) from ``Engine.nonfinite_weights``, the same on every rank)."""
        count, names = nonfinite
        if count:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more tensors" if len(names) > 3 else "")
            at = (f"at epoch {epoch + 1}, step {step_in_epoch}/{self.steps_per_epoch}" if step_in_epoch
                  else f"after epoch {epoch}")
            raise Diverged(
                f"the weights are not finite {at} ({count:,} non-finite values, in {shown}); the checkpoint was not written; the last finite "
                f"checkpoint is {last_checkpoint()}; {self.advice}")
