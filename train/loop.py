"""Loop machinery shared by train/autoencoder.py and train/latent.py: their common command
line flags, the optimiser and LR schedule, the per-step log sums, the end-of-run checkpoint
and the per-process weight fingerprints. The scripts keep their loops; the numerics and
the boilerplate live here.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from x2ct.train.checkpoint import save_checkpoint
from x2ct.train.run import RunDir, build_accelerator, unlock_run_dir

__all__ = [
    "VAL_SEED_OFFSET",
    "add_optimisation_args",
    "add_run_args",
    "add_terms",
    "args_record",
    "build_optimizer",
    "run_accelerator",
    "lr_lambda",
    "end_of_step",
    "finish_run",
    "save_last_checkpoint",
    "val_seeds",
    "weights_checksum",
    "write_checksums",
]

VAL_SEED_OFFSET = 10_000  # validation phantom seeds: 10_000 + seed + i (training: seed + i)


def val_seeds(seed: int, n: int) -> list[int]:
    """The validation phantom seeds of a run seeded ``seed``, disjoint from its training seeds."""
    return [VAL_SEED_OFFSET + seed + i for i in range(n)]


# --------------------------------------------------------------------------- command line
def add_optimisation_args(
    p: argparse.ArgumentParser,
    lr: float,
    schedule: str,
    ema_decay: float,
    warmup: int = 100,
) -> None:
    """--lr, --warmup, --schedule, --grad-clip, --ema-decay, --mixed-precision, --grad-accum."""
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=warmup, help="linear LR warm-up steps")
    p.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default=schedule,
        help="cosine decays to 10%% of --lr at --max-steps",
    )
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=ema_decay)
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--grad-accum", type=int, default=1)


def add_run_args(
    p: argparse.ArgumentParser,
    max_steps: int,
    max_minutes: float | None,
    save_every: int,
    val_every: int,
    minutes_help: str | None = None,
) -> None:
    """--max-steps, --max-minutes, --save-every, --keep, --val-every, --log-every, --seed,
    --stop-after-steps (hidden: tests return after that many steps, like a kill) and
    --no-tensorboard."""
    p.add_argument("--max-steps", type=int, default=max_steps)
    p.add_argument("--max-minutes", type=float, default=max_minutes, help=minutes_help)
    p.add_argument("--save-every", type=int, default=save_every)
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    p.add_argument("--val-every", type=int, default=val_every)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-tensorboard", action="store_true")


def args_record(args: argparse.Namespace, argv=None) -> dict:
    """What RUN/args.json records: the parsed flags and the command line."""
    return {**vars(args), "argv": sys.argv if argv is None else list(argv)}


def run_accelerator(run: RunDir, args: argparse.Namespace, project_name: str):
    """:func:`~x2ct.train.run.build_accelerator` from the flags of :func:`add_run_args` and
    :func:`add_optimisation_args` (TensorBoard unless --no-tensorboard; every flag logged
    as a hyperparameter)."""
    return build_accelerator(
        run,
        args.seed,
        args.mixed_precision,
        args.grad_accum,
        log_with=None if args.no_tensorboard else "tensorboard",
        project_name=project_name,
        config=vars(args),
    )


# --------------------------------------------------------------------------- optimisation
def lr_lambda(warmup: int, schedule: str, max_steps: int):
    """LR factor of a step: linear warm-up over ``warmup`` steps, then constant or a cosine
    decay to 10% at ``max_steps``."""

    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / max(warmup, 1))
        if schedule == "constant":
            return warm
        t = min(step / max(max_steps, 1), 1.0)
        return warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))

    return f


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace):
    """(AdamW(betas 0.9, 0.99, no weight decay), its LambdaLR schedule) from the flags of
    :func:`add_optimisation_args` and --max-steps. Checkpoint the schedule with the other
    objects rather than preparing it: prepared, it steps once per process per step."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0
    )
    schedule = lr_lambda(args.warmup, args.schedule, args.max_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def add_terms(logs: dict, terms: Mapping[str, torch.Tensor], grad_accum: int) -> None:
    """Add one micro-batch's loss terms to ``logs["train/<name>"]`` (means over grad_accum)."""
    for name, v in terms.items():
        logs[f"train/{name}"] = logs.get(f"train/{name}", 0.0) + float(v.detach()) / grad_accum


def end_of_step(
    accelerator, run: RunDir, step: int, steps_this_run: int, args, bar, state
) -> bool:
    """After a step's logs and validation: the --save-every checkpoint of ``state`` (the
    objects by name, :func:`~x2ct.train.checkpoint.save_checkpoint`); True when
    --stop-after-steps says stop here, as if the run were killed (no final checkpoint, no
    final model; the tests' stand-in for a killed run)."""
    if step % args.save_every == 0:
        save_checkpoint(accelerator, run.checkpoints, step, state, keep=args.keep)
    if args.stop_after_steps is not None and steps_this_run >= args.stop_after_steps:
        bar.close()
        finish_run(accelerator, run)
        return True
    return False


def finish_run(accelerator, run: RunDir) -> None:
    """End the trackers and release the run folder's lock (train/run.py)."""
    accelerator.end_training()
    unlock_run_dir(run)


def save_last_checkpoint(accelerator, run: RunDir, step: int, args, state) -> None:
    """The end-of-run checkpoint of ``state``, unless --save-every has just written it."""
    if step % args.save_every != 0:
        save_checkpoint(accelerator, run.checkpoints, step, state, keep=args.keep)


# --------------------------------------------------------------------------- fingerprints
def weights_checksum(model: torch.nn.Module) -> str:
    """sha256 over the sorted state dict (names and bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_checksums(accelerator, run: RunDir, model: torch.nn.Module, ema_model) -> Path:
    """RUN/weights_rank<r>.sha256: this process's fingerprints of the trained (unwrapped)
    and EMA weights, and the process group; replicas must agree."""
    path = run.root / f"weights_rank{accelerator.process_index}.sha256"
    path.write_text(
        f"{weights_checksum(accelerator.unwrap_model(model))}\n{weights_checksum(ema_model)}\n"
        f"processes={accelerator.num_processes} "
        f"distributed_type={accelerator.distributed_type.value}\n"
    )
    return path
