"""Conditional latent diffusion: X-ray encoder, geometry-aware back-projection, UNet,
noise schedule, samplers, losses and the reconstruction pipeline."""

from x2ct.diffusion.config import (
    LATENT_DIFFUSION_CONFIGS,
    SAMPLERS,
    LatentDiffusionConfig,
    get_config,
)
from x2ct.diffusion.denoiser import Condition, LatentDenoiser
from x2ct.diffusion.guidance import ProjectionGuidance
from x2ct.diffusion.loss import DiffusionLoss
from x2ct.diffusion.pipeline import Reconstruction, Reconstructor
from x2ct.diffusion.pose import PoseRefinement
from x2ct.diffusion.projection_loss import ProjectionLoss
from x2ct.diffusion.regression import RegressionLoss
from x2ct.diffusion.schedule import NoiseSchedule

__all__ = [
    "LATENT_DIFFUSION_CONFIGS",
    "SAMPLERS",
    "Condition",
    "DiffusionLoss",
    "LatentDenoiser",
    "LatentDiffusionConfig",
    "NoiseSchedule",
    "PoseRefinement",
    "ProjectionGuidance",
    "ProjectionLoss",
    "Reconstruction",
    "Reconstructor",
    "RegressionLoss",
    "get_config",
]
