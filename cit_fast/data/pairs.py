"""Biased pairs (b, c) for Exclusive / Co-occur scores and feature splitting: one door from what a
user writes (``--pairs`` / ``model.biased_pairs``) to class indices.

Three spellings:

- a preset name, ``coco-stuff`` or ``deepfashion``: Singh et al.'s 20 pairs of that dataset
  (``presets/biased_pairs.yaml``), names resolved against the data's classes; a pair whose class the
  data lacks is skipped, and one line says which;
- a pairs file: one ``b:c`` per line (``#`` comments, blank lines skipped), or YAML / JSON (``.yaml``,
  ``.yml``, ``.json``): a mapping ``{b: c}``, a list of ``b:c`` strings or ``[b, c]`` lists, or either
  under a top-level ``pairs:`` key;
- a hand-typed list ``b:c,b2:c2`` (class names, or indices where no class has that name).

In a file or a hand-typed list every name must be one of the data's classes: an unknown one is an
error naming it (and the file's line), because it is a typo, not a dataset that lacks the class.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError
from ..utils import print0

PRESETS_FILE = Path(__file__).parent / "presets" / "biased_pairs.yaml"
FILE_SUFFIXES = (".txt", ".yaml", ".yml", ".json")


@functools.lru_cache(maxsize=None)
def presets() -> Dict[str, Tuple[Tuple[str, str], ...]]:
    """{preset name: ((b, c), ...)} as shipped."""
    import yaml

    tree = yaml.safe_load(PRESETS_FILE.read_text())
    return {name: tuple((str(b), str(c)) for b, c in entry["pairs"]) for name, entry in tree.items()}


def class_index(spec, classes: Sequence[str], where: str = "biased pair") -> int:
    """A class name (or an index where no class has that name) -> its index; one error line otherwise."""
    classes = list(classes)
    s = str(spec).strip()
    if s in classes:
        return classes.index(s)
    if not s.lstrip("-").isdigit():
        raise UsageError(f"{where}: class {s!r} is not among the classes ({', '.join(classes[:10])}"
                         f"{'...' if len(classes) > 10 else ''})")
    idx = int(s)
    if not 0 <= idx < len(classes):
        raise UsageError(f"{where}: class index {idx} is out of range [0, {len(classes) - 1}]")
    return idx


def _split_pair(item: str, where: str) -> Tuple[str, str]:
    if ":" not in item:
        raise UsageError(f"{where} {item!r}: expected 'b:c' (the biased class, then its context class)")
    b, c = item.split(":", 1)
    return b.strip(), c.strip()


def read_pairs_file(path: Path) -> List[Tuple[str, str, str]]:
    """(b, c, where) per pair of a pairs file, ``where`` naming the file and its line or entry."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"pairs file {path}: not found")
    text = path.read_text()
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                out.append((*_split_pair(line, f"pairs file {path}, line {n}:"), f"pairs file {path}, line {n}"))
        if not out:
            raise UsageError(f"pairs file {path}: no pair (expected one 'b:c' per line)")
        return out
    import yaml

    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"pairs file {path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    if isinstance(tree, dict) and set(tree) == {"pairs"}:
        tree = tree["pairs"]
    expected = "a mapping {b: c}, a list of 'b:c' or [b, c], or either under 'pairs:'"
    if isinstance(tree, dict):
        items = [(k, v) for k, v in tree.items()]
    elif isinstance(tree, list):
        items = []
        for i, e in enumerate(tree):
            if isinstance(e, str):
                items.append(_split_pair(e, f"pairs file {path}, entry {i + 1}:"))
            elif isinstance(e, (list, tuple)) and len(e) == 2:
                items.append(tuple(e))
            else:
                raise UsageError(f"pairs file {path}, entry {i + 1}: expected 'b:c' or [b, c], got {e!r}")
    else:
        raise UsageError(f"pairs file {path}: expected {expected}")
    if not items:
        raise UsageError(f"pairs file {path}: no pair ({expected})")
    for b, c in items:
        if b is None or c is None or isinstance(b, (dict, list)) or isinstance(c, (dict, list)):
            raise UsageError(f"pairs file {path}: pair ({b!r}, {c!r}): expected two class names")
    return [(str(b).strip(), str(c).strip(), f"pairs file {path}, pair {b}:{c}") for b, c in items]


def _checked(b: int, c: int, where: str) -> Tuple[int, int]:
    if b == c:
        raise UsageError(f"{where}: b and c must differ")
    return b, c


def resolve_pairs(spec: str, classes: Sequence[str], label: str = "biased pairs") -> List[Tuple[int, int]]:
    """``spec`` (a preset name, a pairs file or 'b:c,...') -> [(b, c)] class indices of ``classes``.

    A preset's pairs whose classes the data lacks are skipped, with one line (on rank 0, to stderr)
    saying which; none left is an error. ``label`` names the option in messages."""
    spec = spec.strip()
    classes = list(classes)
    if spec in presets():
        return _resolve_preset(spec, classes, label)
    looks_like_file = ":" not in spec and (spec.lower().endswith(FILE_SUFFIXES) or "/" in spec)
    if Path(spec).is_file() or looks_like_file:
        return [_checked(class_index(b, classes, where), class_index(c, classes, where), where)
                for b, c, where in read_pairs_file(Path(spec))]
    items = [p.strip() for p in spec.split(",") if p.strip()]
    if len(items) == 1 and ":" not in items[0]:
        raise UsageError(f"{label} {items[0]!r}: expected 'b:c' pairs (the biased class, then its context class), "
                         f"a preset ({', '.join(presets())}) or a pairs file")
    out = []
    for item in items:
        b, c = _split_pair(item, f"{label}: pair")
        where = f"{label}: pair {item!r}"
        out.append(_checked(class_index(b, classes, where), class_index(c, classes, where), where))
    return out


def _resolve_preset(name: str, classes: List[str], label: str) -> List[Tuple[int, int]]:
    pairs, skipped = [], []
    for b, c in presets()[name]:
        missing = [x for x in (b, c) if x not in classes]
        if missing:
            skipped.append(f"{b}:{c} (no {' or '.join(repr(m) for m in missing)})")
        else:
            pairs.append((classes.index(b), classes.index(c)))
    total = len(presets()[name])
    if not pairs:
        raise UsageError(f"{label} {name}: none of its {total} pairs has both classes among the data's "
                         f"{len(classes)} classes ({', '.join(classes[:10])}{'...' if len(classes) > 10 else ''})")
    if skipped:
        print0(f"{label} {name}: skipped {len(skipped)} of {total} pairs whose classes the data lacks: "
               + ", ".join(skipped), file=sys.stderr)
    return pairs


def preset_pairs(name: str) -> Optional[Tuple[Tuple[str, str], ...]]:
    """The named preset's (b, c) class names, or None if there is no such preset."""
    return presets().get(name)
