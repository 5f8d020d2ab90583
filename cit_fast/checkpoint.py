"""Checkpoint files: atomic writes, safe reads, and DeepSpeed checkpoint directories.

What is read here:

- a cit_fast checkpoint ``ckpt_eEEEE_sSSSSSS.pt``: ``{"model": state dict, "epoch", "step_in_epoch",
  "config", ...}`` (epoch = epochs completed, step_in_epoch = batches done in the current epoch);
- a DeepSpeed checkpoint directory ``ds_eEEEE_sSSSSSS/`` (ZeRO 0-3, complete once it holds the
  ``COMPLETE`` marker): its weights consolidated to fp32 by DeepSpeed's own ``zero_to_fp32``, its
  client state (config, epoch, ...) from the model-states file;
- a weight file for initialisation: a bare state dict (torchvision's ``resnet18-*.pth``), or one
  under ``"state_dict"`` / ``"model"``.

Writes are atomic: a hidden temporary file beside the final name, fsynced, then renamed, so a file
under a final name is always complete; ``list_checkpoints`` never considers the ``.*.tmp`` files.
A write that fails (disk full, quota, I/O error) removes its temporary file and stops the run with
one line naming the file and the last complete checkpoint, which ``resume=auto`` then continues from.
No checkpoint with non-finite weights is written (the training loop checks before it writes), and
``refuse_nonfinite`` turns away one that an older version wrote, so ``resume=auto`` skips it.

What is written is tensors and plain Python values only (the RNG states included), so
``torch.load(path)`` with PyTorch's safe default ``weights_only=True`` opens a checkpoint.

Reads never run code from the file: every ``torch.load`` is ``weights_only=True`` (tensors and plain
Python data), with an allow-list of the few harmless types cit_fast and DeepSpeed checkpoints hold
(numpy arrays of the RNG states, DeepSpeed's loss-scaler and enum records). A file that pickles
anything else (a function, a class with custom reconstruction) is refused with one line.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from .errors import CheckpointError
from .utils import atomic_path

_NAME = re.compile(r"^ckpt_e(\d+)_s(\d+)\.pt$")
_DS_TAG = re.compile(r"^ds_e(\d+)_s(\d+)$")
COMPLETE = "COMPLETE"  # marker file of a complete DeepSpeed checkpoint directory


def checkpoint_name(epoch: int, step_in_epoch: int) -> str:
    """epoch = epochs completed; step_in_epoch = batches done in the current epoch."""
    return f"ckpt_e{epoch:04d}_s{step_in_epoch:06d}.pt"


def deepspeed_tag(epoch: int, step_in_epoch: int) -> str:
    return f"ds_e{epoch:04d}_s{step_in_epoch:06d}"


# ---------------------------------------------------------------------------------------------
# safe reading


def _numpy_globals() -> List[Any]:
    """What pickled numpy arrays need (the numpy RNG state is an array): data, not code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    out = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    out += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32", "uint8", "int32", "bool")]
    return out


@contextlib.contextmanager
def _importing_deepspeed() -> Iterator[None]:
    """DeepSpeed logs to stdout from its import on (and warns when it has to guess the accelerator):
    keep a command's own output (``--json``) clean."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _deepspeed_globals() -> List[Any]:
    """Records DeepSpeed puts in its optimizer-state files (an enum, a dataclass, the loss scaler)."""
    out: List[Any] = []
    if "deepspeed" not in sys.modules:
        with contextlib.suppress(Exception), _importing_deepspeed():
            import deepspeed  # noqa: F401
    with contextlib.suppress(Exception):
        from deepspeed.runtime.zero.config import ZeroStageEnum

        out.append(ZeroStageEnum)
    with contextlib.suppress(Exception):
        from deepspeed.utils.tensor_fragment import fragment_address

        out.append(fragment_address)
    with contextlib.suppress(Exception):
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler

        out += [LossScaler, DynamicLossScaler]
    return out


def _unsafe_globals(path: Path) -> List[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def safe_load(path: Path, map_location: Any = "cpu", what: str = "checkpoint", deepspeed: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with cit_fast's allow-list; one clear error otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path}: not found")
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: not a file")
    allowed = _numpy_globals() + (_deepspeed_globals() if deepspeed else [])
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        if unsafe or "Unsupported global" in str(e):
            found = [l.split("GLOBAL", 1)[1].strip().split(" ")[0] for l in str(e).splitlines() if "GLOBAL" in l]
            shown = ", ".join(unsafe[:4] or found[:4]) or "an unsupported object"
            raise CheckpointError(f"{what} {path}: refused: it pickles Python objects that loading would run "
                                  f"({shown}); cit_fast reads only tensors and plain data (weights_only=True)") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{what} {path}: cannot be read, not a PyTorch file of tensors "
                              f"({type(e).__name__}: {first[:160]})") from None
    except Exception as e:  # truncated, not a torch file, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{what} {path}: cannot be read, truncated or not a PyTorch file "
                              f"({type(e).__name__}: {first[:160]})") from None


@contextlib.contextmanager
def weights_only_torch_load(deepspeed: bool = True) -> Iterator[None]:
    """Inside: every ``torch.load`` (DeepSpeed's own checkpoint readers included, which ask for
    ``weights_only=False``) reads with ``weights_only=True`` and the allow-list."""
    original = torch.load
    allowed = _numpy_globals() + (_deepspeed_globals() if deepspeed else [])

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(allowed):
            return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"DeepSpeed checkpoint: refused: a file pickles Python objects that loading would "
                              f"run ({str(e).strip().splitlines()[0][:160]}); cit_fast reads only tensors and "
                              "plain data") from None
    finally:
        torch.load = original


# ---------------------------------------------------------------------------------------------
# cit_fast checkpoint files


def write_failed(path: Path, error: BaseException, last: Optional[Path]) -> CheckpointError:
    """The one line a failed checkpoint write stops the run with (disk full, quota, I/O error)."""
    code = errno.errorcode.get(getattr(error, "errno", None) or 0, "")
    text = str(error).strip()
    why = getattr(error, "strerror", None) or (text.splitlines()[0][:160] if text else type(error).__name__)
    why = f"{code}: {why}" if code else why
    return CheckpointError(f"checkpoint {path}: could not be written ({why}); nothing half-written was kept; "
                           f"the last complete checkpoint is {last or 'none'}: make room and rerun with "
                           f"resume=auto to continue from it")


def write_torch(obj: Any, path: Path) -> None:
    """``torch.save`` atomically, through a Python file object: a full disk or an I/O error surfaces
    as the OSError it is (torch's own writer, given a path, reports it as an unrelated RuntimeError)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(state: Dict[str, Any], directory: Path, epoch: int, step_in_epoch: int,
                    keep: int = 3) -> Path:
    """Write ``ckpt_e*_s*.pt`` atomically, then drop all but the newest ``keep``. A write that fails
    leaves the directory as it was and raises ``write_failed``'s CheckpointError."""
    directory = Path(directory)
    path = directory / checkpoint_name(epoch, step_in_epoch)
    try:
        write_torch(state, path)
    except OSError as e:
        raise write_failed(path, e, find_latest(directory)) from None
    # keep the newest `keep` checkpoints (only once the new one is complete)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def _sorted_matches(directory: Path, pattern: re.Pattern, want_dir: bool) -> List[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = pattern.match(p.name)
        if not m or p.is_dir() != want_dir:
            continue
        if want_dir and not (p / COMPLETE).is_file():
            continue
        found.append((tuple(int(g) for g in m.groups()), p))
    return [p for _, p in sorted(found)]


def list_checkpoints(directory: Path) -> List[Path]:
    """Complete cit_fast checkpoint files, oldest first."""
    return _sorted_matches(directory, _NAME, want_dir=False)


def list_deepspeed_checkpoints(directory: Path) -> List[Path]:
    """Complete DeepSpeed checkpoint directories (with the COMPLETE marker), oldest first."""
    return _sorted_matches(directory, _DS_TAG, want_dir=True)


def _position(p: Path) -> tuple:
    m = _NAME.match(p.name) or _DS_TAG.match(p.name)
    return tuple(int(g) for g in m.groups())


def find_latest(directory: Path) -> Optional[Path]:
    """The newest complete checkpoint of either kind (a .pt file or a DeepSpeed directory)."""
    found = sorted(list_checkpoints(directory) + list_deepspeed_checkpoints(directory), key=_position)
    return found[-1] if found else None


def is_deepspeed_checkpoint(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (any(path.glob("*model_states.pt")) or (path / COMPLETE).exists())


def load_checkpoint(path: Path, map_location: Any = "cpu") -> Dict[str, Any]:
    """A cit_fast checkpoint file, or a DeepSpeed checkpoint directory read as one (fp32 weights)."""
    path = Path(path)
    if is_deepspeed_checkpoint(path):
        return load_deepspeed_checkpoint(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: a directory, but not a DeepSpeed checkpoint (no "
                              f"*model_states.pt inside); expected a ckpt_e*_s*.pt file or a ds_e*_s* directory")
    state = safe_load(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: holds a {type(state).__name__}, not a cit_fast checkpoint")
    missing = [k for k in ("model", "epoch", "step_in_epoch") if k not in state]
    if missing:
        hint = ("; it looks like a bare state dict (weights only): use it as model.init=... to initialise a model"
                if _looks_like_state_dict(state) else "")
        raise CheckpointError(f"checkpoint {path}: missing {', '.join(repr(k) for k in missing)}; not a cit_fast "
                              f"checkpoint{hint}")
    return state


def nonfinite_values(tensors: Iterable[Tuple[str, torch.Tensor]]) -> Tuple[int, List[str]]:
    """(how many values are nan or inf, the names of the tensors holding them) over floating tensors
    (parameters and buffers; integer ones, such as batch norm's counters, cannot be non-finite).
    Host sync: once, over all the tensors."""
    names, counts = [], []
    for name, t in tensors:
        if torch.is_tensor(t) and t.is_floating_point() and t.numel():
            names.append(name)
            counts.append((~torch.isfinite(t.detach())).sum())
    if not counts:
        return 0, []
    per = torch.stack([c.to(counts[0].device) for c in counts]).tolist()  # host sync: one per check
    return int(sum(per)), [n for n, c in zip(names, per) if c]


def refuse_nonfinite(state_dict: Dict[str, Any], path: Path) -> None:
    """A checkpoint whose weights hold nan or inf (written by a run that diverged, before cit_fast
    refused to write one) is not a state to continue from: one clear error."""
    count, names = nonfinite_values(state_dict.items())
    if count:
        shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise CheckpointError(f"checkpoint {path}: its weights hold {count:,} non-finite values (nan/inf, in "
                              f"{shown}); it was written by a run that diverged")


def _looks_like_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) \
        and all(torch.is_tensor(v) for v in obj.values())


def read_weights(path: Path, what: str = "init file") -> Dict[str, torch.Tensor]:
    """The state dict of a weight file: a cit_fast checkpoint, a DeepSpeed directory, a bare state dict
    (torchvision's format) or one under 'state_dict' / 'model' / 'module'; ``module.`` prefixes dropped."""
    path = Path(path)
    if is_deepspeed_checkpoint(path):
        return load_deepspeed_checkpoint(path)["model"]
    if not path.exists():
        raise CheckpointError(f"{what} {path}: not found (weights are only read from local files; see the "
                              f"README for copying torchvision's weights onto this machine)")
    obj = safe_load(path, what=what)
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not _looks_like_state_dict(obj):
            obj = obj[key]
            break
    if not _looks_like_state_dict(obj):
        raise CheckpointError(f"{what} {path}: no state dict inside (expected a dict of tensors, or one under "
                              f"'model' / 'state_dict')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------
# DeepSpeed checkpoint directories


def _model_states_file(path: Path) -> Path:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"DeepSpeed checkpoint {path}: no mp_rank_00_model_states.pt inside")


def deepspeed_client_state(path: Path) -> Dict[str, Any]:
    """The model-states file of a DeepSpeed checkpoint: client state (config, epoch, ...), ds_config, module."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"DeepSpeed checkpoint {path}: incomplete (no {COMPLETE} marker; the run stopped "
                              f"while writing it)")
    return safe_load(_model_states_file(path), what="DeepSpeed checkpoint file", deepspeed=True)


def load_deepspeed_checkpoint(path: Path) -> Dict[str, Any]:
    """A DeepSpeed checkpoint directory as a cit_fast checkpoint dict: fp32 ``model`` weights
    (consolidated by DeepSpeed's zero_to_fp32 for ZeRO 1-3) beside the client state."""
    path = Path(path)
    state = deepspeed_client_state(path)
    stage = int((state.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0))
    module = state.get("module")
    if stage == 0 and isinstance(module, dict):
        weights = {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    else:
        try:
            with _importing_deepspeed():
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        except ImportError:
            raise CheckpointError(f"DeepSpeed checkpoint {path}: ZeRO-{stage} weights are sharded; reading them "
                                  f"needs deepspeed installed (pip install deepspeed)") from None
        with weights_only_torch_load(), contextlib.redirect_stdout(sys.stderr):
            weights = dict(get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name))
        if isinstance(module, dict):  # buffers DeepSpeed keeps beside the sharded parameters
            for k, v in module.items():
                weights.setdefault(k, v)
    out = {k: v for k, v in state.items() if k not in ("module", "optimizer", "lr_scheduler")}
    out["model"] = weights
    for key in ("epoch", "step_in_epoch"):
        if key not in out:
            raise CheckpointError(f"DeepSpeed checkpoint {path}: no {key!r} in its client state; not written by "
                                  f"cit_fast")
    return out


def describe(paths: Sequence[Path]) -> str:
    return ", ".join(str(p) for p in paths) or "none"
