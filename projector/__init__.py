"""Differentiable X-ray projector: geometry, attenuation, ``project`` and its adjoint."""

from x2ct.projector.acquisition import AcquisitionRange, isocentre_pixel, on_model_detector
from x2ct.projector.attenuation import DRR_SCALE, MU_WATER, hu_to_mu, mu_to_hu
from x2ct.projector.geometry import (
    Geometry,
    rescale_views,
    stack_views,
    transform_views,
    view_vectors,
)
from x2ct.projector.materials import (
    ENERGIES_KEV,
    MATERIALS,
    linear_attenuation,
    mass_attenuation,
)
from x2ct.projector.pose import (
    PoseFit,
    pose_views,
    posed_geometry,
    posed_view_vectors,
    project_posed,
    refine_pose,
    shift_to_nominal,
)
from x2ct.projector.project import (
    BACKENDS,
    backproject,
    backproject_views,
    project,
    project_views,
    resolve_backend,
    use_triton,
)
from x2ct.projector.radiograph import (
    BASIS,
    HU_BONE,
    HU_METAL,
    Radiograph,
    decompose_hu,
    material_paths,
    simulate_radiograph,
)
from x2ct.projector.spectra import half_value_layer, mean_energy, spectrum
from x2ct.projector.style import REFERENCE_KEV, RadiographStyle

__all__ = [
    "AcquisitionRange",
    "isocentre_pixel",
    "on_model_detector",
    "BACKENDS",
    "BASIS",
    "ENERGIES_KEV",
    "HU_BONE",
    "HU_METAL",
    "MATERIALS",
    "REFERENCE_KEV",
    "Radiograph",
    "RadiographStyle",
    "decompose_hu",
    "half_value_layer",
    "linear_attenuation",
    "mass_attenuation",
    "material_paths",
    "mean_energy",
    "simulate_radiograph",
    "spectrum",
    "DRR_SCALE",
    "MU_WATER",
    "Geometry",
    "PoseFit",
    "backproject",
    "backproject_views",
    "hu_to_mu",
    "mu_to_hu",
    "pose_views",
    "posed_geometry",
    "posed_view_vectors",
    "project",
    "project_posed",
    "project_views",
    "rescale_views",
    "stack_views",
    "transform_views",
    "refine_pose",
    "resolve_backend",
    "shift_to_nominal",
    "use_triton",
    "view_vectors",
]
