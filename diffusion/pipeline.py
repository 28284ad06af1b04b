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

import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

from x2ct.autoencoder import AutoencoderConfig, CTAutoencoder
from x2ct.data import ct_to_drr, hu_to_unit, unit_to_hu
from x2ct.diffusion.calibration import fit_display_curve
from x2ct.diffusion.config import SAMPLERS, LatentDiffusionConfig
from x2ct.diffusion.denoiser import LatentDenoiser
from x2ct.diffusion.guidance import ProjectionGuidance, correct_x0, projection_hook
from x2ct.diffusion.projection_loss import ProjectionLoss, remove_background
from x2ct.diffusion.regression import predict_latent
from x2ct.diffusion.samplers import sample
from x2ct.diffusion.schedule import append_dims
from x2ct.fileio import atomic_dir
from x2ct.models import model_path, not_found_hint
from x2ct.projector import (
    Geometry,
    hu_to_mu,
    isocentre_pixel,
    project_views,
    stack_views,
    view_vectors,
)
from x2ct.state import load_weights, write_safetensors

__all__ = [
    "INTENSITIES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "AUTOENCODER_DIR",
    "Reconstruction",
    "Reconstructor",
    "check_pipeline_dir",
]

logger = logging.getLogger("x2ct.diffusion")

BACKGROUND_SIGMA_MM = 20.0
"""Scale (mm at the isocentre) of the background that the tissue around the field adds to
a whole-body X-ray, removed from residuals before projection guidance compares them."""

INTENSITIES = ("line_integral", "display")
"""What the X-ray values given to a Reconstructor are: normalised line integrals, or an
unknown monotone display of them (radiographs)."""

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
    # intensity="display" with projection guidance or pose refinement: the X-rays mapped
    # through the display curve fitted against the reconstruction (normalised line
    # integrals, (B, V, H, W))
    calibrated: torch.Tensor | None = None


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
            write_safetensors(tmp / WEIGHTS_NAME, state, {"format": "pt"})
            (tmp / CONFIG_NAME).write_text(self.config.to_json())
            self.autoencoder.save_pretrained(tmp / AUTOENCODER_DIR)
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device="cpu") -> Reconstructor:
        directory = check_pipeline_dir(model_path(str(directory)))  # or a name
        config = LatentDiffusionConfig.from_file(directory / CONFIG_NAME)  # names the file
        AutoencoderConfig.from_file(directory / AUTOENCODER_DIR / CONFIG_NAME)  # before building
        denoiser = LatentDenoiser(config)
        load_weights(denoiser, directory / WEIGHTS_NAME)
        autoencoder = CTAutoencoder.from_pretrained(directory / AUTOENCODER_DIR)
        return cls(denoiser, autoencoder).to(device)

    # ------------------------------------------------------------------ X-rays
    def check_xrays(self, xrays: torch.Tensor, geometry=None, allow_geometry_mismatch=False):
        """Refuse X-rays of another shape, or declared with a geometry the model was not
        trained for (:meth:`acquisition_views`)."""
        self.acquisition_views(geometry, allow_geometry_mismatch)
        expected = (self.config.num_views, *self.config.xray_shape)
        if xrays.ndim != 4 or tuple(xrays.shape[1:]) != expected:
            raise ValueError(
                f"expected X-rays of shape (B, {expected[0]}, {expected[1]}, {expected[2]}): "
                f"views {self.geometry.angles} on the model's {expected[1]}x{expected[2]} "
                f"detector; got {tuple(xrays.shape)} (resample radiographs onto it with "
                "x2ct.data.resample_radiograph)"
            )

    def sampling_settings(self, sampler: str | None = None, steps: int | None = None,
                          guidance_scale: float | None = None,
                          num_samples: int | None = None) -> dict:
        """What a call samples with: each setting given, else the config's (the one place
        the model's defaults are resolved; reconstruct.py and evaluate.py report these).
        Returns a dict with "sampler", "steps", "guidance_scale" and "num_samples"."""
        c = self.config
        settings = {
            "sampler": c.sampler if sampler is None else sampler,
            "steps": c.sampler_steps if steps is None else int(steps),
            "guidance_scale": c.guidance_scale if guidance_scale is None
            else float(guidance_scale),
            "num_samples": c.num_samples if num_samples is None else int(num_samples),
        }
        if settings["sampler"] not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {settings['sampler']!r}")
        if settings["num_samples"] < 1:
            raise ValueError(f"num_samples must be >= 1, got {settings['num_samples']}")
        return settings

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
    def simulate_xrays(
        self,
        hu: torch.Tensor,
        geometry: Geometry | None = None,
        views: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model's X-rays of a CT (B, 1, X, Y, Z) in HU at the model's spacing, made
        as the datasets make them (HU clipped to the window, ``ct_to_drr``): normalised
        DRRs (B, V, H, W) = project(hu_to_mu(hu)) / xray_scale; along ``geometry``'s
        views if given, or per case along ``views`` ((B, V, 15) or (V, 15) view vectors on
        the model's detector), else the model's."""
        window = self.autoencoder.config.hu_window
        unit = hu_to_unit(hu.float(), window)
        if views is None:
            drr = ct_to_drr(unit, geometry or self.geometry, self.spacing, window)
        else:
            mu = hu_to_mu(unit_to_hu(unit, window))
            drr = project_views(
                mu, views, self.geometry.detector_shape, self.spacing, 0.5, self.geometry.parallel
            )
        return drr / self.config.xray_scale

    @torch.no_grad()
    def projection_errors(
        self,
        hu: torch.Tensor,
        xrays: torch.Tensor,
        geometry: Geometry | None = None,
        views: torch.Tensor | None = None,
        background: bool = False,
    ) -> torch.Tensor:
        """(B,) mean |simulate_xrays(hu) - xrays| per case: the projection error of
        ``x2ct.eval.metrics.projection_error`` (same rendering), batched. ``background``:
        without the residual's smooth part when the X-rays cross the whole body (as
        projection guidance compares them)."""
        drr = self.simulate_xrays(hu, geometry, views)
        r = drr - xrays.to(drr)
        if background and self.background_sigma_px is not None:
            r = remove_background(r, self.background_sigma_px)
        return r.abs().flatten(1).mean(1)

    @property
    def background_sigma_px(self) -> float | None:
        """Detector pixels of the smooth background removed from projection residuals when
        the model's X-rays cross the whole body (``BACKGROUND_SIGMA_MM`` at the isocentre),
        else None."""
        if self.config.xrays_through != "body":
            return None
        return BACKGROUND_SIGMA_MM / min(isocentre_pixel(self.geometry))

    def _guidance_error_fn(self, views: torch.Tensor | None):
        """(B,) differentiable mean |A(z) - y| of latents z for projection guidance, along
        ``views`` (one (V, 15) row per latent) or the model's views; without the residual's
        smooth part for X-rays through the whole body."""
        loss = ProjectionLoss(
            self.autoencoder, self.geometry, self.shape, self.config.xray_scale,
            self.config.projection_step, "constant",
            background_sigma_px=self.background_sigma_px,
        )
        return lambda z, y: loss.per_sample(z, y, views)

    @torch.no_grad()
    def _keep_better(self, z, hu, z_guided, xrays, views):
        """Per latent, the plain (z, hu) or the guided one, whichever has the smaller
        projection error: (z, hu, (error before, error after, guided kept)). The guided
        latent's decode and both DRR renderings are the price of the guarantee."""
        hu_g = self.autoencoder.output_to_hu(self.autoencoder.decode(z_guided, shape=self.shape))
        hu_g = hu_g.float()
        before = self.projection_errors(hu, xrays, views=views, background=True)  # (N,)
        after = self.projection_errors(hu_g, xrays, views=views, background=True)
        guided = after < before  # ties keep the plain result
        z = torch.where(append_dims(guided, z.ndim), z_guided.to(z.dtype), z)
        hu = torch.where(append_dims(guided, hu.ndim), hu_g, hu)
        return z, hu, (before, after, guided)

    def acquisition_views(
        self,
        geometry: Geometry | dict | list | None,
        allow_geometry_mismatch: bool = False,
        device=None,
    ) -> torch.Tensor | None:
        """View vectors (V, 15) for X-rays declared with ``geometry`` (a Geometry of all
        views, or one single-view Geometry per view, on the model's detector), or None for
        the model's own views. Refused, with the range named, outside the acquisitions the
        model was trained for (``config.acquisitions``) unless ``allow_geometry_mismatch``."""
        if geometry is None:
            return None
        if isinstance(geometry, dict):
            geometry = Geometry.from_dict(geometry)
        per_view = geometry.split() if isinstance(geometry, Geometry) else list(geometry)
        if [g for g in per_view if g.detector_shape != self.geometry.detector_shape]:
            raise ValueError(
                f"the X-rays' detector must be the model's {self.geometry.detector_shape} "
                "pixels (resample radiographs onto it: x2ct.data.resample_radiograph)"
            )
        if sum(g.num_views for g in per_view) != self.geometry.num_views:
            raise ValueError(
                f"the model takes {self.geometry.num_views} views, the geometry declares "
                f"{sum(g.num_views for g in per_view)}"
            )
        per_view = [v for g in per_view for v in g.split()]
        if per_view == self.geometry.split():
            return None
        nominal_pixel = isocentre_pixel(self.geometry)
        for i, g in enumerate(per_view):
            pixel = isocentre_pixel(g)
            if any(abs(p - q) > 1e-3 * q for p, q in zip(pixel, nominal_pixel)):
                problem = (
                    f"view {i}: its pixels cover {pixel[0]:.4g} x {pixel[1]:.4g} mm at the "
                    f"isocentre, the model's {nominal_pixel[0]:.4g} x {nominal_pixel[1]:.4g} mm "
                    "(resample the image onto the model's detector with "
                    "x2ct.data.resample_radiograph)"
                )
                if not allow_geometry_mismatch:
                    raise ValueError(
                        f"{problem}; pass allow_geometry_mismatch=True to reconstruct anyway "
                        "(expect worse results)"
                    )
        try:
            self.config.acquisitions.check(per_view, self.geometry)
        except ValueError as e:
            if not allow_geometry_mismatch:
                raise ValueError(
                    f"{e}; pass allow_geometry_mismatch=True to reconstruct anyway (expect "
                    "worse results)"
                ) from None
        return stack_views(per_view, torch.float32, device)

    # ------------------------------------------------------------------ reconstruction
    def _case_views(self, xrays, views, view_geometry, geometry, allow_geometry_mismatch):
        """(B, V, 15) view vectors of each case, or None for the model's own views."""
        if sum(x is not None for x in (views, view_geometry, geometry)) > 1:
            raise ValueError("give at most one of views, view_geometry and geometry")
        if view_geometry is not None:
            if view_geometry == self.geometry:
                return None
            nominal = self.geometry
            if view_geometry.num_views != nominal.num_views or (
                view_geometry.detector_shape != nominal.detector_shape
            ):
                raise ValueError(
                    f"a view geometry must keep the model's {nominal.num_views} views and "
                    f"{nominal.detector_shape} detector, got {view_geometry.to_dict()}"
                )
            views = view_vectors(view_geometry)
        elif geometry is not None:
            views = self.acquisition_views(geometry, allow_geometry_mismatch)
        if views is None:
            return None
        views = views.to(torch.float32)
        if views.ndim == 2:
            views = views.expand(xrays.shape[0], *views.shape)
        expected = (xrays.shape[0], self.geometry.num_views, 15)
        if tuple(views.shape) != expected:
            raise ValueError(f"views must be {expected} (or (V, 15)), got {tuple(views.shape)}")
        return views

    @torch.no_grad()
    def __call__(
        self,
        xrays: torch.Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        device=None,
        batch_size: int | None = None,
        geometry: Geometry | dict | list | None = None,
        allow_geometry_mismatch: bool = False,
        progress: bool = False,
        timings: dict[str, float] | None = None,
        projection_guidance: ProjectionGuidance | bool | None = None,
        pose_refinement=None,
        view_geometry: Geometry | None = None,
        views: torch.Tensor | None = None,
        intensity: str = "line_integral",
    ) -> Reconstruction:
        """Reconstruct CT from X-rays (B, V, H, W) on the model's detector.

        Args:
            sampler: "ddim", "ddpm" or "rflow" (default: the config's).
            steps: sampler steps (default: the config's).
            guidance_scale: classifier-free guidance scale s (1: conditional model only).
            num_samples: samples per case (default: the config's); their mean is ``hu``
                and their per-voxel standard deviation ``std`` (an uncertainty map).
            generator: torch.Generator for the noise (repeatable results).
            device: where to run (default: where the model is).
            batch_size: latents denoised at once (default: all B * num_samples).
            geometry: the acquisition the X-rays were taken with, if not the model's: a
                Geometry of all views, or one single-view Geometry per view, on the
                model's detector (``x2ct.data.resample_radiograph`` puts a radiograph
                there); refused outside ``config.acquisitions`` unless
                ``allow_geometry_mismatch``.
            views: per case view vectors (B, V, 15) (or (V, 15) for all) on the model's
                detector, in the field's frame: the most general acquisition (training
                data carries them); excludes ``geometry`` and ``view_geometry``.
            view_geometry: the views as a Geometry, without the range check (pose
                refinement passes refined views this way).
            intensity: "line_integral": the X-rays are normalised line integrals
                (drr / xray_scale, as x2ct renders them); "display": an unknown monotone
                function of them (radiographs: any window, gamma, LUT, bit depth). The
                latter needs a model with ``xray_input="rank"``; projection guidance and
                pose refinement then fit the display curve per view against the DRRs of
                each plain reconstruction (isotonic regression,
                diffusion/calibration.py) and use the calibrated images.
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
        """
        if intensity not in INTENSITIES:
            raise ValueError(f"intensity must be one of {INTENSITIES}, got {intensity!r}")
        if intensity == "display" and self.config.xray_input != "rank":
            raise ValueError(
                "this model reads calibrated line integrals only (xray_input "
                f"{self.config.xray_input!r}): radiographs with an unknown display curve need "
                "a model trained with xray_input='rank'"
            )
        settings = self.sampling_settings(sampler, steps, guidance_scale, num_samples)
        sampler, steps = settings["sampler"], settings["steps"]
        scale, num_samples = settings["guidance_scale"], settings["num_samples"]
        if pose_refinement is not None:
            from x2ct.diffusion.pose import reconstruct_with_pose

            if view_geometry is not None:
                raise ValueError("pose_refinement finds the view geometry: do not pass one")
            return reconstruct_with_pose(
                self, xrays, pose_refinement, sampler=sampler, steps=steps,
                guidance_scale=scale, num_samples=num_samples, generator=generator,
                device=device, batch_size=batch_size, geometry=geometry,
                allow_geometry_mismatch=allow_geometry_mismatch, progress=progress,
                timings=timings, projection_guidance=projection_guidance, views=views,
                intensity=intensity,
            )
        projection_guidance = self.projection_guidance_for(projection_guidance)
        expected = (self.config.num_views, *self.config.xray_shape)
        if xrays.ndim != 4 or tuple(xrays.shape[1:]) != expected:
            self.check_xrays(xrays)  # raises with the expected shape
        case_views = self._case_views(
            xrays, views, view_geometry, geometry, allow_geometry_mismatch
        )
        if device is not None:
            self.to(device)
        device = self.device
        b, n = xrays.shape[0], int(num_samples)
        total = b * n
        batch_size = total if batch_size is None else max(1, int(batch_size))
        c = self.config
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
        if case_views is not None:
            case_views = case_views.to(device)
        with _stage(timings, "encode", device):
            cond = self.denoiser.condition(xr, views=case_views).repeat(n)
        rows = xr.repeat_interleave(n, dim=0)  # (B*S, V, H, W): each latent's X-rays
        row_views = None if case_views is None else case_views.repeat_interleave(n, dim=0)
        latents, hus, report, targets = [], [], [], []
        for start in range(0, total, batch_size):
            idx = slice(start, min(start + batch_size, total))
            idx_views = None if row_views is None else row_views[idx]
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
                    target = rows[idx]
                    if intensity == "display":  # the display curve, fitted per latent
                        drr = self.simulate_xrays(hu, views=idx_views)
                        target = fit_display_curve(target, drr)
                        targets.append(target)
                    error_fn = self._guidance_error_fn(idx_views)
                    if regression:  # one estimate to correct: all the inner steps on it
                        g = projection_guidance
                        z_g = correct_x0(z, target, error_fn, g.strength, g.inner * g.steps)
                    else:
                        if generator is not None:
                            generator.set_state(state)  # the same noise as the plain chain
                        hook = projection_hook(projection_guidance, target, error_fn)
                        z_g = sample(
                            sampler, replay.replaying(), noise[idx], self.denoiser.schedule,
                            steps, generator=generator, progress=progress, x0_hook=hook,
                        )
                    z, hu, row = self._keep_better(z, hu, z_g, target, idx_views)
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
        calibrated = None
        if targets:  # the calibrated X-rays of each case's first sample
            calibrated = torch.cat(targets).reshape(b, n, *xrays.shape[1:])[:, 0].cpu()
        return Reconstruction(hu.mean(dim=1), std, latent, projection, None, calibrated)
