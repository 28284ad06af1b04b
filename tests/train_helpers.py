"""Helpers for the training-script tests (test_latent, test_train_autoencoder): weight
fingerprints, a record of the steps a run trained, a deliberately changed checkpoint, and
two-process launches whose gradients are compared with one process's (grad_probe.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
PROBE = str(Path(__file__).resolve().parent / "grad_probe.py")


def checksums(run: Path, rank: int = 0) -> list[str]:
    """RUN/weights_rank<r>.sha256 (x2ct.train.loop.write_checksums): training weights, EMA
    weights and the process group."""
    return (Path(run) / f"weights_rank{rank}.sha256").read_text().split()


def record_steps(monkeypatch, module) -> list[tuple[int, int]]:
    """Wrap ``module.end_of_step`` (called once after every optimiser step of a training
    script) to record (step, steps_this_run): what a run trained, and where it started."""
    seen: list[tuple[int, int]] = []
    original = module.end_of_step

    def recording(accelerator, run, step, steps_this_run, *rest):
        seen.append((step, steps_this_run))
        return original(accelerator, run, step, steps_this_run, *rest)

    monkeypatch.setattr(module, "end_of_step", recording)
    return seen


def perturb_checkpoint(checkpoint: Path, delta: float = 1e-2) -> None:
    """Add ``delta`` to every floating-point tensor of a checkpoint's training state
    (x2ct.train.checkpoint: training_state.safetensors holds the model, its EMA and the
    optimiser, flattened): a run that really resumes from it ends with other weights than
    one that resumed from the untouched checkpoint."""
    from safetensors import safe_open

    path = Path(checkpoint) / "training_state.safetensors"
    assert path.is_file(), f"no {path.name} in {checkpoint}: {sorted(Path(checkpoint).iterdir())}"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(path))
    changed = {k: (v + delta if v.is_floating_point() else v).contiguous()
               for k, v in state.items()}
    # re-recorded checksum: a deliberate change, not the corruption resume_latest skips
    from x2ct.state import _DIGEST_KEY, tensors_digest

    save_file(changed, str(path), {**metadata, _DIGEST_KEY: tensors_digest(changed)})


def launch_two_processes(script: list[str], port: int, timeout: float = 600):
    """``accelerate launch`` two processes on this CPU (one gloo group, MULTI_CPU) running
    ``script`` (a path and its arguments), from the repository root."""
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(port), *script,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


GRADIENT_RTOL = 1e-2
"""Relative L2 difference allowed per parameter tensor between the two-process and the
one-process gradient. Both are float32 sums over the same voxels in another order (two
halves all-reduced against one batch); a bias's gradient sums a whole feature map with
cancellation, and on some CPUs differs by up to 3e-3 of its norm (elementwise, a few 1e-3
of its largest entry). The bugs the test is for are far larger: a sum over ranks instead
of a mean doubles the gradient (relative difference 1), ranks drawing other samples than
their half change it at order 1."""


def assert_same_gradients(two: Path, one: Path) -> None:
    """The gradient both ranks of a two-process run stepped with (tests/grad_probe.py) is
    the one-process gradient at twice the batch: equal on the two ranks, and equal to the
    single process's up to float32 summation order (``GRADIENT_RTOL`` per tensor, a tenth
    of it over the whole gradient)."""
    g0, g1 = load_file(str(two / "grad_rank0.safetensors")), load_file(
        str(two / "grad_rank1.safetensors")
    )
    single = load_file(str(one / "grad_rank0.safetensors"))
    assert sorted(g0) == sorted(single) == sorted(g1) and len(single) > 0
    total_diff = total = 0.0
    for name, g in single.items():
        torch.testing.assert_close(g0[name], g1[name], rtol=0, atol=0, msg=name)
        diff, norm = float((g0[name] - g).double().norm()), float(g.double().norm())
        assert diff <= GRADIENT_RTOL * norm + 1e-12, (name, diff, norm)
        total_diff, total = total_diff + diff**2, total + norm**2
    assert total > 0
    assert total_diff**0.5 <= 0.1 * GRADIENT_RTOL * total**0.5, (total_diff**0.5, total**0.5)
