"""Data sources -> SampleSet, each validated with errors that name the file or field.

One module per source kind: ``arrays`` (.npz), ``folder`` (class folders), ``manifest`` (CSV/JSONL),
``coco`` (instances JSON), ``nuswide`` (image list + label files); ``records`` holds the SampleSet every
source produces, ``files`` the file checks they share, ``layout`` where a folder keeps images and masks,
``strata`` the common-sense groups A read from a mapping file. ``registry``: each source module
declares itself (``SOURCE = Source(...)``: how its path is recognised, how a split loads, the keys it
reads); the config and ``data/build.py`` ask the registry, so a new source is one new module here.
"""
from .arrays import load_arrays
from .folder import load_folder
from .manifest import load_manifest
from .strata import apply_strata_file

__all__ = ["load_arrays", "load_folder", "load_manifest", "apply_strata_file"]
