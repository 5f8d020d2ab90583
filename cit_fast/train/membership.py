"""Which nodes a run's workers start on, and what changed since they last started.

Every start of the workers (the first, an elastic restart, a node that left or came back, the user
running the command again with ``resume``) gathers each rank's node: its name (``CIT_FAST_NODE``,
which the launchers set from ``NODE_NAME`` or the host name) and its agent (host name and the parent
process id: torchrun's agent, new when the node's command was started again). Rank 0 compares them
with the previous start's, kept in ``out_dir/nodes.json`` (written temp-then-rename), and names the
change in one line (``event_line``): the nodes that left, came back, joined or were restarted, and the
world size now. The loop prints it with the checkpoint it resumed from, and the metrics publish the
world size, the node count and the number of restarts.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch.distributed as dist

from ..utils import atomic_write_json

FILE = "nodes.json"


def this_node() -> Dict[str, str]:
    """This rank's node and the agent (process) that started it."""
    host = socket.gethostname()
    return {"node": os.environ.get("CIT_FAST_NODE") or host, "agent": f"{host}:{os.getppid()}"}


@dataclass
class Membership:
    """The nodes of this start (``nodes``: name -> agent, in rank order), the start before it
    (``previous``, from nodes.json; None for a run's first start) and how many starts came before."""
    nodes: Dict[str, str]
    world_size: int
    previous: Optional[dict] = None
    restarts: int = 0
    seen: List[str] = field(default_factory=list)

    @classmethod
    def gather(cls, out_dir: Path, world_size: int, resuming: bool, rank: int = 0) -> "Membership":
        """Collective (every rank calls it). ``resuming``: the run continues an earlier one in
        ``out_dir`` (resume set); otherwise it starts a history of its own."""
        mine = this_node()
        ranks = [mine]
        previous = [_read(Path(out_dir) / FILE) if resuming and rank == 0 else None]
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            ranks = [None] * world_size
            dist.all_gather_object(ranks, mine)
            dist.broadcast_object_list(previous, src=0)  # rank 0's reading, so every rank reports alike
        nodes: Dict[str, str] = {}
        for r in ranks:
            nodes.setdefault(r["node"], r["agent"])
        previous = previous[0]
        m = cls(nodes, world_size, previous)
        if previous is not None:
            m.restarts = int(previous.get("restarts", 0)) + 1
            m.seen = [n for n in previous.get("seen", []) if isinstance(n, str)]
        m.seen += [n for n in nodes if n not in m.seen]
        return m

    def save(self, out_dir: Path) -> None:
        """Rank 0: this start, for the next one to compare with."""
        atomic_write_json(Path(out_dir) / FILE, {"restarts": self.restarts, "world_size": self.world_size,
                                                 "nodes": self.nodes, "seen": self.seen})

    def event_line(self) -> Optional[str]:
        """``restart N: node b left; world size 2 -> 1 (nodes: a)``; None for a run's first start."""
        prev = self.previous
        if prev is None:
            return None
        before: Dict[str, str] = prev.get("nodes") or {}
        seen_before = set(prev.get("seen") or before)
        left = [n for n in before if n not in self.nodes]
        back = [n for n in self.nodes if n not in before and n in seen_before]
        new = [n for n in self.nodes if n not in seen_before]
        again = [n for n in self.nodes if n in before and before[n] != self.nodes[n]]
        changes = [_nodes(left, "left"), _nodes(back, "came back"), _nodes(new, "joined"),
                   _nodes(again, "restarted")]
        what = "; ".join(c for c in changes if c) or "workers restarted on the same nodes"
        was = int(prev.get("world_size", self.world_size))
        size = f"world size {was} -> {self.world_size}" if was != self.world_size else f"world size {self.world_size}"
        return f"restart {self.restarts}: {what}; {size} (nodes: {', '.join(self.nodes)})"


def _nodes(names: List[str], what: str) -> str:
    if not names:
        return ""
    return f"node{'s' if len(names) > 1 else ''} {', '.join(names)} {what}"


def _read(path: Path) -> Optional[dict]:
    """The previous start's record; None when there is none (or it cannot be read: a record
    is only used for the log line and the metrics, never to decide anything)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("nodes"), dict) else None
