"""Read data pickles without running code: an unpickler that admits only numpy array reconstruction.

``pickle.load`` calls whatever callable a file names (``os.system``, ``subprocess.Popen``, ...), so a
downloaded pickle is a program. The CIFAR python batches hold only dicts, lists, bytes/str, ints and
numpy arrays; this unpickler resolves exactly the globals those need (numpy's array and dtype
reconstruction) and refuses every other global with a DataError naming the file and the global,
before anything is called. Protocol-2 pickles written by Python 2 are read with ``encoding="bytes"``,
so their str keys arrive as bytes (``b"data"``, ``b"labels"``).

Python 3 writes bytes at protocols 0-2 as a call, ``_codecs.encode(str, "latin1")`` (an empty bytes as
``__builtin__.bytes()``): a CIFAR-format batch re-pickled that way names those two globals. As PyTorch's
``weights_only`` loader does, they are admitted, narrower than there: ``encode`` only turns a str into
latin-1 bytes (any other codec, or a non-str argument, is refused: codecs such as zlib or base64 are
programs of their own), and ``bytes`` only makes ``b""``. Both are answered by stand-ins that check
their arguments and hold no state a pickle could rewrite.
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

_LATIN1 = ("latin1", "latin-1")  # Python 3 writes "latin1"
_REFUSED = "a pickle that names code to run; only numpy arrays, dicts, lists, bytes, str and numbers are read"


class _Latin1Bytes:
    """``_codecs.encode`` as a Python-3 protocol-2 pickle calls it: (str, "latin1") -> bytes, nothing else.
    ``__slots__ = ()``: a BUILD opcode aimed at it cannot set attributes."""
    __slots__ = ()

    def __call__(self, *args):
        if len(args) == 2 and type(args[0]) is str and args[1] in _LATIN1:
            return args[0].encode("latin-1")  # a str over U+00FF: UnicodeEncodeError -> "not a readable pickle"
        raise _Refusal(f"_codecs.encode({', '.join(_kind(a) for a in args)})")


class _EmptyBytes:
    """``__builtin__.bytes`` as a Python-3 protocol-2 pickle calls it for b"": no arguments, nothing else."""
    __slots__ = ()

    def __call__(self, *args):
        if args:
            raise _Refusal(f"bytes({', '.join(_kind(a) for a in args)})")
        return b""


class _Refusal(Exception):
    """A call the stand-ins refuse; turned into the DataError naming the file by ``safe_load``."""


def _kind(a: Any) -> str:
    return repr(a) if type(a) is str and len(a) <= 20 else type(a).__name__


# the calls Python 3 writes for bytes at protocols 0-2, answered by the stand-ins above
_CALLS = {("_codecs", "encode"): _Latin1Bytes(), ("__builtin__", "bytes"): _EmptyBytes(),
          ("builtins", "bytes"): _EmptyBytes()}


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
        if (module, name) in _CALLS:
            return _CALLS[module, name]
        raise DataError(f"{self._where}: refused to unpickle {module}.{name} ({_REFUSED})")

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
    except _Refusal as e:
        raise DataError(f"{where}: refused to unpickle {e} ({_REFUSED})") from None
    except EOFError:
        raise DataError(f"{where}: truncated ({len(data)} bytes; the pickle ends early); re-download it") from None
    except Exception as e:  # UnpicklingError, ValueError from numpy on a cut array, ...
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"{where}: not a readable pickle ({type(e).__name__}{': ' + msg if msg else ''})") from None
