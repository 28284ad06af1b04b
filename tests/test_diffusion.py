"""x2ct.diffusion: config, X-ray encoder, back-projected conditioning, denoiser, attention
backends, samplers, losses and the Reconstructor pipeline (tiny models, CPU)."""

import json
import logging
import math
import types

import pytest
import torch
from latent_helpers import (  # noqa: F401 (one_thread: an autouse fixture)
    CT_SHAPE,
    SPACING,
    one_thread,
    tiny_autoencoder,
    tiny_config,
    tiny_denoiser,
    tiny_reconstructor,
    xrays,
)

from x2ct.diffusion import (
    LATENT_DIFFUSION_CONFIGS,
    DiffusionLoss,
    LatentDiffusionConfig,
    NoiseSchedule,
    ProjectionLoss,
    Reconstructor,
    get_config,
)
from x2ct.diffusion import attention as attn
from x2ct.diffusion.backprojection import FeatureBackprojector, rescale_geometry
from x2ct.diffusion.samplers import SAMPLERS, ddim_timesteps, sample
from x2ct.diffusion.unet import build_unet
from x2ct.projector import Geometry

# --------------------------------------------------------------------------- config


def test_config_json_roundtrip_registry_and_derived_sizes():
    for name in LATENT_DIFFUSION_CONFIGS:
        c = get_config(name)
        assert LatentDiffusionConfig.from_json(c.to_json()) == c
    c = tiny_config()
    assert c.latent_spacing == tuple(4 * s for s in SPACING)
    assert c.ct_shape == CT_SHAPE
    assert c.unet_in_channels == 4 + 2 * 4  # latent + two views of back-projected features
    assert tiny_config(geometry_aware=False).unet_in_channels == 4
    with pytest.raises(ValueError, match="unknown"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown"):
        LatentDiffusionConfig.from_dict({"colour": 1})


@pytest.mark.parametrize(
    "bad",
    [
        dict(attention_levels=(True,)),
        dict(unet_channels=(8, 12)),  # not divisible by norm groups
        dict(latent_size=(5, 4, 4)),  # not divisible by the UNet's downsampling
        dict(encoder_channels=(8, 16, 16, 16, 16)),  # 16 px detector / 32
        dict(prediction_type="score"),
        dict(beta_schedule="quadratic"),
        dict(cond_drop_prob=1.0),
        dict(projection_weighting="sigma"),
        dict(sampler="euler"),
        dict(sampler_steps=0),
        dict(geometry={"sad": 100.0, "sdd": 50.0}),  # invalid Geometry
    ],
)
def test_bad_config_raises(bad):
    with pytest.raises(ValueError):
        tiny_config(**bad)


# --------------------------------------------------------------------------- conditioning


def test_encoder_and_denoiser_shapes():
    d = tiny_denoiser()
    x = xrays(3)
    cond = d.condition(x)
    assert cond.context.shape == (3, 2 * 2 * 2, 16)  # 2 views x 2^2 tokens, context_dim 16
    assert cond.features.shape == (3, 2 * 4, 4, 4, 4)
    z = torch.randn(3, 4, 4, 4, 4)
    out = d(z, torch.tensor([0, 10, 999]), x)
    assert out.shape == z.shape
    with pytest.raises(ValueError, match="X-rays of shape"):
        d.condition(xrays(1, shape=(20, 20)))
    with pytest.raises(ValueError, match="latents"):
        d(torch.randn(1, 4, 8, 8, 8), torch.tensor([0]), xrays(1))
    no_bp = tiny_denoiser(geometry_aware=False)
    assert no_bp.backprojector is None and no_bp.condition(x).features is None
    assert no_bp(z, torch.tensor([0, 1, 2]), x).shape == z.shape


def test_backprojected_features_follow_the_rays():
    """Parallel beam, detector extent = volume extent: one lit column of the AP feature map
    lights exactly the voxels at the matching X (column 0 is the patient's right, +X) through
    all Y; a lit lateral column lights one Y (column 0 anterior, +Y) through all X; a lit row
    lights one Z (row 0 superior)."""
    n, s = 8, 4.0
    geometry = Geometry(
        sad=1000.0,
        sdd=1500.0,
        detector_shape=(16, 16),
        pixel_spacing=(n * s / 16, n * s / 16),
        parallel=True,
    )
    bp = FeatureBackprojector(geometry, (n, n), (n, n, n), (s, s, s))
    assert bp.views[0].pixel_spacing == (s, s) and bp.views[0].angles == (0.0,)
    feats = torch.zeros(1, 2, 1, n, n)  # (B, V, K, h, w)
    feats[0, 0, 0, :, 2] = 1.0  # AP column 2
    feats[0, 1, 0, 5, :] = 1.0  # lateral row 5
    vol = bp(feats)  # (1, 2, X, Y, Z)
    ap, lat = vol[0, 0], vol[0, 1]
    expected_ap = torch.zeros(n, n, n)
    expected_ap[n - 1 - 2] = 1.0  # x index X-1-j, every y and z
    torch.testing.assert_close(ap, expected_ap, atol=1e-4, rtol=0)
    expected_lat = torch.zeros(n, n, n)
    expected_lat[:, :, n - 1 - 5] = 1.0  # z index Z-1-i, every x and y
    torch.testing.assert_close(lat, expected_lat, atol=1e-4, rtol=0)
    feats = torch.zeros(1, 2, 1, n, n)
    feats[0, 1, 0, :, 1] = 3.0  # lateral column 1 -> y index Y-1-1, every x
    lat = bp(feats)[0, 1]
    assert torch.allclose(lat[:, n - 2, :], torch.full((n, n), 3.0), atol=1e-4)
    assert float(lat.sum()) == pytest.approx(3.0 * n * n, rel=1e-4)


def test_rescale_geometry_keeps_the_detector_extent():
    g = Geometry(detector_shape=(64, 48), pixel_spacing=(1.5, 2.0))
    r = rescale_geometry(g, (16, 12))
    assert r.detector_shape == (16, 12)
    assert r.pixel_spacing == (6.0, 8.0)
    assert (r.sad, r.sdd, r.angles) == (g.sad, g.sdd, g.angles)


def test_dropped_condition_is_the_null_condition():
    d = tiny_denoiser()
    x = xrays(2)
    full = d.condition(x)
    dropped = d.condition(x, drop=torch.tensor([True, False]))
    torch.testing.assert_close(dropped.context[0], d.null_context)
    assert torch.count_nonzero(dropped.features[0]) == 0
    torch.testing.assert_close(dropped.context[1], full.context[1])
    torch.testing.assert_close(dropped.features[1], full.features[1])
    null = d.null_condition(2)
    torch.testing.assert_close(null.context[1], d.null_context)


def test_guidance_changes_the_output():
    torch.manual_seed(0)
    d = tiny_denoiser()
    with torch.no_grad():  # make the null context clearly unlike the X-ray tokens
        d.null_context.add_(torch.randn_like(d.null_context))
    cond = d.condition(xrays(2))
    z, t = torch.randn(2, 4, 4, 4, 4), torch.tensor([500, 500])
    with torch.no_grad():
        out_c = d.guided(cond, 1.0)(z, t)
        out_u = d.guided(cond, 0.0)(z, t)
        out_g = d.guided(cond, 3.0)(z, t)
        torch.testing.assert_close(out_c, d(z, t, cond=cond))
        torch.testing.assert_close(out_u, d(z, t, cond=d.null_condition(2)))
    assert (out_c - out_u).abs().max() > 1e-4
    torch.testing.assert_close(out_g, out_u + 3.0 * (out_c - out_u), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- attention


def test_attention_backend_sdpa_matches_monai_and_is_logged(caplog):
    torch.manual_seed(0)
    config = tiny_config()
    unet = build_unet(config)
    x = torch.randn(2, config.unet_in_channels, 4, 4, 4)
    t, ctx = torch.tensor([1, 700]), torch.randn(2, 8, 16)
    attn._announced.clear()
    with caplog.at_level(logging.INFO, logger="x2ct.diffusion"), torch.no_grad():
        ours = unet(x, t, ctx)
    assert "attention runs torch scaled_dot_product_attention on cpu" in caplog.text
    for m in unet.modules():  # back to MONAI's own forward (SDPA inside MONAI)
        m.__dict__.pop("forward", None)
    with torch.no_grad():
        monai = unet(x, t, ctx)
    torch.testing.assert_close(ours, monai, atol=1e-5, rtol=1e-4)


def test_xformers_path_is_taken_when_the_predicate_holds(monkeypatch, caplog):
    calls = []

    def memory_efficient_attention(q, k, v, p=0.0, scale=None):  # (B, L, heads, d)
        calls.append(q.shape)
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
        )
        return out.transpose(1, 2)

    fake = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)
    torch.manual_seed(0)
    config = tiny_config()
    unet = build_unet(config)
    x = torch.randn(1, config.unet_in_channels, 4, 4, 4)
    t, ctx = torch.tensor([3]), torch.randn(1, 8, 16)
    with torch.no_grad():
        reference = unet(x, t, ctx)
    monkeypatch.setattr(attn, "xformers_ops", lambda: fake)
    monkeypatch.setattr(attn, "use_xformers", lambda q: True)
    attn._announced.clear()
    with caplog.at_level(logging.INFO, logger="x2ct.diffusion"), torch.no_grad():
        out = unet(x, t, ctx)
    assert calls, "xformers was not called"
    assert "xformers memory_efficient_attention" in caplog.text
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)


def test_use_xformers_predicate(monkeypatch):
    cuda_like = types.SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(attn, "xformers_ops", lambda: None)
    assert not attn.use_xformers(cuda_like)  # not installed
    monkeypatch.setattr(attn, "xformers_ops", lambda: object())
    assert attn.use_xformers(cuda_like)
    assert not attn.use_xformers(torch.zeros(1))  # a CPU tensor
    monkeypatch.setenv(attn.ATTENTION_ENV, "sdpa")
    assert not attn.use_xformers(cuda_like)  # forced off


# --------------------------------------------------------------------------- samplers


def gaussian_oracle(schedule: NoiseSchedule, sigma_data: float):
    """The exact denoiser of x0 ~ N(0, sigma_data^2 I), in the schedule's parameterisation."""

    def model_fn(x_t, t):
        ab = schedule.alpha_bar(t).to(x_t.dtype).reshape(-1, *[1] * (x_t.ndim - 1))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = a * sigma_data**2 / (ab * sigma_data**2 + (1 - ab)) * x_t
        eps = (x_t - a * x0) / s
        return schedule.target(x0, eps, t)

    return model_fn


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_samplers_draw_the_data_distribution(name, prediction_type):
    """With the exact denoiser of N(0, 2^2), every sampler returns samples of std 2: this
    fails if x0 is clipped to [-1, 1] (MONAI's default) or the chain does not start from
    pure noise."""
    schedule = NoiseSchedule(tiny_config(prediction_type=prediction_type))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(256, 1, 4, 4, 4, generator=g)
    out = sample(name, gaussian_oracle(schedule, 2.0), noise, schedule, 50, generator=g)
    assert out.shape == noise.shape
    assert abs(float(out.mean())) < 0.1
    assert float(out.std()) == pytest.approx(2.0, rel=0.06)


def test_ddim_timesteps_start_at_the_last_training_step():
    ts = ddim_timesteps(10, 1000)
    assert ts[0] == 999 and ts[-1] == 99 and torch.all(ts[:-1] - ts[1:] == 100)
    assert ddim_timesteps(30, 1000)[0] == 999
    with pytest.raises(ValueError, match="sampler must be"):
        sample("euler", lambda x, t: x, torch.zeros(1), NoiseSchedule(tiny_config()), 5)
    with pytest.raises(ValueError, match="steps"):
        sample("ddim", lambda x, t: x, torch.zeros(1), NoiseSchedule(tiny_config()), 0)


def test_schedule_algebra_roundtrips():
    for p in ("v_prediction", "epsilon", "sample"):
        s = NoiseSchedule(tiny_config(prediction_type=p))
        x0, eps = torch.randn(3, 2, 2, 2, 2), torch.randn(3, 2, 2, 2, 2)
        t = torch.tensor([0, 400, 999])
        x_t = s.add_noise(x0, eps, t)
        x0_b, eps_b = s.to_x0_eps(x_t, s.target(x0, eps, t), t)
        torch.testing.assert_close(x0_b, x0, atol=2e-3, rtol=1e-3)
        torch.testing.assert_close(eps_b, eps, atol=2e-3, rtol=1e-3)
    s = NoiseSchedule(tiny_config())
    torch.testing.assert_close(s.alpha_bar(torch.arange(1000)), s.alphas_cumprod.float())
    t = torch.tensor([3.0, 250.5, 998.0], dtype=torch.float64)
    torch.testing.assert_close(
        s.timestep_for_alpha_bar(s.alpha_bar(t).double()), t, atol=1e-3, rtol=0
    )


# --------------------------------------------------------------------------- losses


def test_projection_loss_gradient_reaches_denoiser_and_encoder():
    d = tiny_denoiser(projection_weight=1.0, projection_weighting="constant", cond_drop_prob=0.0)
    ae = tiny_autoencoder().requires_grad_(False)
    c = d.config
    projection = ProjectionLoss(
        ae, c.geometry_obj, c.ct_shape, c.xray_scale, c.projection_step, c.projection_weighting
    )
    torch.manual_seed(0)
    terms = DiffusionLoss(c, projection)(d.train(), torch.randn(2, 4, 4, 4, 4), xrays(2))
    assert set(terms) == {"diffusion", "projection", "projection_l1"}
    terms["projection"].backward()
    grad = lambda m: sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)
    assert grad(d.unet) > 0
    assert grad(d.encoder.stages) > 0  # through cross-attention and back-projection
    assert grad(d.encoder.to_backproject) > 0
    assert all(p.grad is None for p in ae.parameters())  # the autoencoder stays frozen


def test_projection_loss_renders_the_most_heavily_weighted_samples(monkeypatch):
    d = tiny_denoiser(projection_weight=1.0, cond_drop_prob=0.0)
    c, seen = d.config, []

    class Recorder:
        weighting = "alpha_bar"

        def __call__(self, z0, x, alpha_bar, views=None):
            seen.append((x, alpha_bar))
            return z0.sum() * 0, torch.zeros(len(x))

    loss_fn = DiffusionLoss(c, Recorder(), projection_samples=1)
    monkeypatch.setattr(
        loss_fn.schedule, "sample_timesteps", lambda b, device=None: torch.tensor([900, 10, 500])
    )
    x = xrays(3)
    loss_fn(d, torch.randn(3, 4, 4, 4, 4), x)
    ((rendered, ab),) = seen
    torch.testing.assert_close(rendered, x[1:2])  # t = 10: the largest alpha_bar
    torch.testing.assert_close(ab, loss_fn.schedule.alpha_bar(torch.tensor([10])))


def test_projection_loss_can_be_switched_off_and_weights_timesteps():
    c = tiny_config(projection_weight=0.0)
    torch.manual_seed(0)
    terms = DiffusionLoss(c, None)(
        tiny_denoiser(projection_weight=0.0).train(), torch.randn(2, 4, 4, 4, 4), xrays(2)
    )
    assert set(terms) == {"diffusion"}
    from x2ct.diffusion.projection_loss import timestep_weight

    ab = torch.tensor([0.01, 0.5, 0.99])
    torch.testing.assert_close(timestep_weight(ab, "alpha_bar"), ab)
    assert torch.all(timestep_weight(ab, "snr").diff() > 0)
    torch.testing.assert_close(timestep_weight(ab, "constant"), torch.ones(3))


def test_tiny_model_overfits_one_case():
    """Fixed (t, noise) probes: the diffusion loss on one case falls by a clear factor."""
    torch.manual_seed(0)
    d = tiny_denoiser(cond_drop_prob=0.0, projection_weight=0.0).train()
    loss_fn = DiffusionLoss(d.config)
    z0 = torch.randn(1, 4, 4, 4, 4).repeat(8, 1, 1, 1, 1)
    x = xrays(1).repeat(8, 1, 1, 1)

    def probe() -> float:
        state = torch.get_rng_state()
        torch.manual_seed(123)
        with torch.no_grad():
            v = float(loss_fn(d, z0, x)["diffusion"])
        torch.set_rng_state(state)
        return v

    before = probe()
    opt = torch.optim.Adam(d.parameters(), lr=3e-3)
    for _ in range(160):
        loss = loss_fn(d, z0, x)["diffusion"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = probe()
    assert after < before / 4, (before, after)


# --------------------------------------------------------------------------- pipeline


def test_reconstructor_shapes_uncertainty_and_repeatability():
    recon = tiny_reconstructor()
    x = xrays(2)
    g = lambda s: torch.Generator().manual_seed(s)
    out = recon(x, steps=3, generator=g(0))
    assert out.hu.shape == (2, 1, *CT_SHAPE) and out.std is None
    assert out.latent.shape == (2, 1, 4, 4, 4, 4)
    lo, hi = recon.autoencoder.config.hu_window
    assert float(out.hu.min()) >= lo and float(out.hu.max()) <= hi
    timings = {}
    again = recon(x, steps=3, generator=g(0), timings=timings)  # timed: the same result
    torch.testing.assert_close(again.hu, out.hu, rtol=0, atol=0)
    assert set(timings) == {"encode", "sample", "decode"} and min(timings.values()) >= 0
    other = recon(x, steps=3, generator=g(1))
    assert not torch.equal(other.latent, out.latent)
    many = recon(x, sampler="ddpm", steps=3, num_samples=3, generator=g(0), batch_size=4)
    assert many.hu.shape == (2, 1, *CT_SHAPE) and many.std.shape == (2, 1, *CT_SHAPE)
    assert many.latent.shape == (2, 3, 4, 4, 4, 4)
    assert float(many.std.mean()) > 0
    assert torch.isfinite(many.hu).all()
    rf = recon(x, sampler="rflow", steps=3, generator=g(0))
    assert torch.isfinite(rf.hu).all()
    with pytest.raises(ValueError, match="sampler"):
        recon(x, sampler="euler")


def test_the_config_sets_how_many_samples_a_reconstruction_averages():
    recon = tiny_reconstructor()
    x = xrays(2)
    g = lambda s: torch.Generator().manual_seed(s)
    asked = recon(x, sampler="ddpm", steps=2, num_samples=3, generator=g(0))
    recon.config.num_samples = 3
    default = recon(x, sampler="ddpm", steps=2, generator=g(0))
    assert default.latent.shape == asked.latent.shape == (2, 3, 4, 4, 4, 4)
    torch.testing.assert_close(default.hu, asked.hu, rtol=0, atol=0)
    torch.testing.assert_close(default.std, asked.std, rtol=0, atol=0)
    one = recon(x, sampler="ddpm", steps=2, num_samples=1, generator=g(0))  # a call wins
    assert one.latent.shape[1] == 1 and one.std is None
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="num_samples"):
            LatentDiffusionConfig(num_samples=bad)


def test_sampling_settings_take_each_given_value_else_the_configs():
    recon = tiny_reconstructor()
    c = recon.config
    c.sampler, c.sampler_steps, c.guidance_scale, c.num_samples = "ddpm", 7, 1.5, 2
    assert recon.sampling_settings() == {"sampler": "ddpm", "steps": 7,
                                         "guidance_scale": 1.5, "num_samples": 2}
    assert recon.sampling_settings("ddim", 3, 1.0, 5) == {"sampler": "ddim", "steps": 3,
                                                          "guidance_scale": 1.0,
                                                          "num_samples": 5}
    assert recon.sampling_settings(steps=4)["sampler"] == "ddpm"
    with pytest.raises(ValueError, match="sampler"):
        recon.sampling_settings("euler")
    with pytest.raises(ValueError, match="num_samples"):
        recon.sampling_settings(num_samples=0)


def sample_directly(recon, x, name: str, steps: int, seed: int, model_fn=None):
    """What ``recon(x, sampler=name, steps=steps, generator=seed)`` should return as its
    latent (B, C, x, y, z), from the public pieces: the starting noise drawn first from
    the generator, then ``samplers.sample`` called directly with the same generator (ddpm
    draws its per-step noise from it) on ``model_fn`` (default: the conditional model)."""
    d, c = recon.denoiser, recon.config
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape[0], c.latent_channels, *c.latent_size, generator=g)
    if model_fn is None:
        cond = d.condition(x)
        model_fn = lambda x_t, t: d(x_t, t, cond=cond)
    with torch.no_grad():
        return sample(name, model_fn, noise, d.schedule, steps, generator=g)


def test_reconstructor_runs_the_sampler_it_is_asked_for():
    """With the same noise the three samplers end in different latents, and each is the
    one ``samplers.sample`` gives when called directly (a pipeline that always ran DDIM,
    or a dispatch that ignored the name, fails here)."""
    recon = tiny_reconstructor()
    x = xrays(2)
    latents = {}
    for name in sorted(SAMPLERS):
        out = recon(x, sampler=name, steps=3, generator=torch.Generator().manual_seed(4))
        latents[name] = out.latent[:, 0]
        direct = sample_directly(recon, x, name, 3, seed=4)
        torch.testing.assert_close(latents[name], direct, rtol=1e-5, atol=1e-6, msg=name)
    names = sorted(latents)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            gap = float((latents[a] - latents[b]).abs().max())
            assert gap > 1e-2, (a, b, gap)


def test_reconstructor_applies_classifier_free_guidance():
    """guidance_scale s reaches the sampler: s = 3 gives the latent of the guided mix
    out_null + 3 (out_cond - out_null), computed here from two plain network calls, and
    differs from s = 1 (the conditional model alone)."""
    recon = tiny_reconstructor()
    d = recon.denoiser
    with torch.no_grad():  # a null context clearly unlike the X-ray tokens
        d.null_context.add_(torch.randn(d.null_context.shape, generator=torch.Generator()))
    x = xrays(2)
    g = lambda: torch.Generator().manual_seed(6)
    plain = recon(x, steps=3, generator=g(), guidance_scale=1.0).latent[:, 0]
    guided = recon(x, steps=3, generator=g(), guidance_scale=3.0).latent[:, 0]
    cond, null = d.condition(x), d.null_condition(x.shape[0])

    def by_hand(x_t, t):
        out_c, out_u = d(x_t, t, cond=cond), d(x_t, t, cond=null)
        return out_u + 3.0 * (out_c - out_u)

    torch.testing.assert_close(
        guided, sample_directly(recon, x, "ddim", 3, seed=6, model_fn=by_hand),
        rtol=1e-4, atol=1e-5,
    )
    torch.testing.assert_close(plain, sample_directly(recon, x, "ddim", 3, seed=6))
    assert float((guided - plain).abs().max()) > 1e-2


def test_reconstructor_refuses_other_geometry_and_shapes():
    recon = tiny_reconstructor()
    x = xrays(1)
    other = Geometry(detector_shape=(16, 16), pixel_spacing=(9.0, 9.0))
    with pytest.raises(ValueError, match="allow_geometry_mismatch"):
        recon(x, steps=2, geometry=other)
    out = recon(x, steps=2, geometry=other, allow_geometry_mismatch=True)
    assert out.hu.shape == (1, 1, *CT_SHAPE)
    recon(x, steps=2, geometry=recon.geometry.to_dict())  # the model's own: fine
    with pytest.raises(ValueError, match="expected X-rays"):
        recon(xrays(1, shape=(20, 20)), steps=2)


def test_save_load_roundtrip_gives_identical_samples(tmp_path):
    recon = tiny_reconstructor()
    path = recon.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == [
        "autoencoder",
        "config.json",
        "model.safetensors",
    ]
    assert json.loads((path / "config.json").read_text())["geometry_aware"] is True
    loaded = Reconstructor.from_pretrained(path)
    assert loaded.config == recon.config
    assert loaded.autoencoder.config == recon.autoencoder.config
    x = xrays(1)
    a = recon(x, steps=3, generator=torch.Generator().manual_seed(5), guidance_scale=2.0)
    b = loaded(x, steps=3, generator=torch.Generator().manual_seed(5), guidance_scale=2.0)
    torch.testing.assert_close(a.hu, b.hu, rtol=0, atol=0)
    recon.save_pretrained(path)  # over an existing folder: replaced whole, no leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        Reconstructor.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        Reconstructor.from_pretrained(tmp_path / "missing")


def test_simulated_xrays_match_the_datasets():
    from x2ct.data import PhantomDataset, unit_to_hu

    recon = tiny_reconstructor()
    ds = PhantomDataset(1, seed=3, shape=CT_SHAPE, spacing=SPACING, geometry=recon.geometry)
    item = ds[0]
    sim = recon.simulate_xrays(unit_to_hu(item["ct"])[None])
    # the field's own DRRs (what the projection loss compares against); the dataset's
    # X-rays pass through the whole body around the field and are darker
    field = item["drr_field"] / ds.xray_scale
    torch.testing.assert_close(sim[0], field, atol=1e-5, rtol=1e-4)
    assert (item["xrays"] - field).mean() > 0
    assert math.isclose(recon.config.xray_scale, ds.xray_scale)
