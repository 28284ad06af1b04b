"""Peak memory and wall time of a block of code, on CUDA or the CPU, and the precision
(autocast) a block runs at: what the benchmarks measure with.

    with PeakMemory(device) as mem:
        run()
    mem.peak_mb     # CUDA: torch's max allocated during the block; CPU: peak resident set
    mem.extra_mb    # the same above the level at entry (what the block itself needed)
    mem.mb          # what the tables report: CUDA peak_mb (weights included: what the card
                    # must hold), CPU extra_mb (the process's own RSS is not the block's)
    mem.seconds     # wall time (CUDA synchronised at both ends)

CPU peaks are sampled every millisecond by a thread (``PeakRSS``), so a spike shorter than
that can be missed.
"""

from __future__ import annotations

import os
import threading
import time

import torch

__all__ = ["PRECISIONS", "PeakMemory", "PeakRSS", "accelerate_precision", "autocast",
           "device_name", "memory_note", "peak_memory_mb", "rss_bytes"]

PRECISIONS = ("fp32", "bf16", "fp16")


def rss_bytes() -> int:
    """This process's resident set size in bytes (psutil, else /proc/self/statm, else 0)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_memory_mb(device: torch.device | str) -> float | None:
    """Peak memory of the process so far in MiB (for training logs): allocated by torch on
    CUDA, the peak resident set (VmHWM) on a Linux CPU; None where neither can be read."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond (CPU)."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = False
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


class PeakMemory:
    """Peak memory and seconds of a block on ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._rss = PeakRSS().__enter__()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.seconds = time.perf_counter() - self._t0
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_mb = peak / 2**20
            self.extra_mb = (peak - self._base) / 2**20
        else:
            self.seconds = time.perf_counter() - self._t0
            self._rss.__exit__(*exc)
            self.peak_mb = self._rss.peak_mb
            self.extra_mb = self._rss.mb

    @property
    def mb(self) -> float:
        """CUDA: peak allocated (MB); CPU: peak resident-set growth during the block (MB)."""
        return self.peak_mb if self.device.type == "cuda" else self.extra_mb


def memory_note(device: torch.device | str) -> str:
    """What a table's peak memory means on ``device``."""
    if torch.device(device).type == "cuda":
        return "peak MB: torch.cuda.max_memory_allocated during the call (weights included)"
    return ("peak MB: growth of the process's resident set during the call, sampled every "
            "millisecond (weights loaded before the call not included)")


def device_name(device: torch.device | str) -> str:
    """The card's name on CUDA, else the CPU and its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def accelerate_precision(precision: str) -> str:
    """Accelerate's name for a precision: ``Accelerator(mixed_precision=...)``, "no" for
    fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return "no" if precision == "fp32" else precision


def autocast(device: torch.device | str, precision: str = "fp32"):
    """``torch.autocast`` to ``precision`` ("bf16", "fp16") on ``device``; "fp32" turns it
    off (a context manager either way)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
