"""Atomic training checkpoints with Accelerate, and resume from the latest one.

`save_checkpoint` writes `accelerator.save_state` into RUN/checkpoints/step_XXXXXXX.tmp and
renames it to step_XXXXXXX (os.replace), so a killed run never leaves a half-written
checkpoint under a real name; only the last `keep` are kept. `find_latest_checkpoint`
ignores `.tmp` leftovers. Objects registered with `accelerator.register_for_checkpointing`
(EMA, StepCounter) travel with the models, optimisers, schedulers and RNG states.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

_PATTERN = re.compile(r"^step_(\d{7})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


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


def save_checkpoint(
    accelerator: Accelerator, checkpoints: str | os.PathLike, step: int, keep: int = 3
) -> Path:
    """Save the full training state for `step` atomically; keep the newest `keep`.

    Call on every process (save_state gathers what it needs).
    """
    folder = Path(checkpoints)
    final = folder / checkpoint_name(step)
    tmp = folder / (checkpoint_name(step) + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_latest(accelerator: Accelerator, checkpoints: str | os.PathLike) -> Path | None:
    """Load the newest checkpoint into everything prepared/registered; None if there is none."""
    latest = find_latest_checkpoint(checkpoints)
    if latest is not None:
        accelerator.load_state(str(latest))
    return latest
