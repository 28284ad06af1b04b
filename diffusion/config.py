"""`LatentDiffusionConfig`: everything needed to rebuild the conditional latent diffusion
model, saved as config.json beside its weights (STYLE.md 5).

It describes the three networks (X-ray encoder, back-projected conditioning, UNet), the
noise process and its training target, the projection loss, the imaging geometry the
model was trained for, and the sampler defaults of the reconstruction pipeline. Named
sizes live in `LATENT_DIFFUSION_CONFIGS` ("tiny" for a CPU, "base" for a GPU) and feed
the training script's choices.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from x2ct.diffusion.xray_input import XRAY_INPUTS
from x2ct.projector import DRR_SCALE, Geometry
from x2ct.projector.acquisition import AcquisitionRange
from x2ct.validation import (
    build_config,
    check_fields,
    check_range,
    parse_json,
    read_json_config,
)

PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")
BETA_SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")
SAMPLERS = ("ddim", "ddpm", "rflow")
PROJECTION_WEIGHTINGS = ("alpha_bar", "snr", "constant")
OBJECTIVES = ("diffusion", "regression")
# fields a saved config.json must state: set from the training data, no default fits
REQUIRED_IN_FILE = ("latent_channels", "latent_size", "ct_spacing", "downsample_factor",
                    "geometry", "xray_scale")
# bounds that keep a hostile config.json from allocating without end
MAX_LATENT_VOXELS = 256**3
MAX_DETECTOR_PIXELS = 4096**2
MAX_CHANNELS = 4096


def default_geometry() -> dict:
    """The datasets' AP + lateral cone beam for a 64^3 volume of 2 mm voxels (64 x 64
    detector); training replaces it by its dataset's geometry."""
    from x2ct.data import default_geometry as data_default_geometry

    return data_default_geometry((64, 64, 64), (2.0, 2.0, 2.0)).to_dict()


@dataclass
class LatentDiffusionConfig:
    # --- latent (set from the autoencoder the model is trained on)
    latent_channels: int = 8  # C of the autoencoder's latent
    latent_size: tuple[int, int, int] = (16, 16, 16)  # latent voxels (x, y, z)
    ct_spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # mm per CT voxel
    downsample_factor: int = 4  # CT voxels per latent voxel along each axis
    # --- denoiser: MONAI DiffusionModelUNet (spatial_dims=3) on the latent
    unet_channels: tuple[int, ...] = (32, 64, 64)  # channels per resolution level
    attention_levels: tuple[bool, ...] = (False, True, True)  # self + cross attention per level
    num_res_blocks: int = 1  # residual blocks per level
    num_head_channels: int = 16  # channels per attention head (heads = channels / this)
    norm_num_groups: int = 16  # GroupNorm groups; divides every channel count
    # activation checkpointing of the UNet's blocks in training (x2ct/checkpointing.py):
    # activations recomputed in the backward pass instead of kept; no effect at inference
    gradient_checkpointing: bool = False
    # --- X-ray encoder: a 2-D network shared by both views
    encoder_channels: tuple[int, ...] = (16, 32, 64)  # one stride-2 stage per entry
    token_grid: int = 8  # each view becomes token_grid^2 tokens
    context_dim: int = 64  # cross-attention context width
    # --- geometry-aware conditioning: encoder features back-projected into the latent
    geometry_aware: bool = True
    backproject_channels: int = 8  # feature channels back-projected per view
    geometry: dict = field(default_factory=default_geometry)  # Geometry.to_dict()
    xray_scale: float = DRR_SCALE  # network X-rays are line integrals / xray_scale
    # what the X-ray encoder sees (diffusion/xray_input.py): "drr" (line integral /
    # xray_scale: calibrated DRRs only) or "rank" (per-view pixel ranks, the same for any
    # monotone display curve: radiographs)
    xray_input: str = "drr"
    # what the X-rays show: "field" (the field alone, as the first models were trained) or
    # "body" (the whole patient, as radiographs do): projection guidance then compares
    # residuals without their smooth part, the tissue around the field
    xrays_through: str = "field"
    # acquisitions trained for (x2ct.projector.AcquisitionRange.to_dict(): sad range,
    # magnification range, angle jitter); None: the geometry's distances only
    acquisition_range: dict | None = None
    # where preprocessing puts a new CT's spine (eval/reconstruct.py --ct): voxel (x, y, z)
    # of the CT grid, the training CTs' mean bone centroid (x2ct.data.spine_centre, no
    # mask; train/latent.py measures it); None: the grid's middle
    spine_position: tuple[float, float, float] | None = None
    # --- training objective: "diffusion" (denoise noisy latents; sampled) or "regression"
    # (the deterministic baseline: the same networks predict the latent in one pass,
    # diffusion/regression.py; the sampler and guidance settings are then unused)
    objective: str = "diffusion"
    # --- noise process (MONAI DDPMScheduler) and training target
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: str = "v_prediction"
    # --- classifier-free guidance
    cond_drop_prob: float = 0.1  # probability of training a sample without its X-rays
    # --- projection loss: L1 between DRRs of the decoded x0 estimate and the input X-rays
    projection_weight: float = 0.1  # 0 switches it off
    projection_weighting: str = "alpha_bar"  # w(t): alpha_bar_t, min(snr_t, 5) / 5, or 1
    projection_step: float = 1.0  # ray-march step in CT voxels
    # --- sampler defaults of the reconstruction pipeline
    sampler: str = "ddim"
    sampler_steps: int = 50
    guidance_scale: float = 1.0
    # samples averaged per case: the reconstruction is their mean (an estimate of the
    # posterior mean, which PSNR, SSIM and MAE reward: one sample's error is about twice
    # the mean's), and their per-voxel standard deviation the uncertainty map
    num_samples: int = 1
    # projection-consistent sampling by default (x2ct.diffusion.ProjectionGuidance fields:
    # strength, steps, inner); None: off unless a call asks for it
    projection_guidance: dict | None = None

    def __post_init__(self) -> None:
        self.latent_size = tuple(int(n) for n in self.latent_size)
        self.ct_spacing = tuple(float(s) for s in self.ct_spacing)
        self.unet_channels = tuple(int(c) for c in self.unet_channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.encoder_channels = tuple(int(c) for c in self.encoder_channels)
        if self.projection_guidance is not None:
            from x2ct.diffusion.guidance import ProjectionGuidance

            try:  # validates, and fills in the fields left out
                self.projection_guidance = ProjectionGuidance(**self.projection_guidance).to_dict()
            except TypeError as e:
                raise ValueError(
                    f"projection_guidance must hold strength, steps, inner; got "
                    f"{self.projection_guidance!r}"
                ) from e
        if self.spine_position is not None:
            self.spine_position = tuple(float(c) for c in self.spine_position)
            if len(self.spine_position) != 3 or not all(
                math.isfinite(c) for c in self.spine_position
            ):
                raise ValueError(
                    f"spine_position must be three voxel coordinates, got {self.spine_position}"
                )
        self.geometry = self.geometry_obj.to_dict()  # validates and normalises
        if self.xrays_through not in ("field", "body"):
            raise ValueError(
                f"xrays_through must be 'field' or 'body', got {self.xrays_through!r}"
            )
        if self.xray_input not in XRAY_INPUTS:
            raise ValueError(f"xray_input must be one of {XRAY_INPUTS}, got {self.xray_input!r}")
        if self.acquisition_range is not None:
            try:
                self.acquisition_range = AcquisitionRange.from_dict(
                    dict(self.acquisition_range)
                ).to_dict()
            except TypeError as e:
                raise ValueError(
                    "acquisition_range must hold sad, magnification and angle_jitter, got "
                    f"{self.acquisition_range!r}"
                ) from e
        if self.latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {self.latent_channels}")
        if len(self.latent_size) != 3 or min(self.latent_size) < 2:
            raise ValueError(f"latent_size must be three sizes >= 2, got {self.latent_size}")
        if len(self.ct_spacing) != 3 or min(self.ct_spacing) <= 0:
            raise ValueError(f"ct_spacing must be three positive mm values, got {self.ct_spacing}")
        if self.downsample_factor < 1:
            raise ValueError(f"downsample_factor must be >= 1, got {self.downsample_factor}")
        if not self.unet_channels or min(self.unet_channels) < 1:
            raise ValueError(f"unet_channels must be positive, got {self.unet_channels}")
        if len(self.attention_levels) != len(self.unet_channels):
            raise ValueError(
                f"attention_levels {self.attention_levels} needs one entry per level of "
                f"unet_channels {self.unet_channels}"
            )
        if any(c % self.norm_num_groups for c in self.unet_channels):
            raise ValueError(
                f"every unet channel count {self.unet_channels} must be divisible by "
                f"norm_num_groups={self.norm_num_groups}"
            )
        for c, a in zip(self.unet_channels, self.attention_levels):
            if a and c % self.num_head_channels:
                raise ValueError(
                    f"attention level with {c} channels is not divisible by "
                    f"num_head_channels={self.num_head_channels}"
                )
        n_down = len(self.unet_channels) - 1
        if any(n % 2**n_down for n in self.latent_size):
            raise ValueError(
                f"latent_size {self.latent_size} must be divisible by 2^{n_down} for a UNet "
                f"with {len(self.unet_channels)} levels"
            )
        if not self.encoder_channels or min(self.encoder_channels) < 1:
            raise ValueError(f"encoder_channels must be positive, got {self.encoder_channels}")
        h, w = self.xray_shape
        f = self.encoder_downsample
        if h % f or w % f:
            raise ValueError(
                f"the detector {h}x{w} must be divisible by the X-ray encoder's downsampling "
                f"{f} (one stride-2 stage per encoder_channels entry)"
            )
        if self.token_grid < 1 or self.context_dim < 1 or self.backproject_channels < 1:
            raise ValueError("token_grid, context_dim and backproject_channels must be >= 1")
        if self.xray_scale <= 0:
            raise ValueError(f"xray_scale must be positive, got {self.xray_scale}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}"
            )
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if self.projection_weight < 0:
            raise ValueError(f"projection_weight must be >= 0, got {self.projection_weight}")
        if self.projection_weighting not in PROJECTION_WEIGHTINGS:
            raise ValueError(
                f"projection_weighting must be one of {PROJECTION_WEIGHTINGS}, "
                f"got {self.projection_weighting!r}"
            )
        if self.projection_step <= 0:
            raise ValueError(f"projection_step must be positive, got {self.projection_step}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not 1 <= self.sampler_steps <= self.num_train_timesteps:
            raise ValueError(
                f"sampler_steps must be in [1, {self.num_train_timesteps}], "
                f"got {self.sampler_steps}"
            )
        if int(self.num_samples) != self.num_samples or self.num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {self.num_samples}")
        if not 0 <= self.guidance_scale < math.inf:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Bounds on everything that sets an allocation."""
        if math.prod(self.latent_size) > MAX_LATENT_VOXELS:
            raise ValueError(
                f"latent_size {self.latent_size} has more than {MAX_LATENT_VOXELS:,} voxels"
            )
        h, w = self.xray_shape
        if h * w > MAX_DETECTOR_PIXELS:
            raise ValueError(f"geometry.detector_shape {h}x{w} has more than "
                             f"{MAX_DETECTOR_PIXELS:,} pixels")
        check_range("latent_channels", self.latent_channels, 1, MAX_CHANNELS)
        check_range("downsample_factor", self.downsample_factor, 1, 64)
        check_range("number of unet levels", len(self.unet_channels), 1, 8)
        check_range("unet_channels", max(self.unet_channels), 1, MAX_CHANNELS)
        check_range("number of encoder levels", len(self.encoder_channels), 1, 8)
        check_range("encoder_channels", max(self.encoder_channels), 1, MAX_CHANNELS)
        check_range("num_res_blocks", self.num_res_blocks, 1, 16)
        check_range("num_head_channels", self.num_head_channels, 1, MAX_CHANNELS)
        check_range("token_grid", self.token_grid, 1, 256)
        check_range("context_dim", self.context_dim, 1, MAX_CHANNELS)
        check_range("backproject_channels", self.backproject_channels, 1, MAX_CHANNELS)
        check_range("num_train_timesteps", self.num_train_timesteps, 2, 100_000)
        check_range("number of views", self.num_views, 1, 64)
        for s in self.ct_spacing:
            check_range("ct_spacing (mm)", s, 0.05, 20.0)
        for name in ("xray_scale", "projection_weight", "projection_step", "cond_drop_prob"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")

    # ------------------------------------------------------------------ derived
    @property
    def geometry_obj(self) -> Geometry:
        return Geometry.from_dict(dict(self.geometry))

    @property
    def acquisitions(self) -> AcquisitionRange:
        """The acquisitions the model accepts (its geometry's alone when not set)."""
        if self.acquisition_range is None:
            return AcquisitionRange.of(self.geometry_obj)
        return AcquisitionRange.from_dict(dict(self.acquisition_range))

    @property
    def num_views(self) -> int:
        return len(self.geometry["angles"])

    @property
    def xray_shape(self) -> tuple[int, int]:
        return tuple(self.geometry["detector_shape"])

    @property
    def encoder_downsample(self) -> int:
        return 2 ** len(self.encoder_channels)

    @property
    def latent_spacing(self) -> tuple[float, float, float]:
        """mm per latent voxel: the CT spacing times the autoencoder's downsampling."""
        return tuple(s * self.downsample_factor for s in self.ct_spacing)

    @property
    def ct_shape(self) -> tuple[int, int, int]:
        return tuple(n * self.downsample_factor for n in self.latent_size)

    @property
    def unet_in_channels(self) -> int:
        extra = self.num_views * self.backproject_channels if self.geometry_aware else 0
        return self.latent_channels + extra

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], source: str = "LatentDiffusionConfig", required=()
    ) -> LatentDiffusionConfig:
        """Checked field by field (types, the geometry's too, then ranges and sizes);
        errors name ``source``."""
        if isinstance(d, dict) and isinstance(d.get("geometry"), dict):
            check_fields(Geometry, d["geometry"], f"{source}: geometry")
        return build_config(cls, d, source, required)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "LatentDiffusionConfig") -> LatentDiffusionConfig:
        return cls.from_dict(parse_json(text, source), source)

    @classmethod
    def from_file(cls, path) -> LatentDiffusionConfig:
        """A saved config.json, validated whole before anything is built (the file named)."""
        return cls.from_dict(read_json_config(path), str(path), REQUIRED_IN_FILE)

    def replace(self, **changes: Any) -> LatentDiffusionConfig:
        return dataclasses.replace(self, **changes)


# Named sizes. "tiny": 3.6 M parameters, about 0.75 s per batch of 8 at 16^3 latents on a
# 2-core CPU (64^3 CT at 2 mm, 64 x 64 X-rays). "base": the clinical-resolution recipe,
# sized for the 8 x 32^3 latent of a 128^3 field at 1 mm ("kl-base-1mm") and 128^2 or
# 256^2 X-rays: four UNet levels (32, 16, 8, 4 latent voxels), attention (self and cross)
# at the two coarsest (512 and 64 tokens: no 32^3 or 16^3 attention matrix), a 16 x 16
# token grid per view, blocks checkpointed in training.
LATENT_DIFFUSION_CONFIGS: dict[str, Any] = {
    "tiny": lambda: LatentDiffusionConfig(),
    "base": lambda: LatentDiffusionConfig(
        unet_channels=(64, 128, 256, 256),
        attention_levels=(False, False, True, True),
        num_res_blocks=2,
        num_head_channels=32,
        norm_num_groups=32,
        encoder_channels=(32, 64, 128),
        token_grid=16,
        context_dim=256,
        backproject_channels=16,
        gradient_checkpointing=True,
    ),
}


def get_config(name: str, **overrides: Any) -> LatentDiffusionConfig:
    """A registry config by name with field overrides (validated again)."""
    if name not in LATENT_DIFFUSION_CONFIGS:
        raise ValueError(
            f"unknown latent diffusion config {name!r}; "
            f"choose from {list(LATENT_DIFFUSION_CONFIGS)}"
        )
    config = LATENT_DIFFUSION_CONFIGS[name]()
    return config.replace(**overrides) if overrides else config
