"""The 1 mm "base" recipe: its configs, activation checkpointing (same numbers, less kept),
the memory-mapped latent cache and two training steps of the base networks on the CPU."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from latent_helpers import TINY, one_thread, tiny_config  # noqa: F401 (one_thread: autouse)

from x2ct.autoencoder import AutoencoderConfig, CTAutoencoder
from x2ct.autoencoder import get_config as get_ae_config
from x2ct.checkpointing import is_checkpointed
from x2ct.data import default_geometry
from x2ct.diffusion import LatentDenoiser, get_config

# --------------------------------------------------------------------------- configs


def base_1mm_config(detector: int = 128):
    """The base denoiser for a 128^3 field at 1 mm (the kl-base-1mm latent)."""
    ae = get_ae_config("kl-base-1mm")
    shape = (128, 128, 128)
    return get_config(
        "base", latent_channels=ae.latent_channels,
        latent_size=tuple(n // ae.downsample_factor for n in shape), ct_spacing=ae.spacing,
        downsample_factor=ae.downsample_factor,
        geometry=default_geometry(shape, ae.spacing, (detector, detector)).to_dict(),
    )


def test_kl_base_1mm_is_a_1mm_field_of_128_voxels_with_a_32_cubed_latent():
    ae = get_ae_config("kl-base-1mm")
    assert ae.spacing == (1.0, 1.0, 1.0) and ae.kind == "kl"
    assert ae.downsample_factor == 4 and ae.gradient_checkpointing
    assert not any(ae.attention_levels) and not ae.with_nonlocal_attn  # crops == fields
    # a 128^3 field is decoded whole; a larger CT in tiles
    assert ae.tile_threshold == 128**3 and ae.tile_size == 128
    assert AutoencoderConfig.from_json(ae.to_json()) == ae
    net = CTAutoencoder(ae).net
    # block by block (MONAI's use_checkpoint would recompute the whole decoder at once)
    assert not net.use_checkpoint
    blocks = [type(b).__mro__[2].__name__ for b in net.decoder.blocks if is_checkpointed(b)]
    assert blocks.count("AEKLResBlock") == 6 and blocks.count("UpSample") == 2


@pytest.mark.parametrize("detector", [128, 256])
def test_base_config_fits_the_1mm_latent_and_both_detectors(detector):
    c = base_1mm_config(detector)
    assert c.latent_size == (32, 32, 32) and c.ct_shape == (128, 128, 128)
    assert c.latent_spacing == (4.0, 4.0, 4.0)
    assert c.xray_shape == (detector, detector)
    # attention only where the latent is 8^3 and 4^3: no 32^3 or 16^3 attention matrix
    sizes = [32 // 2**i for i in range(len(c.unet_channels))]
    assert [s for s, a in zip(sizes, c.attention_levels) if a] == [8, 4]
    assert c.gradient_checkpointing
    assert type(c).from_json(c.to_json()) == c


@pytest.mark.parametrize(
    "bad",
    [
        dict(kind="vq", channels=(32, 64), gradient_checkpointing=True),  # MONAI VQVAE: none
        dict(spacing=(1.0, 1.0, 0.01)),  # below the smallest voxel accepted
    ],
)
def test_bad_1mm_autoencoder_configs_raise(bad):
    with pytest.raises(ValueError):
        get_ae_config("kl-base-1mm", **bad)


def test_base_config_refuses_a_latent_its_four_levels_cannot_halve():
    with pytest.raises(ValueError, match="divisible by 2\\^3"):
        base_1mm_config().replace(latent_size=(36, 36, 36))
    with pytest.raises(ValueError):  # a bool field given a string (config.json typo)
        type(base_1mm_config()).from_dict({**base_1mm_config().to_dict(),
                                           "gradient_checkpointing": "yes"})


# --------------------------------------------------------------------------- checkpointing


def _count_calls(modules) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    for m in modules:
        m.register_forward_hook(hook)
    return calls


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_unet_checkpointing_gives_the_same_loss_and_gradients_and_recomputes():
    """The checkpointed denoiser (same weights) has the same output and gradients as the
    plain one (the oracle), the same parameter names, and its blocks' inner modules run
    again in the backward pass (that is what checkpointing is)."""
    torch.manual_seed(0)
    plain = LatentDenoiser(tiny_config()).train()
    with torch.no_grad():  # MONAI zero-initialises output convolutions: make them count
        for p in plain.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.1)
    ckpt = LatentDenoiser(tiny_config(gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    blocks = [*ckpt.unet.down_blocks, ckpt.unet.middle_block, *ckpt.unet.up_blocks]
    assert all(is_checkpointed(b) for b in blocks)
    assert not any(is_checkpointed(b) for b in plain.unet.down_blocks)

    g = torch.Generator().manual_seed(1)
    c = plain.config
    x = torch.randn(2, c.latent_channels, *c.latent_size, generator=g)
    xr = torch.rand(2, c.num_views, *c.xray_shape, generator=g)
    t = torch.tensor([10, 500])
    inner = [m for b in blocks for m in b.modules() if type(m).__name__.endswith("ResnetBlock")]
    assert len(inner) >= len(blocks)
    calls = _count_calls(inner)
    outs = []
    for model in (plain, ckpt):
        before = calls[0]
        out = model(x, t, xr)
        model(x, t, xr).square().mean().backward()
        outs.append((out.detach(), _grads(model), calls[0] - before))
    (o1, g1, _), (o2, g2, n2) = outs
    torch.testing.assert_close(o2, o1, rtol=0, atol=0)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-5, atol=1e-6, msg=k)
    # two forward passes, then the backward pass recomputes (non-reentrant checkpointing
    # stops a block's recompute early once what the backward pass needs is back)
    assert 2 * len(inner) + len(blocks) // 2 <= n2 <= 3 * len(inner)
    # at inference (no gradients) nothing is recomputed, and the output is the same
    ckpt.eval()
    before = calls[0]
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x, t, xr), plain.eval()(x, t, xr), rtol=0, atol=0)
    assert calls[0] - before == len(inner)


def test_checkpointed_denoiser_survives_a_deepcopy_and_a_state_dict_round_trip():
    """EMA deep-copies the model; the copy keeps checkpointing and loads the plain
    model's weights."""
    model = LatentDenoiser(tiny_config(gradient_checkpointing=True))
    twin = copy.deepcopy(model)
    assert all(is_checkpointed(b) for b in twin.unet.up_blocks)
    twin.load_state_dict(LatentDenoiser(tiny_config()).state_dict())


def test_autoencoder_checkpointing_gives_the_same_gradients_and_recomputes():
    """Training (weights' gradients) and a frozen decoder differentiated in its latent (the
    projection loss and guidance): the same output and gradients as the plain network,
    and the blocks run again in the backward pass."""
    cfg = AutoencoderConfig(kind="kl", channels=(4, 8, 8), latent_channels=4,
                            norm_num_groups=4, attention_levels=(False,) * 3)
    torch.manual_seed(0)
    plain = CTAutoencoder(cfg).train()
    ckpt = CTAutoencoder(cfg.replace(gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    calls = _count_calls([ckpt.net.decoder.blocks[1].conv1])  # in the first residual block
    results = []
    for model in (plain, ckpt):
        out = model.net.decode(model.net.encode(x)[0])
        out.square().mean().backward()
        results.append((out.detach(), _grads(model)))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for k, v in results[0][1].items():
        torch.testing.assert_close(results[1][1][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert calls[0] == 2  # the block ran again in the backward pass

    grads = []
    for model in (plain, ckpt):
        model.eval().requires_grad_(False)
        z = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
        z.requires_grad_(True)
        model.decode(z).abs().mean().backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
    assert calls[0] == 4  # frozen and in eval mode, still recomputed: gradients were wanted
    with torch.no_grad():
        ckpt.decode(z)
    assert calls[0] == 5  # without gradients, once


def test_projection_loss_does_not_checkpoint_a_block_checkpointed_decoder_again():
    """Through the projection loss the latent's gradient is the plain decoder's, and each
    decoder block runs twice (forward, recompute): a whole-decoder checkpoint around block
    checkpoints would run it a third time for no memory saved."""
    from x2ct.diffusion import ProjectionLoss

    cfg = AutoencoderConfig(kind="kl", channels=(4, 8, 8), latent_channels=4,
                            norm_num_groups=4, attention_levels=(False,) * 3)
    torch.manual_seed(0)
    plain = CTAutoencoder(cfg).eval().requires_grad_(False)
    ckpt = CTAutoencoder(cfg.replace(gradient_checkpointing=True)).eval().requires_grad_(False)
    ckpt.load_state_dict(plain.state_dict())
    shape = (16, 16, 16)
    geometry = default_geometry(shape, cfg.spacing, (8, 8))
    xrays = torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    z0 = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    grads, runs = [], []
    for ae, checkpointing in ((plain, None), (ckpt, None), (ckpt, True)):
        loss = ProjectionLoss(ae, geometry, shape, 1.0, checkpointing=checkpointing)
        calls = _count_calls([ae.net.decoder.blocks[1].conv1])
        z = z0.clone().requires_grad_(True)
        loss.per_sample(z, xrays).sum().backward()
        grads.append(z.grad)
        runs.append(calls[0])
    assert runs == [2, 2, 3]  # plain: the loss checkpoints the decoder; block-checkpointed: not
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-5, atol=1e-7)


def test_tiny_helpers_are_not_checkpointed():
    """The tiny configs keep the plain path (checkpointing is the base recipe's)."""
    assert "gradient_checkpointing" not in TINY
    assert not get_config("tiny").gradient_checkpointing
    assert not get_ae_config("kl-tiny").gradient_checkpointing


# --------------------------------------------------------------------------- latent cache


def _rss_anon_mb() -> float:
    """This process's anonymous resident memory (not file pages mapped from disk)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    pytest.skip("needs Linux /proc/self/status")


def test_latent_cache_is_memory_mapped_and_still_checked(tmp_path):
    """A 128 MB cache is read back without copying it into the process's memory (its
    pages are the file's), its values are the ones written, and its checks still hold."""
    from accelerate import Accelerator

    from x2ct.train.cache import load_latent_cache

    accelerator = Accelerator(cpu=True)
    path = tmp_path / "latent_cache.safetensors"
    n, size_mb = 64, 128
    per_case = size_mb * 2**20 // 4 // n
    expected = {}

    def build(cases):
        g = torch.Generator().manual_seed(0)
        out = {"latents": torch.randn(n, per_case, generator=g),
               "views": torch.randn(n, 2, 15, generator=g, dtype=torch.float64)}
        expected.update({k: v[[3, 40]].clone() for k, v in out.items()})
        return {k: v[cases.start : cases.stop] for k, v in out.items()}

    load_latent_cache(accelerator, path, "k", n, build)  # builds and writes it
    before = _rss_anon_mb()
    cache = load_latent_cache(accelerator, path, "k", n, build)  # checks and maps it
    batch = {k: v[[3, 40]] for k, v in cache.items()}  # what a training step reads
    grown = _rss_anon_mb() - before
    assert grown < size_mb / 4, f"{grown:.0f} MB of a {size_mb} MB cache copied into memory"
    for k, v in expected.items():
        torch.testing.assert_close(batch[k], v, rtol=0, atol=0)
    del cache, batch
    # a NaN deep in the file is still found (the checksum; the finite check streams)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4] = bytes.fromhex("0000c07f")  # float32 NaN
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="rebuilding the latent cache"):
        load_latent_cache(accelerator, path, "k", n, build)


@pytest.mark.parametrize("where", [None, 0, 517, 1023])
def test_all_finite_in_chunks_agrees_with_torch(where):
    from x2ct.train.cache import all_finite

    t = torch.randn(1024, 3, 5)
    if where is not None:
        t[where, 1, 2] = float("nan") if where % 2 else float("inf")
    assert all_finite(t, chunk_bytes=200) == bool(torch.isfinite(t).all())
    assert all_finite(torch.arange(5)) and all_finite(torch.tensor(1.0))
    assert not all_finite(torch.tensor(float("nan")))


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def base_autoencoder_dir(tmp_path_factory):
    """A random kl-base-1mm autoencoder (its networks and checkpointing) on a coarse grid:
    8 mm voxels make a 32^3 field of phantoms quick to build; the networks do not change
    with the spacing."""
    torch.manual_seed(0)
    ae = CTAutoencoder(get_ae_config("kl-base-1mm", spacing=(8.0, 8.0, 8.0)))
    return ae.save_pretrained(tmp_path_factory.mktemp("ae") / "kl-base")


def base_args(run_dir, autoencoder_dir, *extra: str) -> list[str]:
    """train/latent.py with the base networks on a 32^3 field (8^3 latents: the four UNet
    levels are 8, 4, 2, 1), two phantoms, 32 x 32 X-rays."""
    return ["--config", "base", "--autoencoder", str(autoencoder_dir), "--run-dir",
            str(run_dir), "--shape", "32", "32", "32", "--n-train", "2", "--placements", "1",
            "--log-every", "1", "--no-tensorboard", "--max-minutes", "0", "--val-steps", "2",
            "--xray-style", "0", *extra]


def test_base_config_trains_two_steps_with_checkpointing_and_accumulation(
    tmp_path, base_autoencoder_dir, fresh_accelerator_state
):
    """Two optimiser steps of the base networks (batch 1, two accumulated micro-batches,
    the projection loss through the checkpointed decoder, a --detector of its own),
    validation and the saved pipeline, which reconstructs at its grid."""
    from x2ct.diffusion import Reconstructor
    from x2ct.train.latent import main

    run = tmp_path / "base"
    main(base_args(run, base_autoencoder_dir, "--max-steps", "2", "--batch-size", "1",
                   "--grad-accum", "2", "--n-val", "1", "--detector", "48", "64"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["config"] == "base"
    assert all(map(math.isfinite, metrics["val"].values()))
    recon = Reconstructor.from_pretrained(run / "model")
    base = get_config("base")
    assert recon.config.unet_channels == base.unet_channels
    assert recon.config.gradient_checkpointing and recon.autoencoder.config.gradient_checkpointing
    assert recon.config.latent_size == (8, 8, 8) and recon.config.xray_shape == (48, 64)
    assert all(is_checkpointed(b) for b in recon.denoiser.unet.down_blocks)
    with torch.no_grad():
        out = recon(torch.rand(1, 2, 48, 64), steps=2, projection_guidance=False)
    assert out.hu.shape == (1, 1, 32, 32, 32) and bool(torch.isfinite(out.hu).all())


@pytest.mark.slow
def test_base_step_with_checkpointing_and_accumulation_has_the_plain_gradient(
    tmp_path, base_autoencoder_dir, monkeypatch, fresh_accelerator_state
):
    """The base networks step with the same gradient at batch 2 without checkpointing
    (the oracle) as at batch 1 with checkpointing and two accumulated micro-batches
    (tests/grad_probe.py: per-sample noise, the gradient the optimiser sees)."""
    from accelerate.state import AcceleratorState
    from grad_probe import install
    from safetensors.torch import load_file

    grads = tmp_path / "grads"
    grads.mkdir()
    script = install("latent", grads, monkeypatch.setattr)
    extra = ["--grad-clip", "0", "--projection-samples", "0", "--max-steps", "1",
             "--n-val", "0"]
    runs = {"plain": ["--batch-size", "2", "--set", "gradient_checkpointing=false"],
            "checkpointed": ["--batch-size", "1", "--grad-accum", "2"]}
    got = {}
    for name, flags in runs.items():
        AcceleratorState._reset_state(reset_partial_state=True)
        script.main(base_args(tmp_path / name, base_autoencoder_dir, *extra, *flags))
        got[name] = load_file(str((grads / "grad_rank0.safetensors").rename(grads / name)))
    ref = got["plain"]
    assert len(ref) == len(got["checkpointed"]) > 100
    scale = max(float(g.abs().max()) for g in ref.values())
    assert scale > 0
    for k, g in ref.items():
        torch.testing.assert_close(got["checkpointed"][k], g, rtol=1e-3, atol=1e-5 * scale,
                                   msg=k)
