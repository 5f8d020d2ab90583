"""Common-sense groups A from a mapping file: each sample's stratum from its class."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from ...utils import read_mapping_file
from .records import DataError, SampleSet


def apply_strata_file(samples: SampleSet, path: str) -> SampleSet:
    """Set each sample's stratum from a YAML/JSON mapping {class name or index: group}."""
    mapping = {str(k): str(v) for k, v in read_mapping_file(Path(path), "strata file", DataError).items()}
    unknown = sorted(set(mapping) - set(samples.classes) - {str(i) for i in range(samples.num_classes)})
    if unknown:
        raise DataError(f"strata file {path}: unknown class(es) {unknown}")
    groups: Dict[str, int] = {}
    per_class = []
    for ci, name in enumerate(samples.classes):
        g = mapping.get(name, mapping.get(str(ci)))
        if g is None:
            raise DataError(f"strata file {path}: class {name!r} has no group")
        per_class.append(groups.setdefault(g, len(groups)))
    samples.strata = np.asarray(per_class, np.int64)[samples.labels]
    return samples
