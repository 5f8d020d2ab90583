"""Read data pickles without running code: an unpickler that admits only numpy array reconstruction.

``pickle.load`` calls whatever callable a file names (``os.system``, ``subprocess.Popen``, ...), so a
downloaded pickle is a program. The CIFAR python batches hold only dicts, lists, bytes/str, ints and
numpy arrays; this unpickler resolves exactly the globals those need (numpy's array and dtype
reconstruction) and refuses every other global with a DataError naming the file and the global,
before anything is called. Protocol-2 pickles written by Python 2 are read with ``encoding="bytes"``,
so their str keys arrive as bytes (``b"data"``, ``b"labels"``).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from .records import DataError

# (module, name) pairs a numpy array or dtype pickle refers to; numpy 2 moved numpy.core to numpy._core
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}  # dicts, lists, tuples, bytes, str and numbers are pickle opcodes: they need no global


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, where: str) -> None:
        super().__init__(f, encoding="bytes")
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            import numpy as np

            if name == "ndarray":
                return np.ndarray
            if name == "dtype":
                return np.dtype
            try:  # numpy >= 2 (numpy.core is a deprecated alias there); older numpy has numpy.core only
                from numpy._core import multiarray
            except ImportError:
                from numpy.core import multiarray
            return getattr(multiarray, name)
        raise DataError(f"{self._where}: refused to unpickle {module}.{name} (a pickle that names code to run; "
                        f"only numpy arrays, dicts, lists, bytes, str and numbers are read)")

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._where}: refused a persistent id in the pickle (not a data file)")


def safe_load(path: str | Path, kind: str = "pickle") -> Any:
    """The object pickled in ``path``, read with the restricted unpickler; a one-line DataError
    ("<kind> <path>: ...") if the file is missing, truncated, not a pickle or names anything else."""
    where = f"{kind} {path}"
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{where}: file not found")
    data = p.read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), where).load()
    except DataError:
        raise
    except EOFError:
        raise DataError(f"{where}: truncated ({len(data)} bytes; the pickle ends early); re-download it") from None
    except Exception as e:  # UnpicklingError, ValueError from numpy on a cut array, ...
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{where}: not a readable pickle ({type(e).__name__}{': ' + msg if msg else ''})") from None
