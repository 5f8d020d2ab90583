"""``torchrun ... tests/train/nonfinite_probe.py STEP RANK OUT [train args]``: ``cit-fast train`` with a
loss made non-finite on one rank.

The test's injection, installed by wrapping the loop's ``compute_loss`` (the training loop knows
nothing of it): on rank RANK, the STEP-th micro-step's loss is multiplied by nan (STEP 0: never).
Every rank writes the losses it computed to OUT/losses_rank{rank}.json when it ends, and exits with
the CLI's exit code.
"""
import json
import os
import sys
from pathlib import Path

import cit_fast.train.loop as loop
from cit_fast.cli import main


def install(step: int, rank: int, out: Path) -> list:
    seen: list = []
    original = loop.compute_loss

    def compute_loss(model, batch, criterion=None):
        loss = original(model, batch, criterion)
        seen.append(loss.detach())
        if len(seen) == step and int(os.environ.get("RANK", "0")) == rank:
            return loss * float("nan")
        return loss

    loop.compute_loss = compute_loss
    return seen


if __name__ == "__main__":
    step, rank, out, *args = sys.argv[1:]
    seen = install(int(step), int(rank), Path(out))
    code = main(["train", *args])
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"losses_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps([float(x) for x in seen]))
    sys.exit(code)
