"""Process-tree helpers shared by the multi-process tests (nodes, the lost-node test, the SLURM cluster)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List


def descendants(pid: int) -> List[int]:
    """pid and every process under it, read from /proc (an elastic agent starts its workers in
    sessions of their own, so a process group does not reach them)."""
    children: Dict[int, List[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out
