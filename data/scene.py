"""A case for x2ct: the model's field cut from a patient CT, and X-rays through the whole body.

A radiograph sees the whole patient; the model reconstructs a cube around the spine (its
*field*, e.g. 64^3 voxels of 2 mm) centred on the imaging isocentre. This module makes
both from one CT volume ("the body": a whole patient CT, or a phantom drawn on a grid
that holds its whole torso), in one frame:

- the body's *centred frame*: millimetres, RAS+, voxel (a, b, c) of an (X, Y, Z) volume
  at ((a - (X-1)/2) sx, (b - (Y-1)/2) sy, (c - (Z-1)/2) sz) (DESIGN.md);
- the *field frame*: the imaging system's, with the isocentre at the origin and the
  nominal views of ``x2ct.projector.Geometry`` (source about +Z, AP at 0 degrees);
- a :class:`Placement` says where the field lies in the body: ``p_body = R p_field + c``.
  Training draws placements at random around the spine (patients are never placed
  alike: shifted along every axis, turned about the body axis, tilted);
  ``reconstruct.py --ct`` and evaluation use the spine's location (x2ct.data.localise)
  with the identity rotation, unless told otherwise.

The target is the body resampled on the field's grid (trilinear; the body is smoothed
first where its voxels are finer than the field's: :func:`antialias`). The X-rays are
rendered through the whole body along the views moved into the body frame
(``x2ct.projector.transform_views``), so no resampled copy of the body is made and a ray
crosses all the tissue it would cross in a patient. Attenuation is ``hu_to_mu`` of the
body's HU, not clipped to the model's HU window (metal attenuates as metal).

A CT that does not hold the whole body (cut at the skin, a small reconstruction field
around the spine) gives X-rays through what it holds: their lateral path lengths are too
short. :func:`body_truncation` measures the fraction of the body outline that touches the
volume's in-plane border; callers report it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from x2ct.projector import Geometry, hu_to_mu, project_views, transform_views, view_vectors

__all__ = [
    "Placement",
    "antialias",
    "body_truncation",
    "field_affine",
    "random_placement",
    "render_drr",
    "sample_field",
    "views_in_body",
]

AIR_HU = -1000.0


def _rotation(turn_deg: float, tilt_x_deg: float, tilt_y_deg: float) -> np.ndarray:
    """R = Rz(turn) Rx(tilt_x) Ry(tilt_y): a turn about the body axis (+Z) after tilts
    about the left-right (X) and anterior-posterior (Y) axes."""
    a, b, c = (math.radians(v) for v in (turn_deg, tilt_x_deg, tilt_y_deg))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class Placement:
    """Where the field lies in the body: ``p_body = rotation @ p_field + centre`` (mm).

    Attributes:
        centre: (3,) mm, the field's centre (the isocentre) in the body's centred frame.
        rotation: (3, 3) rotation; its columns are the field's axes in the body frame.
    """

    centre: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))

    def __post_init__(self) -> None:
        c = tuple(float(v) for v in np.asarray(self.centre, dtype=np.float64).reshape(3))
        r = np.asarray(self.rotation, dtype=np.float64).reshape(3, 3)
        if not all(math.isfinite(v) for v in c) or not np.all(np.isfinite(r)):
            raise ValueError(f"Placement needs finite numbers, got {self.centre}, {self.rotation}")
        if not np.allclose(r @ r.T, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise ValueError(f"Placement.rotation must be a rotation matrix, got {r.tolist()}")
        object.__setattr__(self, "centre", c)
        object.__setattr__(self, "rotation", tuple(tuple(float(v) for v in row) for row in r))

    @classmethod
    def from_angles(cls, centre, turn_deg=0.0, tilt_x_deg=0.0, tilt_y_deg=0.0) -> Placement:
        """The field turned by ``turn_deg`` about the body axis and tilted about X and Y."""
        return cls(tuple(centre), tuple(map(tuple, _rotation(turn_deg, tilt_x_deg, tilt_y_deg))))

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.rotation, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"centre": list(self.centre), "rotation": [list(r) for r in self.rotation]}

    @classmethod
    def from_dict(cls, d: dict) -> Placement:
        return cls(tuple(d["centre"]), tuple(map(tuple, d["rotation"])))

    def moved(self, shift_mm=(0.0, 0.0, 0.0), turn_deg=0.0, tilt_x_deg=0.0, tilt_y_deg=0.0
              ) -> Placement:
        """This placement shifted (mm, body frame) and turned further (about the field's
        own centre)."""
        r = _rotation(turn_deg, tilt_x_deg, tilt_y_deg) @ self.matrix
        c = np.asarray(self.centre) + np.asarray(shift_mm, dtype=np.float64)
        return Placement(tuple(c), tuple(map(tuple, r)))


def random_placement(
    centre: Sequence[float],
    generator: np.random.Generator,
    max_shift_mm: float | Sequence[float] = 20.0,
    max_turn_deg: float = 10.0,
    max_tilt_deg: float = 5.0,
) -> Placement:
    """A field around ``centre`` (mm, body frame): shifted uniformly within
    +-``max_shift_mm`` per axis, turned within +-``max_turn_deg`` about the body axis and
    tilted within +-``max_tilt_deg`` about X and Y (patients lie turned and tilted on
    the table; a C-arm is never centred exactly on the spine)."""
    shift = np.broadcast_to(np.asarray(max_shift_mm, dtype=np.float64), (3,))
    if np.any(shift < 0) or max_turn_deg < 0 or max_tilt_deg < 0:
        raise ValueError("placement ranges must be >= 0")
    c = np.asarray(centre, dtype=np.float64) + generator.uniform(-1, 1, 3) * shift
    turn = generator.uniform(-max_turn_deg, max_turn_deg)
    tx, ty = generator.uniform(-max_tilt_deg, max_tilt_deg, 2)
    return Placement.from_angles(tuple(c), turn, tx, ty)


def antialias(volume: np.ndarray, spacing: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """Gaussian smoothing before resampling from ``spacing`` to the coarser ``target``
    (per axis sigma = (target / spacing - 1) / 2 voxels, scikit-image's ``rescale`` rule,
    as x2ct.data.AntiAliasd); the volume itself where nothing is coarser."""
    sigma = np.maximum(np.asarray(target, float) / np.asarray(spacing, float) - 1.0, 0.0) / 2
    if not np.any(sigma > 0.1):
        return volume
    return ndimage.gaussian_filter(np.asarray(volume, dtype=np.float32), sigma, mode="nearest")


def _field_points(shape: Sequence[int], spacing: Sequence[float]) -> torch.Tensor:
    """(X, Y, Z, 3) float64 mm coordinates of the field's voxel centres, field frame."""
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s
            for n, s in zip(shape, spacing)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)


def sample_field(
    volume,
    spacing: Sequence[float],
    placement: Placement,
    shape: Sequence[int],
    field_spacing: Sequence[float],
    mode: str = "bilinear",
    fill: float = AIR_HU,
) -> torch.Tensor:
    """The body ``volume`` (X, Y, Z) at ``spacing`` resampled on the field's grid
    ``shape`` x ``field_spacing`` placed by ``placement``: (X', Y', Z') float32.
    ``mode`` "bilinear" (trilinear, intensities; smooth first with :func:`antialias`) or
    "nearest" (labels); outside the body volume the value is ``fill``."""
    vol = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (X, Y, Z), got shape {tuple(vol.shape)}")
    q = _field_points(shape, field_spacing)  # (X', Y', Z', 3)
    p = q @ torch.from_numpy(placement.matrix).T + torch.tensor(placement.centre)
    n = torch.tensor(vol.shape, dtype=torch.float64)
    s = torch.tensor(tuple(float(v) for v in spacing), dtype=torch.float64)
    index = p / s + (n - 1) / 2  # voxel coordinates in the body
    norm = 2 * index / (n - 1).clamp_min(1) - 1  # grid_sample, align_corners=True
    grid = norm.flip(-1).float()[None]  # (1, X', Y', Z', 3) as (z, y, x) -> (W, H, D) order
    # grid_sample's 5-D input is (N, C, D, H, W) = (1, 1, X, Y, Z): its last grid entry
    # indexes W = Z, so the (x, y, z) voxel coordinates go in reversed order
    out = F.grid_sample(
        (vol - fill)[None, None], grid, mode=mode, padding_mode="zeros", align_corners=True
    )
    return out[0, 0] + fill


def views_in_body(views: torch.Tensor, placement: Placement) -> torch.Tensor:
    """View vectors (..., V, 15) in the field frame -> the same rays in the body frame."""
    r = torch.from_numpy(placement.matrix)
    return transform_views(views.double(), r, torch.tensor(placement.centre, dtype=torch.float64))


def render_drr(
    hu,
    spacing: Sequence[float],
    placement: Placement,
    views: torch.Tensor | Geometry,
    detector_shape: Sequence[int] | None = None,
    step: float = 0.5,
    parallel: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Line integrals (V, H, W) of ``hu_to_mu(hu)`` through the whole body ``hu``
    (X, Y, Z) along ``views`` ((V, 15) view vectors in the field frame, or a Geometry)
    placed by ``placement``."""
    if isinstance(views, Geometry):
        detector_shape, parallel = views.detector_shape, views.parallel
        views = view_vectors(views)
    if detector_shape is None:
        raise ValueError("detector_shape is needed with view vectors")
    mu = hu_to_mu(torch.as_tensor(np.asarray(hu), dtype=torch.float32))[None, None]
    body_views = views_in_body(views, placement).float()
    return project_views(mu, body_views, detector_shape, spacing, step, parallel, backend)[0]


def field_affine(
    body_affine: np.ndarray,
    body_shape: Sequence[int],
    body_spacing: Sequence[float],
    placement: Placement,
    field_shape: Sequence[int],
    field_spacing: Sequence[float],
) -> np.ndarray:
    """The (4, 4) affine of the field's voxels in the body file's world (scanner) mm:
    field voxel -> field mm -> body centred mm -> body voxel -> ``body_affine``; a
    reconstruction saved with it lands where the field lies in the patient."""
    fs = np.diag([*map(float, field_spacing), 1.0])
    fs[:3, 3] = -(np.asarray(field_shape, float) - 1) / 2 * np.asarray(field_spacing, float)
    place = np.eye(4)
    place[:3, :3] = placement.matrix
    place[:3, 3] = placement.centre
    to_voxel = np.diag([*(1.0 / np.asarray(body_spacing, float)), 1.0])
    to_voxel[:3, 3] = (np.asarray(body_shape, float) - 1) / 2
    return np.asarray(body_affine, float) @ to_voxel @ place @ fs


def body_truncation(hu: np.ndarray, body_hu: float = -500.0) -> float:
    """Fraction of the volume's in-plane border voxels (the four side faces) that lie in
    the body (HU > ``body_hu``): 0 for a CT that holds the whole body with air around
    it; large for a CT cut at the skin or reconstructed on a small field."""
    hu = np.asarray(hu)
    faces = [hu[0], hu[-1], hu[:, 0], hu[:, -1]]
    inside = sum(int((f > body_hu).sum()) for f in faces)
    total = sum(f.size for f in faces)
    return inside / max(total, 1)
