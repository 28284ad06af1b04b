"""Atomic training checkpoints in safetensors + JSON, and resume from the latest readable one.

A checkpoint is a folder RUN/checkpoints/step_XXXXXXX/ holding

    checkpoint.json                 format, step, number of processes (human readable)
    training_state.safetensors      every object's state_dict (models unwrapped, optimisers,
                                    LR schedulers, EMA, step counter, grad scaler); tensors
                                    as tensors, the rest as JSON in the metadata (x2ct.state)
    rng_state_<rank>.safetensors    each process's Python, NumPy, torch (and CUDA) RNG states

Nothing in it is ever unpickled: Accelerate's ``save_state``/``load_state`` are not used,
since ``load_state`` unpickles custom objects, the optimiser and RNG files (a full,
code-running load), so a file planted in a run folder would run code there.
Files this module does not know (a planted ``custom_checkpoint_0.pkl``) are never opened.

``save_checkpoint`` writes into step_XXXXXXX.tmp and renames it (os.replace), so a killed
run never leaves a half-written checkpoint under a real name; the newest ``keep`` are kept.
``resume_latest`` reads and checks (per-file sha256) the newest checkpoint completely
before loading anything into the objects; an unreadable one is skipped with a warning for
the one before. A folder written by the earlier Accelerate format is refused, not loaded.

Objects are passed by name, e.g. ``{"model": model, "optimizer": optimizer, "scheduler":
scheduler, "ema": ema, "step": counter}``; each needs ``state_dict``/``load_state_dict``.
Prepared (DDP) models are unwrapped. Every process calls both functions.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from x2ct.fileio import atomic_path
from x2ct.state import read_state, write_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "OldCheckpointError",
    "checkpoint_name",
    "find_latest_checkpoint",
    "list_checkpoints",
    "resume_latest",
    "save_checkpoint",
]

_PATTERN = re.compile(r"^step_(\d{7})$")
CHECKPOINT_FORMAT = "x2ct-training-state"
_VERSION = 1
_MANIFEST = "checkpoint.json"
_STATE = "training_state.safetensors"
# what Accelerate's save_state wrote (the earlier format): refused, never unpickled
_ACCELERATE_FILES = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                     "custom_checkpoint_0.pkl", "model.safetensors", "pytorch_model.bin")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def _rng_name(rank: int) -> str:
    return f"rng_state_{rank}.safetensors"


def list_checkpoints(checkpoints: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in a folder, oldest first."""
    folder = Path(checkpoints)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(_PATTERN.match(p.name).group(1)))


def find_latest_checkpoint(checkpoints: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (`.tmp` folders are ignored), or None."""
    found = list_checkpoints(checkpoints)
    return found[-1] if found else None


# --------------------------------------------------------------------------- objects
def _target(accelerator: Accelerator, obj: Any) -> Any:
    return accelerator.unwrap_model(obj) if isinstance(obj, torch.nn.Module) else obj


def _all_objects(accelerator: Accelerator, objects: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(objects)
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None:  # fp16 loss scaling
        out.setdefault("grad_scaler", scaler)
    return out


def rng_state() -> dict:
    """This process's RNG states: Python, NumPy, torch CPU and every CUDA device."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=True),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- save
def save_checkpoint(
    accelerator: Accelerator,
    checkpoints: str | os.PathLike,
    step: int,
    objects: Mapping[str, Any],
    keep: int = 3,
) -> Path:
    """Save the training state of ``objects`` (name -> object with ``state_dict``) and
    every process's RNG states for ``step``, atomically; keep the newest ``keep``.

    Call on every process: the main process writes the shared state (replicas agree),
    each process its RNG states.
    """
    folder = Path(checkpoints)
    final = folder / checkpoint_name(step)
    tmp = folder / (checkpoint_name(step) + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = {
            name: _target(accelerator, obj).state_dict()
            for name, obj in _all_objects(accelerator, objects).items()
        }
        write_state(tmp / _STATE, state)
        manifest = {
            "format": CHECKPOINT_FORMAT,
            "version": _VERSION,
            "step": int(step),
            "num_processes": accelerator.num_processes,
            "objects": sorted(state),
        }
        with atomic_path(tmp / _MANIFEST) as path:
            path.write_text(json.dumps(manifest, indent=2))
    write_state(tmp / _rng_name(accelerator.process_index), rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- load
class OldCheckpointError(ValueError):
    """A checkpoint in the earlier, pickled format: refused, never loaded."""


def _refuse_old_format(folder: Path) -> None:
    if not (folder / _MANIFEST).exists() and any(
        (folder / name).exists() for name in _ACCELERATE_FILES
    ):
        raise OldCheckpointError(
            f"{folder} was written by an earlier x2ct (Accelerate's pickled training state); "
            "it is not loaded, since loading it would unpickle files anyone could have "
            "planted. Start a new --run-dir (the trained RUN/model stays usable), or delete "
            f"{folder.parent} to train this run folder from scratch"
        )


def read_checkpoint(folder: str | os.PathLike, rank: int, num_processes: int) -> tuple[dict, dict]:
    """(object states, this rank's RNG state) of a checkpoint folder, read and checked
    completely (every process's RNG file too, so all processes reach the same verdict).
    ValueError naming the file for anything unreadable, truncated or corrupt."""
    folder = Path(folder)
    _refuse_old_format(folder)
    manifest_path = folder / _MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{manifest_path}: unreadable checkpoint manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{manifest_path}: not an x2ct checkpoint manifest")
    if manifest.get("version") != _VERSION:
        raise ValueError(
            f"{manifest_path}: checkpoint format version {manifest.get('version')}, this x2ct "
            f"reads version {_VERSION}"
        )
    states, _ = read_state(folder / _STATE)
    if not isinstance(states, dict) or sorted(states) != manifest.get("objects"):
        raise ValueError(f"{folder / _STATE}: its objects disagree with {manifest_path}")
    rng = None
    for r in range(max(num_processes, int(manifest.get("num_processes", 1)))):
        path = folder / _rng_name(r)
        if not path.exists():
            continue  # a run resumed with more processes: those start from their seed
        state, _ = read_state(path)
        if r == rank:
            rng = state
    return states, rng


def resume_latest(
    accelerator: Accelerator, checkpoints: str | os.PathLike, objects: Mapping[str, Any]
) -> Path | None:
    """Load the newest readable checkpoint into ``objects`` (the names given to
    :func:`save_checkpoint`) and restore this process's RNG states; None if there is none.

    A checkpoint that cannot be read whole (truncated, corrupt) is skipped with a warning
    naming it, for the one before; if none is readable, or one was written by the earlier
    pickled format, a ValueError says what to do. A readable checkpoint that does not fit
    the objects (another model size) is a ValueError too.
    """
    found = list_checkpoints(checkpoints)
    objects = _all_objects(accelerator, objects)
    problems = []
    for folder in reversed(found):
        try:
            states, rng = read_checkpoint(
                folder, accelerator.process_index, accelerator.num_processes
            )
        except OldCheckpointError:
            raise
        except ValueError as e:
            problems.append(str(e))
            msg = f"warning: skipping unreadable checkpoint {folder.name}: {e}"
            warnings.warn(msg, stacklevel=2)
            accelerator.print(msg)
            continue
        missing = sorted(set(objects) - set(states))
        if missing:
            raise ValueError(
                f"{folder}: holds no state for {missing}; it was written by another training "
                "setup (use another --run-dir)"
            )
        for name, obj in objects.items():
            try:
                _target(accelerator, obj).load_state_dict(states[name])
            except (RuntimeError, KeyError, ValueError, TypeError) as e:
                raise ValueError(
                    f"{folder}: the saved {name} does not fit this run "
                    f"({type(e).__name__}: {str(e)[:300]}); use another --run-dir"
                ) from e
        if rng is not None:
            set_rng_state(rng)
        return folder
    if found:
        raise ValueError(
            f"{Path(checkpoints)}: no readable checkpoint ({'; '.join(problems)}); delete the "
            "folder to start this run again from scratch"
        )
    return None
