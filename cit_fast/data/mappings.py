"""Named class mappings between two datasets, for cross-dataset evaluation (``cit-fast cross-eval
--mapping NAME``): ``coco-nuswide``, the MS-COCO <-> NUS-WIDE common classes (``presets/coco_nuswide.yaml``).

A named mapping holds both class lists and how each pair was matched (exact name, plural, synonym);
it is used in whichever direction the model's classes read it (COCO -> NUS-WIDE for a COCO model,
NUS-WIDE -> COCO for a NUS-WIDE one), and a pair whose class the model or the target lacks is skipped
with one line saying which.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..errors import UsageError
from ..utils import print0

PRESETS = Path(__file__).parent / "presets"
NAMED = {"coco-nuswide": (PRESETS / "coco_nuswide.yaml", "coco", "nuswide", "MS-COCO", "NUS-WIDE")}
HOWS = ("exact", "plural", "synonym")


@dataclass(frozen=True)
class NamedMapping:
    name: str
    sides: Tuple[str, str]  # the two datasets' keys, e.g. ("coco", "nuswide")
    titles: Tuple[str, str]  # e.g. ("MS-COCO", "NUS-WIDE")
    classes: Tuple[Tuple[str, ...], Tuple[str, ...]]  # each side's full class list
    pairs: Tuple[Tuple[str, str, str], ...]  # (first side's class, second side's class, how matched)
    synonyms: Dict[str, str]


@functools.lru_cache(maxsize=None)
def named_mapping(name: str) -> NamedMapping:
    import yaml

    path, a, b, ta, tb = NAMED[name]
    tree = yaml.safe_load(path.read_text())
    pairs = tuple((str(p[a]), str(p[b]), str(p["how"])) for p in tree["pairs"])
    return NamedMapping(name, (a, b), (ta, tb), (tuple(map(str, tree[a])), tuple(map(str, tree[b]))), pairs,
                        {str(k): str(v) for k, v in (tree.get("synonyms") or {}).items()})


def derive_mapping(first: Sequence[str], second: Sequence[str], synonyms: Dict[str, str]
                   ) -> List[Tuple[str, str, str]]:
    """Match every class of ``first`` to one of ``second``: the same name (exact), its plural (+s, +es),
    or the synonym given; (first class, second class, how) in ``first``'s order, one-to-one."""
    out, taken = [], set()
    for s in first:
        for cand, how in ((s, "exact"), (s + "s", "plural"), (s + "es", "plural"), (synonyms.get(s), "synonym")):
            if cand is not None and cand in second and cand not in taken:
                out.append((s, cand, how))
                taken.add(cand)
                break
    return out


def orient(m: NamedMapping, source: Sequence[str], target: Sequence[str]) -> Tuple[Dict[str, str], str]:
    """{source class: target class} of the pairs both sides have, read in the direction the model's
    classes (``source``) match best; (mapping, 'MS-COCO -> NUS-WIDE' or the reverse). Skipped pairs are
    one line on stderr; none left is an error."""
    src, tgt = set(source), set(target)
    ways = [(m.titles, [(p[0], p[1]) for p in m.pairs]), (m.titles[::-1], [(p[1], p[0]) for p in m.pairs])]
    (titles, pairs) = max(ways, key=lambda w: sum(s in src and t in tgt for s, t in w[1]))  # ties: the first
    kept = {s: t for s, t in pairs if s in src and t in tgt}
    direction = f"{titles[0]} -> {titles[1]}"
    if not kept:
        raise UsageError(f"--mapping {m.name}: none of its {len(pairs)} pairs has its class among the model's "
                         f"classes and the target's ({_few(source)} / {_few(target)})")
    skipped = [f"{s}:{t} ({'; '.join(_lacks(s, t, src, tgt))})" for s, t in pairs if s not in kept]
    if skipped:
        print0(f"--mapping {m.name} ({direction}): {len(kept)} of {len(pairs)} pairs; skipped those whose class "
               f"the model or the target lacks: " + ", ".join(skipped), file=sys.stderr)
    return kept, direction


def _lacks(s: str, t: str, src: set, tgt: set) -> List[str]:
    return ([f"the model has no {s!r}"] if s not in src else []) + ([f"the target has no {t!r}"] if t not in tgt else [])


def _few(names: Sequence[str], n: int = 6) -> str:
    names = list(names)
    return ", ".join(names[:n]) + ("..." if len(names) > n else "")
