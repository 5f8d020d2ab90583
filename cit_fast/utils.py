"""Small shared helpers: atomic writes, rank-aware printing."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was, so a reader
    never sees a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 would make outputs private
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun / SLURM environment; (0, 1, 0) otherwise."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def is_main_process() -> bool:
    return dist_info()[0] == 0


def print0(*args: Any, **kw: Any) -> None:
    """print on rank 0 only."""
    if is_main_process():
        print(*args, **kw, flush=True)


def read_mapping_file(path: Path, what: str, error: type = UserError, empty_ok: bool = False) -> dict:
    """The mapping at the top of a YAML (or JSON) file; ``error`` names ``what path`` and what is wrong:
    not found, not valid YAML/JSON, not a mapping (or empty, unless ``empty_ok``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {path}: not found")
    try:
        tree = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise error(f"{what} {path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    if tree is None and empty_ok:
        return {}
    if not isinstance(tree, dict) or (not tree and not empty_ok):
        raise error(f"{what} {path}: expected a {'' if empty_ok else 'non-empty '}mapping at the top level")
    return tree


def append_section(path: Path, text: str) -> None:
    """Append a markdown section to a results file (bench/RESULTS.md), atomically; the file is read
    just before it is written, so sections of runs that finished meanwhile are kept."""
    path = Path(path)
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    atomic_write_text(path, old.rstrip("\n") + "\n" + text.rstrip("\n") + "\n")
    print(f"appended to {path}")
