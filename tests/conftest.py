"""Session-wide test setup."""

import os

import pytest
import torch

# Without CUDA, Triton kernels can only run through the Triton interpreter. Triton reads
# TRITON_INTERPRET when it decorates a kernel, and it decorates its own standard library
# (tl.cdiv, tl.max, ...) when `triton` is first imported, which any test module importing
# x2ct.projector (-> x2ct.kernels) does: so it must be set here, before collection.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# Datasets cache cases under X2CT_CACHE_DIR (default ~/.cache/x2ct): keep the test suite's
# out of the user's cache, in one folder per session.
if "X2CT_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["X2CT_CACHE_DIR"] = tempfile.mkdtemp(prefix="x2ct-test-cache-")


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one process state per interpreter and refuses another mixed
    precision once it is set: reset it around a test that changes it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
