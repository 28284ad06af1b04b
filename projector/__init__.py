"""Differentiable X-ray projector: geometry, attenuation, ``project`` and its adjoint."""

from x2ct.projector.attenuation import DRR_SCALE, MU_WATER, hu_to_mu, mu_to_hu
from x2ct.projector.geometry import Geometry, view_vectors
from x2ct.projector.project import BACKENDS, backproject, project, resolve_backend, use_triton

__all__ = [
    "BACKENDS",
    "DRR_SCALE",
    "MU_WATER",
    "Geometry",
    "backproject",
    "hu_to_mu",
    "mu_to_hu",
    "project",
    "resolve_backend",
    "use_triton",
    "view_vectors",
]
