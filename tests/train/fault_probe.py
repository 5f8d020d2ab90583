"""``torchrun ... tests/train/fault_probe.py STEP RANK [train args]``: cit-fast train with a crash.

The test's fault injection, installed as a step callback (the training loop knows nothing of it):
rank RANK exits hard after its STEP-th micro-step, on torchrun's first attempt only (torchrun counts
restarts in TORCHELASTIC_RESTART_COUNT), as a killed process would.
"""
import os
import sys

from cit_fast.config import load_config
from cit_fast.train.callbacks import Callback
from cit_fast.train.loop import main


class CrashAt(Callback):
    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_step_end(self, trainer, info):
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.env.rank == self.rank and info.total_steps == self.step:
            os._exit(17)  # no cleanup, no checkpoint: a crash


if __name__ == "__main__":
    step, rank, *args = sys.argv[1:]
    main(load_config(None, args), callbacks=[CrashAt(int(step), int(rank))])
