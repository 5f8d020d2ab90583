"""Imported by every Python of a test SLURM job (tests/test_slurm.py puts this directory on PYTHONPATH):
with CIT_TEST_PAUSE_AT_STEP=N and CIT_TEST_PAUSE_MARKER=FILE, a training worker (a process torchrun
started: LOCAL_RANK is set) stops after its N-th micro-step, whose step checkpoint is written by then,
writes FILE and sleeps, once: the test requeues the job while it sleeps, and the requeued run, which
finds FILE, trains through. The training loop knows nothing of it (a step callback added here)."""
import os

if os.environ.get("CIT_TEST_PAUSE_AT_STEP") and "LOCAL_RANK" in os.environ:
    import time
    from pathlib import Path

    from cit_fast.train import loop
    from cit_fast.train.callbacks import Callback

    class _PauseOnce(Callback):
        def __init__(self, step: int, marker: Path) -> None:
            self.step, self.marker = step, marker

        def on_step_end(self, trainer, info):
            if info.total_steps == self.step and not self.marker.exists():
                self.marker.write_text(f"{os.getpid()}\n")
                time.sleep(300)  # requeued (killed) long before this ends
                os._exit(3)  # never requeued: the test fails on the job's exit code

    _callbacks = loop.Trainer._callbacks

    def _with_pause(self, extra):
        marker = Path(os.environ["CIT_TEST_PAUSE_MARKER"])
        return _callbacks(self, extra) + [_PauseOnce(int(os.environ["CIT_TEST_PAUSE_AT_STEP"]), marker)]

    loop.Trainer._callbacks = _with_pause
