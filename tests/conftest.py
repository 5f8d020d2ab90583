"""Shared fixtures: small generated datasets in every layout the sources accept."""
from __future__ import annotations

import os

import torch

# Triton kernels run under the interpreter without a GPU. Set here, in the root conftest, so it
# holds before any test module (of any folder) imports triton; @triton.jit reads it at decoration.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _image(rng, h=20, w=16):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(rng, h=20, w=16):
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    return m


@pytest.fixture
def folder_dataset(tmp_path: Path):
    """images/<class>/<name>.png + masks/<class>/<name>.png, 3 classes x 4 images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for c in ("cat", "dog", "fox"):
        (root / "images" / c).mkdir(parents=True)
        (root / "masks" / c).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(_image(rng)).save(root / "images" / c / f"{c}{k}.png")
            Image.fromarray(_mask(rng)).save(root / "masks" / c / f"{c}{k}.png")
    return root


@pytest.fixture
def manifest_dataset(folder_dataset: Path):
    """CSV and JSONL manifests over the folder dataset (relative paths, class-name labels)."""
    rows = []
    for img in sorted((folder_dataset / "images").rglob("*.png")):
        rel = img.relative_to(folder_dataset)
        rows.append({"image": str(rel), "mask": str(Path("masks", *rel.parts[1:])), "label": rel.parts[1]})
    csv_path = folder_dataset / "train.csv"
    csv_path.write_text("image,mask,label\n" + "".join(f"{r['image']},{r['mask']},{r['label']}\n" for r in rows))
    jsonl_path = folder_dataset / "train.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return csv_path, jsonl_path


def write_arrays(path: Path, n=12, h=12, w=10, n_classes=3, grey=False, **extra):
    rng = np.random.default_rng(1)
    shape = (n, h, w) if grey else (n, h, w, 3)
    arrays = dict(images=rng.integers(0, 256, shape, dtype=np.uint8),
                  masks=(rng.random((n, h, w)) > 0.5).astype(np.uint8) * 255,
                  labels=np.arange(n) % n_classes)
    arrays.update(extra)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


@pytest.fixture
def arrays_file(tmp_path: Path):
    return write_arrays(tmp_path / "train.npz")
