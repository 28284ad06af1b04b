"""Tiny latent-diffusion models and runs shared by test_diffusion, test_latent and
test_reconstruct (kept CPU-fast: 16^3 CT, 4^3 latents, a 16 x 16 detector)."""

from __future__ import annotations

import pytest
import torch

from x2ct.autoencoder import AutoencoderConfig, CTAutoencoder
from x2ct.data import default_geometry
from x2ct.diffusion import LatentDenoiser, LatentDiffusionConfig, Reconstructor

CT_SHAPE = (16, 16, 16)
SPACING = (8.0, 8.0, 8.0)  # mm: 16 voxels cover 128 mm, enough to show a vertebra

TINY = dict(
    unet_channels=(8, 16),
    attention_levels=(False, True),
    num_head_channels=8,
    norm_num_groups=8,
    encoder_channels=(8, 16),
    token_grid=2,
    context_dim=16,
    backproject_channels=4,
    sampler_steps=4,
)
# the same as --set arguments of train/latent.py
TINY_SET = [
    "unet_channels=[8,16]",
    "attention_levels=[false,true]",
    "num_head_channels=8",
    "norm_num_groups=8",
    "encoder_channels=[8,16]",
    "token_grid=2",
    "context_dim=16",
    "backproject_channels=4",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster than on two threads of a CPU
    shared with other work; restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_autoencoder(seed: int = 0) -> CTAutoencoder:
    torch.manual_seed(seed)
    config = AutoencoderConfig(
        kind="kl",
        channels=(4, 8, 8),
        latent_channels=4,
        norm_num_groups=4,
        attention_levels=(False, False, False),
        spacing=SPACING,
    )
    return CTAutoencoder(config).eval()


def tiny_config(**overrides) -> LatentDiffusionConfig:
    kw = dict(
        latent_channels=4,
        latent_size=tuple(n // 4 for n in CT_SHAPE),
        ct_spacing=SPACING,
        downsample_factor=4,
        geometry=default_geometry(CT_SHAPE, SPACING).to_dict(),
        **TINY,
    )
    kw.update(overrides)
    return LatentDiffusionConfig(**kw)


def tiny_denoiser(seed: int = 0, **overrides) -> LatentDenoiser:
    """A tiny denoiser whose output depends on its inputs: MONAI zero-initialises the
    UNet's output and residual convolutions (an untrained UNet outputs 0), so those get
    small random weights here."""
    torch.manual_seed(seed)
    model = LatentDenoiser(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.1)
    return model


def tiny_reconstructor(seed: int = 0, **overrides) -> Reconstructor:
    return Reconstructor(tiny_denoiser(seed, **overrides), tiny_autoencoder(seed))


def xrays(batch: int = 1, seed: int = 0, shape=(16, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 2, *shape, generator=g) * 0.5


def train_args(run_dir, autoencoder_dir, *extra: str) -> list[str]:
    """train/latent.py arguments for a tiny run (a few seconds a step at most)."""
    return [
        "--autoencoder",
        str(autoencoder_dir),
        "--run-dir",
        str(run_dir),
        "--shape",
        *map(str, CT_SHAPE),
        "--n-train",
        "4",
        "--n-val",
        "1",
        "--batch-size",
        "2",
        "--val-steps",
        "2",
        "--log-every",
        "1",
        "--no-tensorboard",
        "--max-minutes",
        "0",
        "--set",
        *TINY_SET,
        *extra,
    ]
