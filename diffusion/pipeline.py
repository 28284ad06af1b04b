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

Options of a call:

- ``projection_guidance=ProjectionGuidance(strength, steps, inner)``: projection-
  consistent sampling (diffusion/guidance.py); None (the default) uses the config's
  ``projection_guidance`` (off when that is None), False turns it off. The plain result
  is computed too and, per sample, the one whose DRRs match the X-rays better is kept,
  so the guided result is never worse in projection error than the unguided one;
  ``out.projection`` reports both errors. Cost: the guided chain replays the plain
  chain's network outputs up to the guidance window (checked equal, not recomputed),
  then runs ``steps`` more network calls with ``inner`` + 1 decoder-and-projector
  forward/backward passes each, and the final decode and DRR rendering are done twice
  (one per candidate).
- ``pose_refinement=PoseRefinement(...)``: reconstruct, fit each view's pose to the
  reconstruction, reconstruct again with the refined geometry (diffusion/pose.py).
- ``view_geometry``: the geometry the X-rays were really taken with, if it differs from
  the model's only by view angles (as a refined pose does): the conditioning back-projects
  along it, and projection guidance renders along it.
- A model trained with ``objective="regression"`` predicts the latent in one pass: the
  sampler, steps and classifier-free guidance are ignored (every sample is the same), and
  projection guidance corrects that one latent with ``steps * inner`` gradient steps.
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
from x2ct.diffusion.guidance import ProjectionGuidance, correct_x0, projection_hook
from x2ct.diffusion.projection_loss import ProjectionLoss
from x2ct.diffusion.regression import predict_latent
from x2ct.diffusion.samplers import sample
from x2ct.diffusion.schedule import append_dims
from x2ct.fileio import atomic_dir
from x2ct.models import model_path, not_found_hint
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
    # projection-consistent sampling only: "before" and "after" (B, S) projection errors
    # (mean |DRR - X-ray|, normalised units) of the plain and the guided samples,
    # "guided" (B, S) bool: the guided sample was kept, and "final" (B, S) = the minimum
    projection: dict[str, torch.Tensor] | None = None
    pose: torch.Tensor | None = None  # (B, V, 3) refined (d_angle, d_u, d_v) if refined


class _Replay:
    """A model_fn that records its first ``limit`` calls and, once :meth:`replaying`,
    answers a call with the recorded output when its inputs are equal to the recorded
    ones (the shared prefix of a plain and a guided chain is computed once)."""

    def __init__(self, model_fn, limit: int):
        self.model_fn, self.limit = model_fn, int(limit)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.replay, self.k = False, 0

    def replaying(self) -> _Replay:
        self.replay, self.k = True, 0
        return self

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k, self.k = self.k, self.k + 1
        if self.replay and k < len(self.calls):
            x0, t0, out = self.calls[k]
            if torch.equal(x0, x_t) and torch.equal(t0, t):
                return out
        out = self.model_fn(x_t, t)
        if not self.replay and k < self.limit:
            self.calls.append((x_t.clone(), t.clone(), out))
        return out


def check_pipeline_dir(directory: str | os.PathLike) -> Path:
    """``directory`` if it holds a saved pipeline, else a clear error (before any compute)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder not found: {directory}{not_found_hint()}")
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
        directory = check_pipeline_dir(model_path(str(directory)))  # a folder, or a model's name
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

    def projection_guidance_for(
        self, option: ProjectionGuidance | bool | None
    ) -> ProjectionGuidance | None:
        """The projection guidance a call with ``projection_guidance=option`` runs: None ->
        the config's default (None when it has none), False -> None, else ``option``."""
        if option is None:
            default = self.config.projection_guidance
            return None if default is None else ProjectionGuidance(**default)
        if option is False:
            return None
        if not isinstance(option, ProjectionGuidance):
            raise TypeError(
                f"projection_guidance must be a ProjectionGuidance, False or None, got {option!r}"
            )
        return option

    @torch.no_grad()
    def simulate_xrays(self, hu: torch.Tensor, geometry: Geometry | None = None) -> torch.Tensor:
        """The model's X-rays of a CT (B, 1, X, Y, Z) in HU at the model's spacing, made
        as the datasets make them (HU clipped to the window, ``ct_to_drr``): normalised
        DRRs (B, V, H, W) = project(hu_to_mu(hu)) / xray_scale; along ``geometry``'s
        views if given (default: the model's)."""
        window = self.autoencoder.config.hu_window
        unit = hu_to_unit(hu.float(), window)
        drr = ct_to_drr(unit, geometry or self.geometry, self.spacing, window)
        return drr / self.config.xray_scale

    @torch.no_grad()
    def projection_errors(
        self, hu: torch.Tensor, xrays: torch.Tensor, geometry: Geometry | None = None
    ) -> torch.Tensor:
        """(B,) mean |simulate_xrays(hu) - xrays| per case: the projection error of
        ``x2ct.eval.metrics.projection_error`` (same rendering), batched."""
        drr = self.simulate_xrays(hu, geometry)
        return (drr - xrays.to(drr)).abs().flatten(1).mean(1)

    def _guidance_error_fn(self, geometry: Geometry):
        """(B,) differentiable mean |A(z) - y| of latents z for projection guidance."""
        loss = ProjectionLoss(
            self.autoencoder, geometry, self.shape, self.config.xray_scale,
            self.config.projection_step, "constant",
        )
        return loss.per_sample

    @torch.no_grad()
    def _keep_better(self, z, hu, z_guided, xrays, geometry):
        """Per latent, the plain (z, hu) or the guided one, whichever has the smaller
        projection error: (z, hu, (error before, error after, guided kept)). The guided
        latent's decode and both DRR renderings are the price of the guarantee."""
        hu_g = self.autoencoder.output_to_hu(self.autoencoder.decode(z_guided, shape=self.shape))
        hu_g = hu_g.float()
        before = self.projection_errors(hu, xrays, geometry)  # (N,)
        after = self.projection_errors(hu_g, xrays, geometry)
        guided = after < before  # ties keep the plain result
        z = torch.where(append_dims(guided, z.ndim), z_guided.to(z.dtype), z)
        hu = torch.where(append_dims(guided, hu.ndim), hu_g, hu)
        return z, hu, (before, after, guided)

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
        projection_guidance: ProjectionGuidance | bool | None = None,
        pose_refinement=None,
        view_geometry: Geometry | None = None,
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
                "decode" (autoencoder decoding to HU), and with projection guidance
                "guidance" (the guided chain, its decode and both candidates' DRRs).
                None: no synchronisation added.
            projection_guidance: projection-consistent sampling options (module docstring);
                None: the config's default, False: off.
            pose_refinement: a :class:`x2ct.diffusion.pose.PoseRefinement`: alternate
                reconstruction and pose refinement (diffusion/pose.py).
            view_geometry: condition (and guide) along this geometry's views instead of
                the model's: same detector and number of views, other angles.
        """
        if pose_refinement is not None:
            from x2ct.diffusion.pose import reconstruct_with_pose

            if view_geometry is not None:
                raise ValueError("pose_refinement finds the view geometry: do not pass one")
            return reconstruct_with_pose(
                self, xrays, pose_refinement, sampler=sampler, steps=steps,
                guidance_scale=guidance_scale, num_samples=num_samples, generator=generator,
                device=device, batch_size=batch_size, geometry=geometry,
                allow_geometry_mismatch=allow_geometry_mismatch, progress=progress,
                timings=timings, projection_guidance=projection_guidance,
            )
        sampler = self.config.sampler if sampler is None else sampler
        steps = self.config.sampler_steps if steps is None else int(steps)
        scale = self.config.guidance_scale if guidance_scale is None else float(guidance_scale)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        projection_guidance = self.projection_guidance_for(projection_guidance)
        self.check_xrays(xrays, geometry, allow_geometry_mismatch)
        if device is not None:
            self.to(device)
        device = self.device
        b, n = xrays.shape[0], int(num_samples)
        total = b * n
        batch_size = total if batch_size is None else max(1, int(batch_size))
        c = self.config
        views = view_geometry or self.geometry
        regression = c.objective == "regression"
        if projection_guidance is not None and generator is None:
            # the plain and the guided chain must see the same noise (ddpm draws per step)
            seed = int(torch.randint(0, 2**62, (1,)))
            generator = torch.Generator().manual_seed(seed)
        with _stage(timings, "sample", device):
            # all starting noise drawn up front on the generator's device, case-major
            gen_device = generator.device if generator is not None else "cpu"
            noise = torch.randn(
                total, c.latent_channels, *c.latent_size, generator=generator, device=gen_device
            ).to(device)
        xr = xrays.to(device, torch.float32)
        with _stage(timings, "encode", device):
            cond = self.denoiser.condition(xr, geometry=view_geometry).repeat(n)
        rows = xr.repeat_interleave(n, dim=0)  # (B*S, V, H, W): each latent's X-rays
        latents, hus, report = [], [], []
        for start in range(0, total, batch_size):
            idx = slice(start, min(start + batch_size, total))
            replay = None
            with _stage(timings, "sample", device):
                if regression:
                    z = predict_latent(self.denoiser, cond.select(idx))
                else:
                    model_fn = self.denoiser.guided(cond.select(idx), scale)
                    if projection_guidance is not None:
                        replay = _Replay(model_fn, steps - projection_guidance.steps)
                        state = None if generator is None else generator.get_state()
                    z = sample(
                        sampler, replay or model_fn, noise[idx], self.denoiser.schedule, steps,
                        generator=generator, progress=progress,
                    )
            with _stage(timings, "decode", device):
                hu = self.autoencoder.output_to_hu(self.autoencoder.decode(z, shape=self.shape))
                hu = hu.float()
            if projection_guidance is not None:
                with _stage(timings, "guidance", device):
                    error_fn = self._guidance_error_fn(views)
                    if regression:  # one estimate to correct: all the inner steps on it
                        g = projection_guidance
                        z_g = correct_x0(z, rows[idx], error_fn, g.strength, g.inner * g.steps)
                    else:
                        if generator is not None:
                            generator.set_state(state)  # the same noise as the plain chain
                        hook = projection_hook(projection_guidance, rows[idx], error_fn)
                        z_g = sample(
                            sampler, replay.replaying(), noise[idx], self.denoiser.schedule,
                            steps, generator=generator, progress=progress, x0_hook=hook,
                        )
                    z, hu, row = self._keep_better(z, hu, z_g, rows[idx], views)
                    report.append(row)
            hus.append(hu)
            latents.append(z)
        hu = torch.cat(hus).reshape(b, n, 1, *self.shape)
        latent = torch.cat(latents).reshape(b, n, c.latent_channels, *c.latent_size)
        std = hu.std(dim=1, correction=1) if n > 1 else None
        projection = None
        if report:
            before, after, guided = (torch.cat(r).reshape(b, n).cpu() for r in zip(*report))
            final = torch.where(guided, after, before)
            projection = {"before": before, "after": after, "guided": guided, "final": final}
        return Reconstruction(hu.mean(dim=1), std, latent, projection)
