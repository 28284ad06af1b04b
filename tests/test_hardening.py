"""Hostile and broken inputs (issue 13): no code from a checkpoint, one clear line for every
bad input, no mixed or lost outputs.

Every bad input goes to the library call and to the command line; the command line must
print one line naming the file and the problem (no traceback), exit with 2 and write
nothing into --out.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from latent_helpers import one_thread, tiny_autoencoder, train_args  # noqa: F401

from x2ct.train.checkpoint import (
    OldCheckpointError,
    find_latest_checkpoint,
    resume_latest,
    save_checkpoint,
)
from x2ct.train.ema import EMA
from x2ct.train.run import StepCounter


# --------------------------------------------------------------------------- 1. no pickle
class _Payload:
    """Unpickling this creates ``marker``: what a planted checkpoint file could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(path: Path, marker: Path) -> Path:
    torch.save({"step": _Payload(marker)}, path)
    return path


def test_planted_pickle_is_live(tmp_path):
    """The oracle for the tests below: the payload runs when unpickled."""
    path = plant_pickle(tmp_path / "x.pkl", tmp_path / "marker")
    torch.load(path, weights_only=False)
    assert (tmp_path / "marker").exists()


def _tiny_state():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    ema, counter = EMA(model, 0.9), StepCounter()
    model, opt = accelerator.prepare(model, opt)
    state = dict(model=model, optimizer=opt, scheduler=sched, ema=ema, step=counter)
    return accelerator, state


@pytest.mark.parametrize(
    "planted",
    [
        "custom_checkpoint_2.pkl",  # what Accelerate's load_state unpickled
        "random_states_0.pkl",
        "optimizer.bin",
        "training_state.safetensors",  # a pickle under the name of a real state file
        "rng_state_0.safetensors",
    ],
)
def test_checkpoint_never_unpickles_a_planted_file(tmp_path, planted):
    accelerator, state = _tiny_state()
    for step in (1, 2):
        state["step"].step = step
        save_checkpoint(accelerator, tmp_path / "ckpt", step, state)
    latest = find_latest_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "marker"
    plant_pickle(latest / planted, marker)
    state["step"].step = 0
    corrupt = planted.endswith("safetensors")
    with pytest.warns(UserWarning, match="skipping unreadable") if corrupt else nullcontext():
        resumed = resume_latest(accelerator, tmp_path / "ckpt", state)
    assert not marker.exists()
    # a planted real state file makes the checkpoint unreadable: the one before is used
    expected = 1 if corrupt else 2
    assert resumed.name == f"step_000000{expected}" and state["step"].step == expected


def test_checkpoint_holds_no_pickle(tmp_path):
    accelerator, state = _tiny_state()
    folder = save_checkpoint(accelerator, tmp_path, 1, state)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["checkpoint.json", "rng_state_0.safetensors", "training_state.safetensors"]
    for p in folder.iterdir():  # no pickle protocol header anywhere
        assert not p.read_bytes().startswith(b"\x80") and b"PK\x03\x04" not in p.read_bytes()[:4]


def test_old_pickled_checkpoint_is_refused_unread(tmp_path):
    accelerator, state = _tiny_state()
    old = tmp_path / "step_0000005"
    old.mkdir()
    marker = tmp_path / "marker"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        plant_pickle(old / name, marker)
    with pytest.raises(OldCheckpointError, match="earlier x2ct.*new --run-dir"):
        resume_latest(accelerator, tmp_path, state)
    assert not marker.exists()


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    return tiny_autoencoder().save_pretrained(tmp_path_factory.mktemp("ae") / "ae")


AE_TINY = ["--config", "kl-tiny", "--n-train", "2", "--n-val", "0", "--shape", "16", "16",
           "16", "--crop", "0", "--batch-size", "1", "--scaling-volumes", "1",
           "--no-tensorboard", "--save-every", "1"]


@pytest.mark.parametrize("script", ["autoencoder", "latent"])
def test_rerun_after_planting_runs_no_code(tmp_path, script, autoencoder_dir):
    """Issue 13.1: a torch.save'd object written over custom_checkpoint_2.pkl of the newest
    checkpoint ran os.system when the same training command was rerun."""
    run = tmp_path / "run"
    if script == "autoencoder":
        from x2ct.train.autoencoder import main

        args = AE_TINY + ["--run-dir", str(run), "--max-steps", "2"]
    else:
        from x2ct.train.latent import main

        args = train_args(run, autoencoder_dir, "--max-steps", "2", "--save-every", "1",
                          "--n-val", "0")
    main(args + ["--stop-after-steps", "1"])
    latest = find_latest_checkpoint(run / "checkpoints")
    assert latest.name == "step_0000001"
    marker = tmp_path / "marker"
    plant_pickle(latest / "custom_checkpoint_2.pkl", marker)
    main(args)
    assert not marker.exists()
    assert find_latest_checkpoint(run / "checkpoints").name == "step_0000002"
