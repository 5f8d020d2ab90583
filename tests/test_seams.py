"""Seams between modules: no cit_fast module takes another module's private names (a leading underscore
says "machinery of this file"; a name another module needs is made public where it belongs)."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "cit_fast"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_of(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(importer: str, is_package: bool, module: str, level: int) -> str:
    if not level:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_module(dotted: str) -> bool:
    p = PKG.parent.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def leaks(source: str, path: Path):
    """(line, text) of each private name of another cit_fast module that ``source`` takes: imported by
    name, or read as an attribute of an imported cit_fast module. A package's own private submodules
    (``kernels/__init__`` importing ``._composite``) are its machinery, not a leak."""
    me = _module_of(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(source)
    modules = {}  # local name -> the cit_fast module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            src = _absolute(me, is_package, node.module, node.level)
            if not src.startswith("cit_fast"):
                continue
            for a in node.names:
                target = f"{src}.{a.name}"
                if _is_module(target):
                    modules[a.asname or a.name] = target
                    own = src == (me if is_package else me.rsplit(".", 1)[0])
                    if _private(a.name) and not own:
                        found.append((node.lineno, f"from {src} import {a.name}"))
                elif _private(a.name):
                    found.append((node.lineno, f"from {src} import {a.name}"))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cit_fast") and a.asname:
                    modules[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            found.append((node.lineno, f"{node.value.id}._{node.attr[1:]} ({modules[node.value.id]})"))
    return sorted(found)


FILES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PKG)) for p in FILES])
def test_no_private_names_across_modules(path):
    found = leaks(path.read_text(), path)
    assert not found, f"{path.relative_to(PKG.parent)} takes private names of other modules: " + "; ".join(
        f"line {n}: {t}" for n, t in found)


@pytest.mark.parametrize("source, expected", [
    ("from .shards import _TarOut", ["from cit_fast.data.sources.shards import _TarOut"]),
    ("from ..pipelines.torch_pipeline import _open", ["from cit_fast.data.pipelines.torch_pipeline import _open"]),
    ("from . import records\nrecords._x()", ["records._x (cit_fast.data.sources.records)"]),
    ("import cit_fast.data.sources.records as r\nr._y", ["r._y (cit_fast.data.sources.records)"]),
    ("from .records import DataError\nimport pickle\npickle._Pickler", []),  # public, and not ours
    ("from ._private_helper import thing", []),  # a public name of a module that does not exist here
])
def test_the_scan_finds_leaks(source, expected):
    """The scan itself, on sources placed at cit_fast/data/sources/x.py: it must see what it forbids."""
    assert [t for _, t in leaks(source, PKG / "data" / "sources" / "x.py")] == expected
