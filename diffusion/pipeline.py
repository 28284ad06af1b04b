"""`Reconstructor`: biplanar X-rays in, CT in Hounsfield units out.

    recon = Reconstructor.from_pretrained("runs/latent/model")
    out = recon(xrays)                        # xrays (B, 2, H, W), drr / xray_scale
    out.hu                                    # (B, 1, X, Y, Z) HU, spacing recon.spacing
    out = recon(xrays, num_samples=8, sampler="ddim", steps=25, guidance_scale=1.5,
                generator=torch.Generator().manual_seed(0))
    out.std                                   # (B, 1, X, Y, Z) per-voxel std (uncertainty)

A saved pipeline is one self-contained folder:

    DIR/config.json         LatentDiffusionConfig (networks, geometry, sampler defaults)
    DIR/model.safetensors   denoiser weights (X-ray encoder, UNet, null context)
    DIR/autoencoder/        the frozen CTAutoencoder (config.json + model.safetensors)

written atomically (x2ct.fileio.atomic_dir). The model knows the geometry it was trained
for: X-rays declared with another geometry are refused unless ``allow_geometry_mismatch``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from x2ct.autoencoder import CTAutoencoder
from x2ct.data import ct_to_drr, hu_to_unit
from x2ct.diffusion.config import SAMPLERS, LatentDiffusionConfig
from x2ct.diffusion.denoiser import LatentDenoiser
from x2ct.diffusion.samplers import sample
from x2ct.fileio import atomic_dir
from x2ct.projector import Geometry

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AUTOENCODER_DIR",
    "Reconstruction",
    "Reconstructor",
    "check_pipeline_dir",
]

logger = logging.getLogger("x2ct.diffusion")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
AUTOENCODER_DIR = "autoencoder"


class Reconstruction(NamedTuple):
    hu: torch.Tensor  # (B, 1, X, Y, Z) CT in HU (the mean over samples)
    std: torch.Tensor | None  # (B, 1, X, Y, Z) per-voxel std in HU over samples, or None
    latent: torch.Tensor  # (B, S, C, x, y, z) sampled latents


def check_pipeline_dir(directory: str | os.PathLike) -> Path:
    """``directory`` if it holds a saved pipeline, else a clear error (before any compute)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder not found: {directory}")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory} has no {name}: not a saved x2ct reconstruction model "
                "(train one with train/latent.py; it writes RUN/model)"
            )
    ae = directory / AUTOENCODER_DIR
    if not (ae / CONFIG_NAME).is_file() or not (ae / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory} has no complete {AUTOENCODER_DIR}/ subfolder")
    return directory


@contextmanager
def _stage(timings: dict | None, name: str, device: torch.device):
    """Add the block's seconds to ``timings[name]`` (CUDA synchronised at both ends);
    nothing when ``timings`` is None."""
    if timings is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0


class Reconstructor:
    def __init__(self, denoiser: LatentDenoiser, autoencoder: CTAutoencoder):
        c, a = denoiser.config, autoencoder.config
        if c.latent_channels != a.latent_channels or c.downsample_factor != a.downsample_factor:
            raise ValueError(
                f"the denoiser expects {c.latent_channels}-channel latents downsampled by "
                f"{c.downsample_factor}; the autoencoder gives {a.latent_channels} and "
                f"{a.downsample_factor}"
            )
        if tuple(c.ct_spacing) != tuple(a.spacing):
            raise ValueError(f"spacing mismatch: denoiser {c.ct_spacing}, autoencoder {a.spacing}")
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.autoencoder = autoencoder.eval().requires_grad_(False)

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> LatentDiffusionConfig:
        return self.denoiser.config

    @property
    def geometry(self) -> Geometry:
        return self.config.geometry_obj

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.config.ct_spacing)

    @property
    def shape(self) -> tuple[int, int, int]:
        """CT voxels (X, Y, Z) of a reconstruction."""
        return self.config.ct_shape

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def to(self, device) -> Reconstructor:
        self.denoiser.to(device)
        self.autoencoder.to(device)
        return self

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json, model.safetensors and autoencoder/ atomically."""
        state = {
            k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in self.denoiser.state_dict().items()
        }
        with atomic_dir(directory) as tmp:
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            (tmp / CONFIG_NAME).write_text(self.config.to_json())
            self.autoencoder.save_pretrained(tmp / AUTOENCODER_DIR)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device="cpu") -> Reconstructor:
        directory = check_pipeline_dir(directory)
        try:
            config = LatentDiffusionConfig.from_json((directory / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{directory / CONFIG_NAME}: not a valid model config ({e})") from e
        denoiser = LatentDenoiser(config)
        denoiser.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
        autoencoder = CTAutoencoder.from_pretrained(directory / AUTOENCODER_DIR)
        return cls(denoiser, autoencoder).to(device)

    # ------------------------------------------------------------------ X-rays
    def check_xrays(self, xrays: torch.Tensor, geometry=None, allow_geometry_mismatch=False):
        """Refuse X-rays of another shape, or declared with another geometry."""
        if geometry is not None:
            g = Geometry.from_dict(geometry) if isinstance(geometry, dict) else geometry
            if g != self.geometry and not allow_geometry_mismatch:
                raise ValueError(
                    f"the X-rays were declared with geometry {g.to_dict()} but the model was "
                    f"trained for {self.geometry.to_dict()}; pass allow_geometry_mismatch=True "
                    "to reconstruct anyway (expect worse results)"
                )
        expected = (self.config.num_views, *self.config.xray_shape)
        if xrays.ndim != 4 or tuple(xrays.shape[1:]) != expected:
            raise ValueError(
                f"expected X-rays of shape (B, {expected[0]}, {expected[1]}, {expected[2]}): "
                f"views {self.geometry.angles} on the model's {expected[1]}x{expected[2]} "
                f"detector; got {tuple(xrays.shape)} (resize with x2ct.data.load_xray(shape=...))"
            )

    @torch.no_grad()
    def simulate_xrays(self, hu: torch.Tensor) -> torch.Tensor:
        """The model's X-rays of a CT (B, 1, X, Y, Z) in HU at the model's spacing, made
        as the datasets make them (HU clipped to the window, ``ct_to_drr``): normalised
        DRRs (B, V, H, W) = project(hu_to_mu(hu)) / xray_scale."""
        window = self.autoencoder.config.hu_window
        unit = hu_to_unit(hu.float(), window)
        drr = ct_to_drr(unit, self.geometry, self.spacing, window)
        return drr / self.config.xray_scale

    # ------------------------------------------------------------------ reconstruction
    @torch.no_grad()
    def __call__(
        self,
        xrays: torch.Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        device=None,
        batch_size: int | None = None,
        geometry: Geometry | dict | None = None,
        allow_geometry_mismatch: bool = False,
        progress: bool = False,
        timings: dict[str, float] | None = None,
    ) -> Reconstruction:
        """Reconstruct CT from X-rays (B, V, H, W) (normalised, as datasets yield them).

        Args:
            sampler: "ddim", "ddpm" or "rflow" (default: the config's).
            steps: sampler steps (default: the config's).
            guidance_scale: classifier-free guidance scale s (1: conditional model only).
            num_samples: samples per case; their mean is ``hu`` and their per-voxel
                standard deviation ``std`` (an uncertainty map).
            generator: torch.Generator for the noise (repeatable results).
            device: where to run (default: where the model is).
            batch_size: latents denoised at once (default: all B * num_samples).
            geometry: the geometry the X-rays were taken with, if known; refused when it is
                not the model's unless ``allow_geometry_mismatch``.
            timings: a dict to fill with the seconds of each stage of this call (summed
                over batches; CUDA synchronised around each): "encode" (X-ray encoder and
                back-projection), "sample" (starting noise and the sampler's loop),
                "decode" (autoencoder decoding to HU). None: no synchronisation added.
        """
        sampler = self.config.sampler if sampler is None else sampler
        steps = self.config.sampler_steps if steps is None else int(steps)
        scale = self.config.guidance_scale if guidance_scale is None else float(guidance_scale)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.check_xrays(xrays, geometry, allow_geometry_mismatch)
        if device is not None:
            self.to(device)
        device = self.device
        b, n = xrays.shape[0], int(num_samples)
        total = b * n
        batch_size = total if batch_size is None else max(1, int(batch_size))
        c = self.config
        with _stage(timings, "sample", device):
            # all starting noise drawn up front on the generator's device, case-major
            gen_device = generator.device if generator is not None else "cpu"
            noise = torch.randn(
                total, c.latent_channels, *c.latent_size, generator=generator, device=gen_device
            ).to(device)
        with _stage(timings, "encode", device):
            cond = self.denoiser.condition(xrays.to(device, torch.float32)).repeat(n)
        latents, hus = [], []
        for start in range(0, total, batch_size):
            idx = slice(start, min(start + batch_size, total))
            with _stage(timings, "sample", device):
                model_fn = self.denoiser.guided(cond.select(idx), scale)
                z = sample(
                    sampler,
                    model_fn,
                    noise[idx],
                    self.denoiser.schedule,
                    steps,
                    generator=generator,
                    progress=progress,
                )
            with _stage(timings, "decode", device):
                x = self.autoencoder.decode(z, shape=self.shape)
                hus.append(self.autoencoder.output_to_hu(x).float())
            latents.append(z)
        hu = torch.cat(hus).reshape(b, n, 1, *self.shape)
        latent = torch.cat(latents).reshape(b, n, c.latent_channels, *c.latent_size)
        std = hu.std(dim=1, correction=1) if n > 1 else None
        return Reconstruction(hu.mean(dim=1), std, latent)
