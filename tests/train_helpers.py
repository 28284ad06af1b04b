"""Helpers for the training-script tests (test_latent, test_train_autoencoder): weight
fingerprints, a record of the steps a run trained, and a deliberately changed checkpoint."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file


def checksums(run: Path, rank: int = 0) -> list[str]:
    """RUN/weights_rank<r>.sha256 (x2ct.train.loop.write_checksums): training weights, EMA
    weights and the process group."""
    return (Path(run) / f"weights_rank{rank}.sha256").read_text().split()


def record_steps(monkeypatch, module) -> list[tuple[int, int]]:
    """Wrap ``module.end_of_step`` (called once after every optimiser step of a training
    script) to record (step, steps_this_run): what a run trained, and where it started."""
    seen: list[tuple[int, int]] = []
    original = module.end_of_step

    def recording(accelerator, run, step, steps_this_run, args, bar):
        seen.append((step, steps_this_run))
        return original(accelerator, run, step, steps_this_run, args, bar)

    monkeypatch.setattr(module, "end_of_step", recording)
    return seen


def perturb_checkpoint(checkpoint: Path, delta: float = 1e-2) -> None:
    """Add ``delta`` to every floating-point weight of the model saved in an Accelerate
    checkpoint folder (model.safetensors): a run that really resumes from it ends with
    other weights than one that resumed from the untouched checkpoint."""
    files = sorted(Path(checkpoint).glob("model*.safetensors"))
    assert files, f"no model*.safetensors in {checkpoint}: {sorted(Path(checkpoint).iterdir())}"
    for path in files:
        state = load_file(str(path))
        changed = {k: v + delta if v.is_floating_point() else v for k, v in state.items()}
        save_file({k: v.contiguous() for k, v in changed.items()}, str(path), {"format": "pt"})
