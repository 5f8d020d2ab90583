"""``python tests/ctrl_c_probe.py READY [cit-fast args...]``: the ``cit-fast`` command line, whose
training run, once its first step checkpoint is complete, writes the file READY and then waits
for Ctrl-C at that step (the test's handshake: the signal arrives at a known point, never before
the run has a checkpoint and never after it has finished, however loaded the machine is).
"""
import sys
import time
from pathlib import Path

import cit_fast.train.loop as loop
from cit_fast.cli import main
from cit_fast.train.callbacks import Callback


class WaitForCtrlC(Callback):
    def __init__(self, ready: Path) -> None:
        self.ready = ready

    def on_step_end(self, trainer, info):
        if trainer.env.rank == 0 and list(trainer.ckpt_dir.glob("ckpt_*.pt")):
            self.ready.write_text(f"{info.total_steps}\n")
            while True:  # until SIGINT raises KeyboardInterrupt here
                time.sleep(0.05)


if __name__ == "__main__":
    ready, *args = sys.argv[1:]
    train = loop.main
    loop.main = lambda cfg, stop_after_steps=None, callbacks=(): train(
        cfg, stop_after_steps, [*callbacks, WaitForCtrlC(Path(ready))])
    sys.exit(main(args))
