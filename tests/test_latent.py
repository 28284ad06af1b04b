"""train/latent.py end to end on a tiny model: outputs, exact resume, two processes."""

import json

import numpy as np
import pytest
import torch
from latent_helpers import (  # noqa: F401
    CT_SHAPE,
    PYTHON,
    REPO,
    SPACING,
    one_thread,
    run_script,
    tiny_autoencoder,
    train_args,
)

from x2ct.cli import InputError
from x2ct.data import spine_centre, spine_phantom
from x2ct.diffusion import Reconstructor
from x2ct.train.checkpoint import find_latest_checkpoint
from x2ct.train.latent import main


def checksums(run, rank: int = 0) -> list[str]:
    return (run / f"weights_rank{rank}.sha256").read_text().split()


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    return tiny_autoencoder().save_pretrained(tmp_path_factory.mktemp("ae") / "ae")


@pytest.mark.slow
def test_training_writes_the_pipeline_and_resumes_exactly(tmp_path, autoencoder_dir):
    steps = ["--max-steps", "4", "--save-every", "2", "--val-every", "2"]
    full = tmp_path / "full"
    main(train_args(full, autoencoder_dir, *steps))
    assert find_latest_checkpoint(full / "checkpoints").name == "step_0000004"
    assert (full / "latent_cache.safetensors").is_file()
    assert sorted(p.name for p in (full / "figures").glob("val_step_*.png")) == [
        "val_step_0000002.png",
        "val_step_0000004.png",
    ]
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["step"] == 4
    assert set(metrics["val"]) == {"psnr", "ssim", "mae_hu", "projection_error"}
    recon = Reconstructor.from_pretrained(full / "model")
    assert recon.config.latent_size == (4, 4, 4) and recon.config.geometry_aware
    # where the training CTs' spines were: reconstruct.py --ct puts a new CT's there
    window = recon.autoencoder.config.hu_window
    centres = [spine_centre(np.clip(spine_phantom(CT_SHAPE, SPACING, seed=s).hu, *window))
               for s in range(4)]  # the four training phantoms (seeds 0-3, lumbar)
    assert recon.config.spine_position == pytest.approx(tuple(np.mean(centres, 0)), abs=1e-4)
    assert (full / "model" / "autoencoder" / "model.safetensors").is_file()
    out = recon(torch.rand(1, 2, *recon.config.xray_shape), steps=2)
    assert out.hu.shape == (1, 1, 16, 16, 16)

    # killed after 3 steps (last checkpoint: step 2), then the same command again
    part = tmp_path / "part"
    main(train_args(part, autoencoder_dir, *steps, "--stop-after-steps", "3"))
    assert not (part / "model").exists()
    assert find_latest_checkpoint(part / "checkpoints").name == "step_0000002"
    main(train_args(part, autoencoder_dir, *steps))
    assert checksums(part) == checksums(full)  # training weights and EMA
    a = Reconstructor.from_pretrained(part / "model").denoiser.state_dict()
    for k, v in recon.denoiser.state_dict().items():
        torch.testing.assert_close(a[k], v, rtol=0, atol=0, msg=k)


def test_run_folder_refuses_other_settings_and_ablation_switches(tmp_path, autoencoder_dir):
    with pytest.raises(InputError, match="no trained autoencoder"):
        main(train_args(tmp_path / "r", tmp_path / "missing_ae", "--max-steps", "1"))
    assert not (tmp_path / "r").exists()
    run = tmp_path / "run"
    args = train_args(
        run,
        autoencoder_dir,
        "--max-steps",
        "1",
        "--n-val",
        "0",
        "--no-geometry-aware",
        "--projection-weight",
        "0",
    )
    main(args)
    recon = Reconstructor.from_pretrained(run / "model")
    assert recon.config.geometry_aware is False and recon.config.projection_weight == 0.0
    assert recon.denoiser.backprojector is None
    with pytest.raises(InputError, match="batch-size"):
        main(
            train_args(
                run,
                autoencoder_dir,
                "--max-steps",
                "1",
                "--n-val",
                "0",
                "--no-geometry-aware",
                "--projection-weight",
                "0",
                "--batch-size",
                "3",
            )
        )


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tmp_path, autoencoder_dir):
    run = tmp_path / "ddp"
    proc = run_script(
        [
            PYTHON,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29533",
            str(REPO / "train" / "latent.py"),
            *train_args(run, autoencoder_dir, "--max-steps", "3", "--save-every", "2"),
        ]
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert checksums(run, 0) == checksums(run, 1)  # both ranks trained one model
    assert find_latest_checkpoint(run / "checkpoints").name == "step_0000003"
    assert (run / "model" / "model.safetensors").is_file()
