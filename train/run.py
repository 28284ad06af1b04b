"""The run folder and the Accelerator, shared by train/autoencoder.py and train/latent.py.

Layout of a run folder RUN/:
    RUN/args.json                       the command's arguments (written by the main process)
    RUN/checkpoints/step_0000100/       training state, safetensors + JSON (train/checkpoint.py)
    RUN/logs/                           TensorBoard
    RUN/figures/                        PNGs (train/figures.py)
    RUN/model/                          final save_pretrained
    RUN/.lock                           held (flock) by the training process; its PID inside

One trainer per run folder: the main process takes an advisory lock on RUN/.lock
(``fcntl.flock``; the kernel releases it when the process ends, even by kill -9) before
it writes anything, and a second trainer is refused with the holder's PID. Under the lock,
what killed runs left half-written (hidden temporaries, ``step_*.tmp`` checkpoints) is
removed. Nothing in the folder records its own path: a run folder can be moved and resumed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast, set_seed

from x2ct.cli import InputError
from x2ct.fileio import remove_stale_temporaries


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def args_json(self) -> Path:
        return self.root / "args.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def make(self) -> RunDir:
        for d in (self.root, self.checkpoints, self.logs, self.figures):
            d.mkdir(parents=True, exist_ok=True)
        return self


_ONEDNN_TURNED_OFF = False  # build_accelerator turned oneDNN off (bf16 on a CPU)


@contextmanager
def onednn_for_sampling():
    """A context in which oneDNN is on again if :func:`build_accelerator` turned it off:
    sampling (validation, the closing comparison) runs no backward pass, so the bf16
    weight-gradient fault does not arise, and PyTorch's own Conv3d without oneDNN is 4-8
    times slower. A no-op otherwise (oneDNN left as the user set it). Only the enabled
    flag is touched (``torch.backends.mkldnn.flags`` would reset oneDNN's other flags)."""
    if not _ONEDNN_TURNED_OFF:
        yield
        return
    torch.backends.mkldnn.enabled = True
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = False


def build_accelerator(
    run: RunDir,
    seed: int,
    mixed_precision: str = "no",
    grad_accum: int = 1,
    log_with: str | None = "tensorboard",
    project_name: str = "x2ct",
    config: dict | None = None,
) -> Accelerator:
    """An Accelerator logging to RUN/logs, with every process seeded by `seed`.

    The run folder is created by the main process; the others wait for it. Launched as
    several processes on a machine without a GPU (`accelerate launch --multi_gpu
    --num_processes 2` on a CPU), it runs them as one gloo group (DistributedType.MULTI_CPU)
    rather than as independent copies.
    """
    accelerator = Accelerator(
        cpu=multi_process_without_gpu(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(run.root), logging_dir=str(run.logs)),
    )
    if (accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu"
            and torch.backends.mkldnn.enabled):
        # oneDNN's bf16 Conv3d weight gradient is intermittently NaN on some CPUs (torch
        # 2.13: 12 of 200 random 16-channel convolutions on this project's CI machine; none
        # with oneDNN off), which would skip those updates; PyTorch's own kernels are exact
        global _ONEDNN_TURNED_OFF
        torch.backends.mkldnn.enabled = False
        _ONEDNN_TURNED_OFF = True
        accelerator.print("bf16 on a CPU: oneDNN convolutions turned off for training "
                          "(their bf16 weight gradients can be NaN; validation sampling keeps "
                          "them); slower, but every update counts")
    problem = ""
    if accelerator.is_main_process:
        try:
            lock_run_dir(run)
            run.make()
            clean_run_dir(run)
        except RunLockedError as e:
            problem = str(e)
    if accelerator.num_processes > 1:  # every process stops if the main one could not lock
        flag = torch.tensor([1 if problem else 0], device=accelerator.device)
        if int(broadcast(flag, from_process=0).item()) and not problem:
            problem = f"{run.root}: locked by another trainer (see the main process's message)"
    if problem:
        raise RunLockedError(problem)
    accelerator.wait_for_everyone()
    set_seed(seed)  # python, numpy, torch on every process (same seed everywhere)
    if log_with is not None:
        hparams = {
            k: v for k, v in (config or {}).items() if isinstance(v, (int, float, str, bool))
        }
        accelerator.init_trackers(project_name, config=hparams)
    return accelerator


class RunLockedError(InputError):
    """Another live process trains in this run folder."""


_LOCKS: dict[Path, int] = {}  # run folder -> open file descriptor holding its lock


def lock_run_dir(run: RunDir) -> None:
    """Take the advisory lock on RUN/.lock for this process (reentrant: a process that holds
    it keeps it) and write this process's PID and host into it. Raises RunLockedError,
    naming the holder's PID, when another live process holds it. Released by
    :func:`unlock_run_dir` or when the process ends, however it ends."""
    import fcntl

    key = run.root.resolve()
    if key in _LOCKS:
        return
    run.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(run.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"{run.root}: another trainer (PID {holder}) is training in this run folder; "
            "wait for it to end or stop it, or use another --run-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _LOCKS[key] = fd


def unlock_run_dir(run: RunDir) -> None:
    """Release this process's lock on the run folder (nothing if it holds none)."""
    fd = _LOCKS.pop(run.root.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


def clean_run_dir(run: RunDir) -> list[Path]:
    """Remove what killed runs left half-written: hidden temporaries of atomic writes in
    RUN/ and RUN/checkpoints/, and ``step_*.tmp`` checkpoint folders. Call under the lock."""
    removed = remove_stale_temporaries(run.root) + remove_stale_temporaries(run.checkpoints)
    if run.checkpoints.is_dir():
        for p in run.checkpoints.glob("step_*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def multi_process_without_gpu() -> bool:
    """Launched with WORLD_SIZE > 1 but no CUDA/XPU device to give each process."""
    xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available() and not xpu


def save_args(run: RunDir, args: dict) -> None:
    """Write RUN/args.json (call on the main process)."""
    tmp = run.args_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(args, indent=2, default=str))
    tmp.replace(run.args_json)


class StepCounter:
    """The optimiser step count, saved and restored with the training state."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class Deadline:
    """`--max-minutes`: wall-clock budget of this invocation (None = unlimited)."""

    def __init__(self, minutes: float | None):
        self.end = None if minutes is None else time.monotonic() + 60.0 * minutes

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end
