"""train/latent.py end to end on a tiny model: outputs, exact resume, two processes."""

import json
import shutil

import pytest
import torch
from grad_probe import install
from latent_helpers import (  # noqa: F401 (one_thread: an autouse fixture)
    CT_SHAPE,
    SPACING,
    one_thread,
    tiny_autoencoder,
    train_args,
)
from safetensors.torch import load_file
from train_helpers import (
    PROBE,
    assert_same_gradients,
    checksums,
    launch_two_processes,
    perturb_checkpoint,
    record_steps,
)

import x2ct.train.latent as latent_script
from x2ct.cli import InputError
from x2ct.diffusion import Reconstructor
from x2ct.projector import AcquisitionRange
from x2ct.train.checkpoint import find_latest_checkpoint
from x2ct.train.gap import GAP_TIMESTEPS
from x2ct.train.latent import main


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    return tiny_autoencoder().save_pretrained(tmp_path_factory.mktemp("ae") / "ae")


@pytest.mark.slow
def test_training_writes_the_pipeline_and_resumes_exactly(
    tmp_path, autoencoder_dir, monkeypatch, capsys
):
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
    # the generalisation gap: diffusion losses on training and validation cases at fixed t
    gap = metrics["generalisation_gap"]
    assert set(gap) == {"training", "validation"}
    for losses in gap.values():
        assert list(losses) == [str(t) for t in GAP_TIMESTEPS]
        assert all(0 < v < float("inf") for v in losses.values())
    out = capsys.readouterr().out
    assert "diffusion loss at t = " in out
    # the last step fell on --val-every: validated once, not again for the metrics
    assert out.count("step 4: val psnr") == 1 and out.count("step 2: val psnr") == 1
    recon = Reconstructor.from_pretrained(full / "model")
    assert recon.config.latent_size == (4, 4, 4) and recon.config.geometry_aware
    # the recipe's defaults: ranked X-ray input, the acquisitions it was trained on, fields
    # centred on each case's spine (no fixed spine position)
    assert recon.config.xray_input == "rank" and recon.config.spine_position is None
    assert recon.config.acquisition_range == AcquisitionRange(
        (450.0, 1500.0), (1.1, 1.9), 3.0
    ).to_dict()
    # 4 whole-body phantoms x 2 random placements and acquisitions each
    cache = load_file(full / "latent_cache.safetensors")
    assert cache["latents"].shape[0] == 8 and cache["views"].shape == (8, 2, 15)
    assert len({tuple(v.flatten().tolist()) for v in cache["views"]}) == 8
    # the X-rays cross the whole body: more attenuation than the field alone
    assert bool((cache["drr"].mean((1, 2, 3)) > 1.2 * cache["drr_field"].mean((1, 2, 3))).all())
    assert (full / "model" / "autoencoder" / "model.safetensors").is_file()
    out = recon(torch.rand(1, 2, *recon.config.xray_shape), steps=2)
    assert out.hu.shape == (1, 1, 16, 16, 16)

    # killed after 3 steps (last checkpoint: step 2), then the same command again
    part = tmp_path / "part"
    main(train_args(part, autoencoder_dir, *steps, "--stop-after-steps", "3"))
    assert not (part / "model").exists()
    assert find_latest_checkpoint(part / "checkpoints").name == "step_0000002"
    # Training is deterministic, so a rerun that ignored the checkpoint and started again
    # from step 0 would end with the same weights: the rerun must say where it resumed and
    # train only the steps left.
    trained = record_steps(monkeypatch, latent_script)
    capsys.readouterr()
    main(train_args(part, autoencoder_dir, *steps))
    assert "resumed from step_0000002 at step 2" in capsys.readouterr().out
    assert trained == [(3, 1), (4, 2)]  # (step, steps this run)
    assert checksums(part) == checksums(full)  # training weights and EMA
    a = Reconstructor.from_pretrained(part / "model").denoiser.state_dict()
    for k, v in recon.denoiser.state_dict().items():
        torch.testing.assert_close(a[k], v, rtol=0, atol=0, msg=k)

    # and what is resumed is the checkpoint's state: from a changed step-2 checkpoint the
    # same two steps end elsewhere
    shutil.rmtree(part / "checkpoints" / "step_0000004")
    perturb_checkpoint(part / "checkpoints" / "step_0000002")
    trained.clear()
    main(train_args(part, autoencoder_dir, *steps))
    assert trained == [(3, 1), (4, 2)]
    changed = checksums(part)
    assert changed[0] != checksums(full)[0] and changed[1] != checksums(full)[1]


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
def test_two_processes_train_one_model_with_the_gradient_of_twice_the_batch(
    tmp_path, autoencoder_dir, monkeypatch
):
    """Two processes at batch 2 end with identical weights on both ranks, and step with the
    gradient one process computes at batch 4 over the same samples (tests/grad_probe.py
    explains why the gradient, not whole runs, and what it changes; every rendered sample
    enters the projection loss, so that it too is a mean over samples): a sum over ranks
    instead of a mean, or ranks drawing other samples than their half, fails. The two
    processes build the latent cache one case a part, dealt out in turn: it equals the
    cache one process builds in one part."""
    run, probe = tmp_path / "ddp", tmp_path / "ddp_grads"
    # radiograph styles are drawn per process and micro-batch: off, so the samples match
    extra = ["--grad-clip", "0", "--projection-samples", "0", "--xray-style", "0"]
    proc = launch_two_processes(
        [PROBE, "latent", str(probe),
         *train_args(run, autoencoder_dir, *extra, "--max-steps", "3", "--save-every", "2",
                     "--cache-chunk-size", "1")],
        port=29533,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = checksums(run, 0), checksums(run, 1)
    assert "processes=2" in r0 and "distributed_type=MULTI_CPU" in r0  # really one group
    assert r0 == r1  # both ranks trained one model
    assert find_latest_checkpoint(run / "checkpoints").name == "step_0000003"
    assert (run / "model" / "model.safetensors").is_file()

    one = tmp_path / "one_grads"
    one.mkdir()
    install("latent", one, monkeypatch.setattr).main(
        train_args(tmp_path / "one", autoencoder_dir, *extra, "--max-steps", "1",
                   "--batch-size", "4", "--n-val", "0")
    )
    assert_same_gradients(probe, one)
    shared, alone = (load_file(str(d / "latent_cache.safetensors"))
                     for d in (run, tmp_path / "one"))
    assert sorted(shared) == sorted(alone) and not (run / "latent_cache.parts").exists()
    for k, v in alone.items():
        torch.testing.assert_close(shared[k], v, msg=k)


def test_grad_accum_and_mixed_precision_change_the_step_as_documented(
    tmp_path, autoencoder_dir, monkeypatch, fresh_accelerator_state
):
    """--grad-accum 2 at batch 2 steps with the gradient of batch 4 over the same samples
    (train/sampling.py: micro-step k of a step takes the next batch); --mixed-precision
    bf16 steps with a gradient within 5% of float32's and not equal to it (0.4% on this
    CPU). Gradients as tests/grad_probe.py saves them, one step each."""
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    grads = tmp_path / "grads"
    grads.mkdir()
    script = install("latent", grads, monkeypatch.setattr)
    extra = ["--grad-clip", "0", "--projection-samples", "0", "--max-steps", "1", "--n-val", "0",
             "--xray-style", "0"]  # radiograph styles are drawn per micro-batch
    runs = {
        "batch4": ["--batch-size", "4"],
        "accum": ["--batch-size", "2", "--grad-accum", "2"],
        "bf16": ["--batch-size", "4", "--mixed-precision", "bf16"],
    }
    got = {}
    for name, flags in runs.items():
        AcceleratorState._reset_state(reset_partial_state=True)
        script.main(train_args(tmp_path / name, autoencoder_dir, *extra, *flags))
        saved = grads / "grad_rank0.safetensors"
        assert saved.is_file(), f"{name}: the optimiser never stepped"
        got[name] = load_file(str(saved.rename(grads / name)))
    ref = got["batch4"]
    scale = max(float(g.abs().max()) for g in ref.values())
    for k, g in ref.items():
        torch.testing.assert_close(got["accum"][k], g, rtol=1e-3, atol=1e-5 * scale, msg=k)
    bf16 = max(float((got["bf16"][k] - g).abs().max()) for k, g in ref.items()) / scale
    assert 1e-5 < bf16 < 5e-2, bf16


def test_init_from_starts_from_the_model_and_keeps_its_sampler_defaults(tmp_path,
                                                                         autoencoder_dir):
    """--init-from MODEL (fine-tuning): the run starts from MODEL's weights (one step at
    learning rate 0 leaves them as they were) and its saved model samples as MODEL did (the
    shipped ldm-tiny: 16 samples of DDIM 5, not the recipe's one sample of DDIM 50), but
    where --set says otherwise."""
    from safetensors.torch import load_file

    one_step = ["--max-steps", "1", "--n-val", "0"]
    with pytest.raises(InputError, match="--init-from"):  # before any case is made
        main(train_args(tmp_path / "bad", autoencoder_dir, *one_step, "--init-from",
                        str(tmp_path / "no-model")))
    assert not (tmp_path / "bad" / "latent_cache.safetensors").exists()
    main(train_args(tmp_path / "parent", autoencoder_dir, *one_step))
    parent = tmp_path / "parent" / "model"
    config = json.loads((parent / "config.json").read_text())
    assert (config["num_samples"], config["sampler_steps"]) == (1, 50)  # the recipe's
    config.update(num_samples=3, sampler_steps=7, guidance_scale=1.5)
    (parent / "config.json").write_text(json.dumps(config))
    # the first extra value joins train_args' trailing --set list
    main(train_args(tmp_path / "tuned", autoencoder_dir, "guidance_scale=1.0", *one_step,
                    "--lr", "0", "--warmup", "0", "--init-from", str(parent)))
    tuned = json.loads((tmp_path / "tuned" / "model" / "config.json").read_text())
    assert (tuned["num_samples"], tuned["sampler_steps"]) == (3, 7)
    assert tuned["guidance_scale"] == 1.0  # --set wins
    before, after = (load_file(str(d / "model.safetensors"))
                     for d in (parent, tmp_path / "tuned" / "model"))
    assert sorted(before) == sorted(after)
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, msg=k)


def test_bf16_on_a_cpu_turns_onednn_off_for_training_only(tmp_path, monkeypatch,
                                                         fresh_accelerator_state):
    """build_accelerator turns oneDNN off for bf16 on a CPU (its bf16 weight gradients can
    be NaN); sampling (validation, the closing comparison: no backward) turns it on for its
    duration, as it is 4-8 times faster; a run that did not turn it off leaves the user's
    setting alone."""
    from x2ct.train import run as run_module

    monkeypatch.setattr(run_module, "_ONEDNN_TURNED_OFF", False)
    torch.backends.mkldnn.enabled = False  # the user's own choice: kept
    with run_module.onednn_for_sampling():
        assert not torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = True
    run = run_module.RunDir(tmp_path / "run")
    accelerator = run_module.build_accelerator(run, seed=0, mixed_precision="bf16",
                                               log_with=None)
    try:
        assert accelerator.mixed_precision == "bf16" and not torch.backends.mkldnn.enabled
        with run_module.onednn_for_sampling():
            assert torch.backends.mkldnn.enabled
        assert not torch.backends.mkldnn.enabled  # training goes on without it
    finally:
        run_module.unlock_run_dir(run)


def test_regions_and_placement_reach_the_training_cases(tmp_path, autoencoder_dir):
    """--regions lumbar thoracic draws seed s in region s % 2; with --placement 0 0 0 and
    one fixed acquisition the cached X-rays are exactly the centred whole-body cases of
    those phantoms (x2ct.data.phantom_case), and the default placement moves them."""
    from x2ct.data import default_geometry, phantom_case

    geometry = default_geometry(CT_SHAPE, SPACING)
    m = geometry.magnification
    fixed = ["--sad-range", str(geometry.sad), str(geometry.sad), "--magnification-range",
             str(m), str(m), "--angle-jitter", "0", "--xray-style", "0", "--placements", "1"]
    common = ["--max-steps", "1", "--n-val", "0", "--regions", "lumbar", "thoracic", *fixed]
    main(train_args(tmp_path / "centred", autoencoder_dir, *common, "--placement", "0", "0", "0"))
    main(train_args(tmp_path / "moved", autoencoder_dir, *common))
    centred = load_file(tmp_path / "centred" / "latent_cache.safetensors")["drr"]
    moved = load_file(tmp_path / "moved" / "latent_cache.safetensors")["drr"]
    regions = ["lumbar", "thoracic"]
    for s in range(4):
        case = phantom_case(s, regions[s % 2], CT_SHAPE, SPACING, geometry)
        torch.testing.assert_close(centred[s], case.drr, rtol=1e-4, atol=1e-4)
        assert float((moved[s] - case.drr).abs().max()) > 0.05


def test_max_minutes_stops_the_run_and_zero_means_no_limit(tmp_path, autoencoder_dir,
                                                           monkeypatch):
    """A budget spent before the first step trains nothing, yet saves the model; 0 (as in
    every other test here) trains all --max-steps."""
    trained = record_steps(monkeypatch, latent_script)
    args = ["--n-val", "0", "--max-steps", "2"]
    main(train_args(tmp_path / "spent", autoencoder_dir, *args, "--max-minutes", "1e-9"))
    assert trained == []
    assert json.loads((tmp_path / "spent" / "metrics.json").read_text())["step"] == 0
    assert (tmp_path / "spent" / "model" / "model.safetensors").is_file()
    main(train_args(tmp_path / "open", autoencoder_dir, *args, "--max-minutes", "0"))
    assert trained == [(1, 1), (2, 2)]
