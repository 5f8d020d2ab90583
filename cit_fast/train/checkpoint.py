"""Atomic checkpoints and ``--resume auto``.

A checkpoint is written to a hidden temporary file beside its final name, fsynced, then renamed,
so a file under the final name is always complete; a crash mid-save leaves only a ``.*.tmp`` file,
which ``find_latest`` never considers.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..utils import atomic_path

_NAME = re.compile(r"^ckpt_e(\d+)_s(\d+)\.pt$")


def checkpoint_name(epoch: int, step_in_epoch: int) -> str:
    """epoch = epochs completed; step_in_epoch = batches done in the current epoch."""
    return f"ckpt_e{epoch:04d}_s{step_in_epoch:06d}.pt"


def save_checkpoint(state: Dict[str, Any], directory: Path, epoch: int, step_in_epoch: int,
                    keep: int = 3) -> Path:
    directory = Path(directory)
    path = directory / checkpoint_name(epoch, step_in_epoch)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    # keep the newest `keep` checkpoints
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path):
    """Complete checkpoints, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(tuple(int(g) for g in m.groups()), p) for p in directory.iterdir()
             if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def find_latest(directory: Path) -> Optional[Path]:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: Path, map_location: Any = "cpu") -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path}: cannot be read ({type(e).__name__}: {e})") from None
    for key in ("model", "epoch", "step_in_epoch"):
        if key not in state:
            raise ValueError(f"checkpoint {path}: missing {key!r}; not a cit_fast checkpoint")
    return state


def resolve_resume(resume: str, directory: Path) -> Optional[Path]:
    """'' -> None; 'auto' -> newest complete checkpoint in directory (or None); else the path."""
    if not resume:
        return None
    if resume == "auto":
        return find_latest(directory)
    p = Path(resume)
    if not p.is_file():
        raise FileNotFoundError(f"resume: checkpoint {resume} not found")
    return p
