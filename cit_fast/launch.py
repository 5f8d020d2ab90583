"""``python -m cit_fast.launch [torchrun options] -m cit_fast.cli train ...``: torchrun, quieter.

The launchers (launchers/torchrun.sh, slurm.sbatch) run torchrun through this module so that a job
ends the way a single process does: a user error or Ctrl-C prints the worker's one line (rank 0's)
and the job exits with the worker's code (2 = bad input, 130 = interrupted), instead of torchrun's
traceback and failure report on top; so does a rendezvous that a finished job closed (a JOB_ID used
again). Real failures (a crash, a signal other than SIGINT/SIGTERM,
any other exit code) still get torchrun's full report. Everything else is torchrun itself
(``torch.distributed.run``), options included.
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional

# exit codes of a worker that already said why in one line (cit_fast.cli): bad input, Ctrl-C
QUIET_EXIT_CODES = (2, 130)
_SHUTDOWN_NOISE = ("death signal, shutting down workers", "closing signal",
                   *(f"failed (exitcode: {c})" for c in QUIET_EXIT_CODES))


class _DropShutdownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in _SHUTDOWN_NOISE)


def main(argv: Optional[List[str]] = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousClosedError
    from torch.distributed.run import parse_args, run

    for name in ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api"):
        logging.getLogger(name).addFilter(_DropShutdownNoise())
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SignalException as e:  # Ctrl-C / SIGTERM reached torchrun: the workers have said so
        return 128 + int(e.sigval)
    except RendezvousClosedError:  # the job of this rendezvous id has finished (etcd keeps it closed)
        print(f"cit_fast.launch: the rendezvous of JOB_ID={args.rdzv_id} is closed: a job with that id has "
              f"finished; give this job a new JOB_ID (launchers: JOB_ID=...)", file=sys.stderr)
        return 2
    except ChildFailedError as e:
        _, first = e.get_first_failure()  # the root cause; the other ranks were stopped after it
        if first.exitcode in QUIET_EXIT_CODES:
            return first.exitcode
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
