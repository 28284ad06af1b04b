"""The training latent cache (RUN/latent_cache.safetensors): written atomically with its
key and checksum, rebuilt whenever it is missing, made for other data, unreadable,
truncated, edited or holds a non-finite value, with a warning saying why.

It is read memory-mapped (``x2ct.state.read_safetensors``): the checks stream through
the file a slice at a time and training indexes a batch out of it, so a cache of 128^3
cases at 1 mm (about 1.7 MB each with material paths) may outgrow RAM. Every process of
a run maps the same file and shares its pages."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from x2ct.state import read_safetensors, write_safetensors

__all__ = ["all_finite", "load_latent_cache"]


def _problem(path: Path, key: str) -> str | None:
    """Why the cache at ``path`` cannot be used (None: it can)."""
    if not path.is_file():
        return "missing"
    try:
        tensors, metadata = read_safetensors(path)
    except ValueError as e:
        return str(e)
    if metadata.get("key") != key:
        return "made for other data or another autoencoder"
    for name, t in tensors.items():
        if not all_finite(t):
            return f"{path}: {name} holds non-finite values"
    return None


def all_finite(t: torch.Tensor, chunk_bytes: int = 4 * 2**20) -> bool:
    """No NaN or infinity in ``t`` (True for integers), checked ``chunk_bytes`` of its
    leading axis at a time (a mapped tensor is not copied whole)."""
    if not t.is_floating_point():
        return True
    if t.ndim == 0:
        return bool(torch.isfinite(t))
    rows = max(1, chunk_bytes // max(1, t[0].numel() * t.element_size()))
    return all(bool(torch.isfinite(t[i : i + rows]).all()) for i in range(0, len(t), rows))


def load_latent_cache(
    accelerator, path: Path, key: str, build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The cache at ``path`` if it was made with ``key`` and is intact; else the main
    process builds and writes it (atomically) while the others wait, then every process
    maps it (memory-mapped tensors; the main process has just checked or written it)."""
    path = Path(path)
    if accelerator.is_main_process:
        problem = _problem(path, key)
        if problem is not None:
            if problem != "missing":
                msg = f"rebuilding the latent cache {path}: {problem}"
                warnings.warn(msg, stacklevel=2)
                accelerator.print(msg)
            tensors = build()
            bad = [k for k, t in tensors.items() if not all_finite(t)]
            if bad:
                raise ValueError(f"{path}: the encoded training data has non-finite {bad}")
            write_safetensors(path, tensors, {"key": key})
    accelerator.wait_for_everyone()
    return read_safetensors(path, verify=False)[0]
