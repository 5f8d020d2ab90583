"""Run under torchrun (or alone) by test_reshard.py: resume a DeepSpeed checkpoint, gather the state
it now holds (as a checkpoint would), save it to $PROBE_OUT (rank 0), then train on as configured."""
import os
import sys

import torch

from cit_fast.config import load_config
from cit_fast.train.loop import Trainer
from cit_fast.train.reshard import gather_consolidated


def main() -> None:
    t = Trainer(load_config(None, sys.argv[1:]))
    try:
        t.maybe_resume()
        state = gather_consolidated(t.engine)
        if t.env.rank == 0:
            torch.save(state, os.environ["PROBE_OUT"])
        t.cfg.resume = ""  # already resumed: fit() trains on from here
        t.fit()
    finally:
        t.env.shutdown()


if __name__ == "__main__":
    main()
