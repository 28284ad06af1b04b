"""The run folder and the Accelerator, shared by train/autoencoder.py and train/latent.py.

Layout of a run folder RUN/:
    RUN/args.json                       the command's arguments (written by the main process)
    RUN/checkpoints/step_0000100/       training state, safetensors + JSON (train/checkpoint.py)
    RUN/logs/                           TensorBoard
    RUN/figures/                        PNGs (train/figures.py)
    RUN/model/                          final save_pretrained
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed


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

    def make(self) -> RunDir:
        for d in (self.root, self.checkpoints, self.logs, self.figures):
            d.mkdir(parents=True, exist_ok=True)
        return self


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
    if accelerator.is_main_process:
        run.make()
    accelerator.wait_for_everyone()
    set_seed(seed)  # python, numpy, torch on every process (same seed everywhere)
    if log_with is not None:
        hparams = {
            k: v for k, v in (config or {}).items() if isinstance(v, (int, float, str, bool))
        }
        accelerator.init_trackers(project_name, config=hparams)
    return accelerator


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
