"""The training latent cache (RUN/latent_cache.safetensors): written atomically with its
key and checksum, rebuilt whenever it is missing, made for other data, unreadable,
truncated, edited or holds a non-finite value, with a warning saying why."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from x2ct.state import read_safetensors, write_safetensors

__all__ = ["load_latent_cache"]


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
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"{path}: {name} holds non-finite values"
    return None


def load_latent_cache(
    accelerator, path: Path, key: str, build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The cache at ``path`` if it was made with ``key`` and is intact; else the main
    process builds and writes it (atomically) while the others wait, then everyone reads
    it."""
    path = Path(path)
    if accelerator.is_main_process:
        problem = _problem(path, key)
        if problem is not None:
            if problem != "missing":
                msg = f"rebuilding the latent cache {path}: {problem}"
                warnings.warn(msg, stacklevel=2)
                accelerator.print(msg)
            tensors = build()
            bad = [k for k, t in tensors.items()
                   if t.is_floating_point() and not bool(torch.isfinite(t).all())]
            if bad:
                raise ValueError(f"{path}: the encoded training data has non-finite {bad}")
            write_safetensors(path, tensors, {"key": key})
    accelerator.wait_for_everyone()
    return read_safetensors(path)[0]
