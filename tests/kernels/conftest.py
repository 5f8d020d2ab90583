"""Kernel tests: the same files run on a GPU (Triton compiled) and on the CPU (Triton interpreted).

Without CUDA, TRITON_INTERPRET=1 is set here, before any kernel module is imported (the kernel
modules import triton lazily, and @triton.jit picks the interpreter when it decorates).
Kernel-vs-reference tests force the Triton path with ``backend="triton"``.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    """cuda when there is a GPU, else cpu (where Triton runs under the interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _no_tf32():
    """References are computed in true fp32 (STYLE: 'in fp32, TF32 off')."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
