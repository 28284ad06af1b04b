"""State dicts and tensors as safetensors + JSON: nothing x2ct reads back is ever unpickled.

A nested state (a ``state_dict()`` of a model, optimiser, LR scheduler, EMA, the RNG
states) is split into its tensors, stored in a safetensors file, and the rest of its
structure, stored as JSON in that file's metadata. Python types JSON lacks are tagged:
``{"__tuple__": [...]}``, ``{"__dict__": [[key, value], ...]}`` (any key type JSON can
hold, e.g. an optimiser's integer parameter ids), ``{"__tensor__": name}`` and
``{"__ndarray__": name, "dtype": ...}``. Anything else (a function, a class instance) is
refused: it could only be saved by pickling it.

Every file also records the sha256 of its tensors' bytes, checked on reading, so a
truncated or edited file is an error naming it, never silently wrong numbers.

Reading uses ``safetensors.safe_open`` and ``json.loads`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from x2ct.fileio import atomic_path

__all__ = [
    "decode_state",
    "load_weights",
    "encode_state",
    "read_safetensors",
    "read_state",
    "tensors_digest",
    "write_safetensors",
    "write_state",
]

_STATE_KEY = "x2ct_state"  # safetensors metadata entry holding the JSON structure
_DIGEST_KEY = "x2ct_sha256"  # metadata entry holding tensors_digest()


# --------------------------------------------------------------------------- structure
def encode_state(state: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """The JSON-able structure of ``state``; its tensors (and numpy arrays) are added to
    ``tensors`` under fresh names starting with ``prefix``. Raises TypeError for a value
    that only pickle could store."""

    def enc(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            name = f"{prefix}/{len(tensors)}"
            tensors[name] = x.detach().to("cpu").contiguous().clone()
            return {"__tensor__": name}
        if isinstance(x, np.ndarray):
            name = f"{prefix}/{len(tensors)}"
            a = np.ascontiguousarray(x)
            # safetensors' torch side lacks some numpy dtypes (uint32): store as int64
            wide = a.astype(np.int64) if a.dtype.kind in "ui" else a
            tensors[name] = torch.from_numpy(wide.copy())
            return {"__ndarray__": name, "dtype": a.dtype.str}
        if isinstance(x, (bool, int, float, str)) or x is None:
            return x
        if isinstance(x, (np.integer, np.floating, np.bool_)):
            return x.item()
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, Mapping):
            items = []
            for k, v in x.items():
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    raise TypeError(f"cannot store a state key of type {type(k).__name__}")
                items.append([k, enc(v)])
            return {"__dict__": items}
        raise TypeError(
            f"cannot store a {type(x).__name__} in a state file (only tensors, arrays, "
            "numbers, strings, lists, tuples and dicts; never pickle)"
        )

    return enc(state)


def decode_state(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`. Raises ValueError on a malformed structure."""

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if set(x) == {"__tensor__"}:
            return tensors[x["__tensor__"]]
        if set(x) == {"__ndarray__", "dtype"}:
            return tensors[x["__ndarray__"]].numpy().astype(np.dtype(x["dtype"]))
        if set(x) == {"__tuple__"}:
            return tuple(dec(v) for v in x["__tuple__"])
        if set(x) == {"__dict__"}:
            return {k: dec(v) for k, v in x["__dict__"]}
        raise ValueError(f"unknown entry in a state structure: {sorted(x)}")

    try:
        return dec(structure)
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed state structure ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------- tensor files
def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():  # the bytes in place (a memory-mapped tensor is streamed, not copied)
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` atomically (x2ct.fileio.atomic_path) with their digest in the
    metadata; the file gets the usual permissions (0666 less the umask)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {**(metadata or {}), _DIGEST_KEY: tensors_digest(tensors)}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    return path


def read_safetensors(
    path: str | os.PathLike, device: str | torch.device = "cpu", verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file. Every failure is a ValueError (or
    FileNotFoundError) naming the file: unreadable, truncated, or (``verify``, when the
    file records one) tensors that do not match their recorded digest.

    On the CPU the tensors are memory-mapped from the file, copy-on-write
    (``safe_open``): pages are read when touched and stay in the page cache, not in the
    process's own memory, so a file larger than RAM can be read and indexed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt"
        ) from e
    expected = metadata.get(_DIGEST_KEY)
    if verify and expected is not None and tensors_digest(tensors) != expected:
        raise ValueError(f"{path}: the tensors do not match their recorded checksum (corrupt)")
    return tensors, metadata


def write_state(
    path: str | os.PathLike, state: Any, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a nested state (see the module docstring) as one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    structure = encode_state(state, tensors)
    meta = {**(metadata or {}), _STATE_KEY: json.dumps(structure)}
    return write_safetensors(path, tensors, meta)


def read_state(path: str | os.PathLike) -> tuple[Any, dict[str, str]]:
    """(state, metadata) of a file written by :func:`write_state`; ValueError naming the
    file when it is not one, or is truncated or corrupt."""
    tensors, metadata = read_safetensors(path)
    if _STATE_KEY not in metadata:
        raise ValueError(f"{Path(path)}: not an x2ct state file (no {_STATE_KEY} metadata)")
    try:
        structure = json.loads(metadata.pop(_STATE_KEY))
    except json.JSONDecodeError as e:
        raise ValueError(f"{Path(path)}: its state structure is not valid JSON ({e})") from e
    try:
        return decode_state(structure, tensors), metadata
    except ValueError as e:
        raise ValueError(f"{Path(path)}: {e}") from e


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a safetensors state dict into ``model`` (strict); ValueError naming the file
    when it is unreadable, corrupt or does not fit the model."""
    tensors, _ = read_safetensors(path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ValueError(
            f"{Path(path)}: the weights do not fit the model its config.json describes "
            f"({' '.join(str(e).split())[:400]})"
        ) from e
    return model
