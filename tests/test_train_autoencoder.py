"""train/autoencoder.py end to end: a short run, exact resume, two processes."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from grad_probe import install
from train_helpers import (
    PROBE,
    assert_same_gradients,
    checksums,
    launch_two_processes,
    perturb_checkpoint,
    record_steps,
)

import x2ct.train.autoencoder as autoencoder_script
from x2ct.autoencoder import CTAutoencoder
from x2ct.train.autoencoder import main
from x2ct.train.checkpoint import find_latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# 32^3 phantoms at 2 mm, full volumes (the PatchGAN needs >= 32 voxels), batch 2.
TINY = [
    "--config",
    "kl-tiny",
    "--n-train",
    "3",
    "--n-val",
    "1",
    "--shape",
    "32",
    "32",
    "32",
    "--crop",
    "0",
    "--batch-size",
    "2",
    "--lr",
    "1e-3",
    "--warmup",
    "2",
    "--val-every",
    "3",
    "--log-every",
    "1",
    "--scaling-volumes",
    "2",
    "--no-tensorboard",
    "--seed",
    "3",
]


@pytest.mark.slow
def test_short_run_writes_model_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    args = TINY + [
        "--max-steps",
        "6",
        "--save-every",
        "2",
        "--adv-weight",
        "0.1",
        "--adv-start",
        "3",
        "--edge-weight",
        "1.0",
    ]
    full = tmp_path / "full"
    main(args + ["--run-dir", str(full)])
    model = CTAutoencoder.from_pretrained(full / "model")
    assert model.config.scaling_factor != 1.0  # fitted
    assert find_latest_checkpoint(full / "checkpoints").name == "step_0000006"
    assert json.loads((full / "args.json").read_text())["max_steps"] == 6
    assert list((full / "figures").glob("val_step_*.png"))

    # Interrupted after 3 steps (the last checkpoint is step 2), then the same command again.
    part = tmp_path / "part"
    main(args + ["--run-dir", str(part), "--stop-after-steps", "3"])
    assert not (part / "model").exists()
    assert find_latest_checkpoint(part / "checkpoints").name == "step_0000002"
    # Training is deterministic: a rerun that ignored the checkpoint and began again at
    # step 0 would end with the same weights. It must say where it resumed and train only
    # the steps left.
    trained = record_steps(monkeypatch, autoencoder_script)
    capsys.readouterr()
    main(args + ["--run-dir", str(part)])
    resumed_from = part / "checkpoints" / "step_0000002"
    assert f"resumed from {resumed_from} at step 2" in capsys.readouterr().out
    assert trained == [(3, 1), (4, 2), (5, 3), (6, 4)]  # (step, steps this run)
    assert find_latest_checkpoint(part / "checkpoints").name == "step_0000006"
    # same weights (training model and EMA) as the uninterrupted run
    assert checksums(part) == checksums(full)
    resumed = CTAutoencoder.from_pretrained(part / "model")
    assert resumed.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)

    # What is resumed is the checkpoint's state: from a changed step-4 checkpoint the last
    # two steps end elsewhere.
    shutil.rmtree(part / "checkpoints" / "step_0000006")
    perturb_checkpoint(part / "checkpoints" / "step_0000004")
    trained.clear()
    main(args + ["--run-dir", str(part)])
    assert trained == [(5, 1), (6, 2)]
    changed = checksums(part)
    assert changed[0] != checksums(full)[0] and changed[1] != checksums(full)[1]


@pytest.mark.slow
def test_perceptual_weight_without_lpips_is_a_clear_error(tmp_path):
    from x2ct.autoencoder.losses import lpips_status

    if lpips_status()[0]:
        pytest.skip("lpips works here")
    with pytest.raises(RuntimeError, match="perceptual loss requested but unavailable"):
        main(
            TINY
            + ["--max-steps", "1", "--perceptual-weight", "0.1", "--run-dir", str(tmp_path / "r")]
        )


@pytest.mark.slow
def test_two_processes_train_one_model_with_the_gradient_of_twice_the_batch(
    tmp_path, monkeypatch
):
    """Two processes at batch 1 end with identical weights on both ranks, and step with the
    gradient one process computes at batch 2 over the same samples (tests/grad_probe.py
    explains why the gradient, not whole runs, and what it changes): a sum over ranks
    instead of a mean, or ranks drawing other samples than their half, fails."""
    args = TINY + ["--grad-clip", "0", "--n-val", "0", "--scaling-volumes", "1"]
    args += ["--batch-size", "1"]
    run, probe = tmp_path / "ddp", tmp_path / "ddp_grads"
    proc = launch_two_processes(
        [PROBE, "autoencoder", str(probe), *args, "--max-steps", "3", "--save-every", "2",
         "--run-dir", str(run)],
        port=29517,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = checksums(run, 0), checksums(run, 1)
    assert "processes=2" in r0 and "distributed_type=MULTI_CPU" in r0  # really one group
    assert r0 == r1  # training weights and EMA identical on both ranks
    assert (run / "model" / "model.safetensors").is_file()
    assert find_latest_checkpoint(run / "checkpoints").name == "step_0000003"

    one = tmp_path / "one_grads"
    one.mkdir()
    install("autoencoder", one, monkeypatch.setattr).main(
        args + ["--batch-size", "2", "--max-steps", "1", "--run-dir", str(tmp_path / "one")]
    )
    assert_same_gradients(probe, one)


@pytest.mark.slow
def test_trains_on_a_folder_of_cts(tmp_path, monkeypatch):
    from x2ct.data.phantom import main as write_phantoms

    monkeypatch.setenv("X2CT_CACHE_DIR", str(tmp_path / "cache"))
    write_phantoms(["--n", "10", "--out", str(tmp_path / "cts"), "--shape", "32"])
    run = tmp_path / "run"
    args = [a for a in TINY] + ["--data", str(tmp_path / "cts"), "--max-steps", "2"]
    main(args + ["--run-dir", str(run), "--save-every", "2"])
    model = CTAutoencoder.from_pretrained(run / "model")
    assert model.config.scaling_factor != 1.0
    assert find_latest_checkpoint(run / "checkpoints").name == "step_0000002"
