"""The epoch's batch plan shared with DALI's parallel external-source workers.

DALI's parallel ``external_source`` runs the source callable in worker processes (started once, when
the pipeline is built), so the files of several batches are read at the same time, never in the
main thread. The workers need each epoch's batches (which samples a batch decodes, in which role),
which the main process computes after they started: it writes them here, a file in /dev/shm mapped
by every process, before it asks DALI for the epoch's first batch. A worker waits until the feed
belongs to the DALI epoch it is asked about (``BatchInfo.epoch_idx``), so a batch prefetched across
an epoch boundary never reads the last epoch's plan.
"""
from __future__ import annotations

import os
import tempfile
import time
import weakref
from types import SimpleNamespace
from typing import Sequence

import numpy as np

WAIT_S = 600.0  # a worker waiting longer for the main process's plan reports it


def _unlink(path: str, owner: int) -> None:
    if os.getpid() == owner:  # forked workers inherit the finaliser: only the creator removes the file
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class SharedFeed:
    """Header (generation, epoch, batches, ids), batch offsets, sample ids and roles, in one mapped file."""

    def __init__(self, max_batches: int, max_ids: int):
        self.max_batches, self.max_ids = int(max_batches), int(max_ids)
        where = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, self.path = tempfile.mkstemp(prefix="cit-fast-dali-feed-", dir=where)
        try:
            os.ftruncate(fd, self._nbytes())
        finally:
            os.close(fd)
        self._finalizer = weakref.finalize(self, _unlink, self.path, os.getpid())
        self._mm = None
        self._pid = None

    def _nbytes(self) -> int:
        return 8 * (4 + self.max_batches + 1 + self.max_ids) + self.max_ids

    def __getstate__(self):  # pickled into spawned workers: the path, not the mapping
        return {"path": self.path, "max_batches": self.max_batches, "max_ids": self.max_ids}

    def __setstate__(self, state):
        self.__dict__.update(state, _mm=None, _pid=None)

    def _views(self):
        if self._mm is None or self._pid != os.getpid():
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=(self._nbytes(),))
            self._pid = os.getpid()
        mm, nb, ni = self._mm, self.max_batches, self.max_ids
        head = mm[:32].view(np.int64)
        offs = mm[32:32 + 8 * (nb + 1)].view(np.int64)
        ids = mm[32 + 8 * (nb + 1):32 + 8 * (nb + 1 + ni)].view(np.int64)
        roles = mm[32 + 8 * (nb + 1 + ni):].view(np.int8)
        return head, offs, ids, roles

    # -- the main process ---------------------------------------------------------------------------------
    def write(self, feeds: Sequence, epoch: int, generation: int) -> None:
        """The epoch's batches (objects with ``ids`` and ``roles`` or None), for DALI epoch ``generation``."""
        head, offs, ids, roles = self._views()
        if len(feeds) > self.max_batches or sum(len(f.ids) for f in feeds) > self.max_ids:
            raise RuntimeError(f"DALI feed: {len(feeds)} batches exceed the capacity ({self.max_batches})")
        head[0] = -1  # invalid while written
        offs[0] = 0
        for b, f in enumerate(feeds):
            n = len(f.ids)
            offs[b + 1] = offs[b] + n
            ids[offs[b]:offs[b + 1]] = f.ids
            roles[offs[b]:offs[b + 1]] = 0 if f.roles is None else f.roles
        head[1], head[2], head[3] = epoch, len(feeds), offs[len(feeds)]
        head[0] = generation

    # -- a worker -------------------------------------------------------------------------------------------
    def wait(self, generation: int) -> int:
        """Block until the feed of DALI epoch ``generation`` is written; our epoch number."""
        head = self._views()[0]
        deadline = time.monotonic() + WAIT_S
        while head[0] != generation:
            if time.monotonic() > deadline:
                raise RuntimeError(f"DALI worker: no batch plan for DALI epoch {generation} after {WAIT_S:.0f} s "
                                   f"(the feed holds {int(head[0])})")
            time.sleep(0.0005)
        return int(head[1])

    def __len__(self) -> int:
        return int(self._views()[0][2])

    def __getitem__(self, b: int) -> SimpleNamespace:
        _, offs, ids, roles = self._views()
        lo, hi = int(offs[b]), int(offs[b + 1])
        return SimpleNamespace(ids=np.array(ids[lo:hi]), roles=np.array(roles[lo:hi], np.int64), windows=None)
