"""The deterministic baseline: --objective regression trains the same networks to predict
the latent in one pass, saved and loaded through the same Reconstructor API."""

import json

import pytest
import torch
from latent_helpers import one_thread, tiny_autoencoder, tiny_denoiser, train_args, xrays  # noqa: F401

from x2ct.cli import InputError
from x2ct.diffusion import (
    LatentDiffusionConfig,
    ProjectionGuidance,
    ProjectionLoss,
    Reconstructor,
    RegressionLoss,
)
from x2ct.train.latent import check_resume_args, main
from x2ct.train.run import RunDir


@pytest.fixture(scope="module")
def autoencoder_dir(tmp_path_factory):
    return tiny_autoencoder().save_pretrained(tmp_path_factory.mktemp("ae") / "ae")


def test_regression_loss_trains_every_network():
    net = tiny_denoiser(objective="regression").train()
    ae = tiny_autoencoder()
    c = net.config
    projection = ProjectionLoss(ae, c.geometry_obj, c.ct_shape, c.xray_scale, 1.0, "constant")
    loss_fn = RegressionLoss(c, projection)
    z0 = torch.randn(2, c.latent_channels, *c.latent_size)
    terms = loss_fn(net, z0, xrays(2))
    assert set(terms) == {"regression", "projection", "projection_l1"}
    loss_fn.total(terms).backward()
    for part in (net.encoder, net.unet):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    with pytest.raises(ValueError, match="regression"):
        RegressionLoss(tiny_denoiser().config)
    with pytest.raises(ValueError, match="objective"):
        LatentDiffusionConfig(objective="gan")


def test_regression_objective_trains_saves_loads_and_reconstructs(tmp_path, autoencoder_dir):
    run = tmp_path / "reg"
    main(
        train_args(
            run,
            autoencoder_dir,
            "--objective",
            "regression",
            "--max-steps",
            "2",
            "--save-every",
            "2",
            "--val-every",
            "2",
        )
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["objective"] == "regression" and metrics["step"] == 2
    assert set(metrics["val"]) == {"psnr", "ssim", "mae_hu", "projection_error"}
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["objective"] == "regression"
    recon = Reconstructor.from_pretrained(run / "model")
    x = xrays(1)
    a = recon(x, sampler="ddim", steps=2, generator=torch.Generator().manual_seed(0))
    b = recon(x, sampler="rflow", steps=7, generator=torch.Generator().manual_seed(5))
    assert a.hu.shape == (1, 1, 16, 16, 16)
    assert torch.equal(a.hu, b.hu)  # one deterministic pass: sampler and noise are unused
    many = recon(x, num_samples=2)
    assert float(many.std.abs().max()) == 0.0
    guided = recon(x, projection_guidance=ProjectionGuidance(strength=0.2, steps=1, inner=2))
    p = guided.projection
    assert float(p["final"][0, 0]) <= float(p["before"][0, 0])
    # measured as guidance measures it (without the residual's smooth background when the
    # model's X-rays cross the whole body, the training default)
    before = recon.projection_errors(a.hu, x, background=True)[0]
    assert float(p["before"][0, 0]) == pytest.approx(float(before))


def test_runs_started_before_the_flag_resume_and_others_are_refused(tmp_path):
    run = RunDir(tmp_path / "old")
    record = {"lr": 1e-3, "objective": "diffusion"}
    run.root.mkdir(parents=True, exist_ok=True)
    run.args_json.write_text(json.dumps({"lr": 1e-3}))  # written before --objective existed
    check_resume_args(run, record)  # the default: the same run
    with pytest.raises(InputError, match="objective"):
        check_resume_args(run, {**record, "objective": "regression"})
