"""The source registry: each file-based ``data.source`` declares, in its own module, how to recognise
its path, how to load a split and which ``data.*`` keys it reads.

A source module ends with ``SOURCE = Source(...)`` (or ``SOURCES = (...)`` for several); the registry
looks at every module of this package once, on first use, so adding a source is one new file here.
A source defined elsewhere (a plugin, a test) calls ``register(Source(...))``. Nothing outside asks
what a path's format is: ``config.finalize`` calls ``resolve_source`` (``data.source=auto`` inferred
from the path, a named one checked against it), ``data/build.py`` calls ``get(name).load``, and the
config's ``data.source`` choices and ``cit-fast config``'s list of sources come from ``source_names``
and ``source_notes``. (timm's ``create_dataset(name, root, split)`` asks its reader factory the same
way, so its argument parser never sniffs paths.)

This module and the sources import nothing of the config (only ``errors``/``utils``), so the config
may ask the registry from inside its functions without a circle.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ...errors import ConfigError
from .records import SampleSet

# data.source values that are not file formats: ``auto`` (recognised from the path) and the generated
# benchmark (data/synthetic); they are the config's own and no source may take them
BUILT_IN = ("auto", "synthetic")

Loader = Callable[[Any, str, str, Optional[Sequence[str]]], SampleSet]


def _never(path: Path, key: str) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Source:
    """One file-based data.source.

    name: the data.source value. looks_like: the paths it recognises, in a few words (the config's
    help and the "cannot tell" error list it). recognise(path) -> bool: whether a path is this
    source's (called on existing and missing paths alike: check with is_file / is_dir).
    load(d, path, split, classes) -> SampleSet: one split; d is the finalized DataConfig, split
    "train" or "test" (which key named the path), classes the training classes when reading a test
    split (None: the training split, whose classes it infers). keys: the data.* keys it reads besides
    train/test (listed by ``cit-fast config``). priority: recognisers are asked highest first (a
    catch-all such as ``folder`` is lowest). near_miss(path, key) -> a message when the path is
    almost this source's (the parent of a CIFAR directory): asked when recognise says no, in the same
    order, and raised as the one-line error. accepts(path): what it takes when named explicitly
    (default: what it recognises). template: its paths may hold ``{split}`` (coco).
    """

    name: str
    looks_like: str
    recognise: Callable[[Path], bool]
    load: Loader
    keys: Tuple[str, ...] = ()
    priority: int = 0
    near_miss: Callable[[Path, str], Optional[str]] = _never
    accepts: Optional[Callable[[Path], bool]] = None
    template: bool = False


_REGISTERED: Dict[str, Source] = {}
_DISCOVERED = False


def register(source: Source) -> Source:
    """Add a source (a plugin's, a test's); a name taken twice is our bug, not the user's."""
    if source.name in BUILT_IN:
        raise ValueError(f"data.source={source.name} is built in; a registered source needs another name")
    known = _REGISTERED.get(source.name)
    if known is not None and known is not source:
        raise ValueError(f"data.source={source.name} is registered twice")
    _REGISTERED[source.name] = source
    return source


def unregister(name: str) -> None:
    """Remove a source added with ``register`` (a test's toy source)."""
    _REGISTERED.pop(name, None)


def _discover() -> None:
    """Every module of this package with a SOURCE (or SOURCES) registers it, once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name == "registry":
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        declared = getattr(module, "SOURCES", None) or ((module.SOURCE,) if hasattr(module, "SOURCE") else ())
        for source in declared:
            register(source)


def sources() -> List[Source]:
    """Every registered source, in the order their recognisers are asked (priority, then name)."""
    _discover()
    return sorted(_REGISTERED.values(), key=lambda s: (-s.priority, s.name))


def source_names() -> Tuple[str, ...]:
    """The file-based data.source values, by name."""
    return tuple(sorted(s.name for s in sources()))


def source_notes() -> List[str]:
    """One line per source for ``cit-fast config``: its name, the paths it recognises, the keys it reads."""
    lines = []
    for s in sorted(sources(), key=lambda s: s.name):
        keys = f" (reads {', '.join('data.' + k for k in s.keys)})" if s.keys else ""
        lines.append(f"{s.name}: {s.looks_like}{keys}")
    return lines


def get(name: str) -> Source:
    _discover()
    if name not in _REGISTERED:
        raise ConfigError(f"data.source={name}: not a file-based source ({', '.join(source_names())})")
    return _REGISTERED[name]


def infer_source(path: str, key: str = "data.train") -> str:
    """The data.source a path is written in: the first source (by priority) that recognises it; a
    path that is almost one source's (near_miss) or that none recognises is a one-line error."""
    p = Path(path)
    if "{split}" in str(path):
        for s in sources():
            if s.template:
                return s.name
    if not p.exists():
        raise ConfigError(f"{key} {path}: not found")
    for s in sources():
        if s.recognise(p):
            return s.name
        hint = s.near_miss(p, key)
        if hint:
            raise ConfigError(hint)
    expected = "; ".join(f"{s.looks_like} ({s.name})" for s in sources())
    raise ConfigError(f"{key} {path}: cannot tell its data.source from the name; expected {expected}")


def resolve_source(d: Any) -> str:
    """The concrete data.source of a DataConfig: ``auto`` inferred from the paths, an explicit one
    checked against them (a mismatch is an error, never a silent fallback)."""
    path, key = (d.train, "data.train") if d.train else (d.test, "data.test")
    if d.source == "synthetic" and d.train:
        raise ConfigError(f"data.train={d.train} is set, but data.source=synthetic generates its own data; "
                          f"leave data.source unset (it is inferred from data.train) or name the right source")
    if d.source == "auto" and not path:
        return "synthetic"
    if d.source in BUILT_IN and not path:
        return d.source
    if "{split}" in path and d.source != "auto":  # a path template: the named source reads it
        return d.source
    inferred = infer_source(path, key)
    if d.source == "auto":
        return inferred
    named = _REGISTERED.get(d.source)
    if inferred != d.source and not (named and named.accepts and named.accepts(Path(path))):
        raise ConfigError(f"data.source={d.source}, but {key}={path} looks like data.source={inferred} data; "
                          f"leave data.source unset (it is inferred) or fix the path")
    return d.source
