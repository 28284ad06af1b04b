"""What the kernel tests share: where the Triton kernels run, and how results compare.

The kernels run compiled on CUDA, or on the CPU through the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton); a kernel test
module skips itself where neither holds (:data:`KERNELS_RUN`)."""

from __future__ import annotations

import os

import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = "cuda" if ON_GPU else "cpu"
KERNELS_RUN = ON_GPU or os.environ.get("TRITON_INTERPRET") == "1"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest reference value."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
