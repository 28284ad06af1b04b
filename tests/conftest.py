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

# pytest-xdist runs N workers side by side; each torch would start one thread per core, so
# N x cores threads would fight over the cores. Each worker gets its share of the cores
# (subprocesses the tests start inherit it through OMP_NUM_THREADS).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    _threads = max(1, (_cores or 1) // _workers)
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


@pytest.fixture(autouse=True)
def _restore_process_wide_torch_settings():
    """A bf16 training run on a CPU turns oneDNN off for its process (x2ct.train.run: its
    bf16 weight gradients can be NaN), and a test may set torch's thread count: neither may
    reach the tests that follow in the same worker. Left off, oneDNN's absence made every
    later Conv3d test in that worker 4-8 times slower (the shipped model's tests took 160 s
    instead of 20-40 s)."""
    mkldnn, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    yield
    torch.backends.mkldnn.enabled = mkldnn
    torch.set_num_threads(threads)
