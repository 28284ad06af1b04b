"""X-ray imaging geometry (DESIGN.md, "Views").

World coordinates are millimetres in RAS+ with the volume centred on the isocentre (the
origin). A gantry angle ``t`` rotates the source about +Z:

    s(t) = (-sin t, cos t, 0)        unit vector from the isocentre toward the source
    u(t) = (-cos t, -sin t, 0)       detector column direction
    v    = (0, 0, -1)                detector row direction (row 0 is the most superior)
    source            = sad * s(t)
    detector centre   = -(sdd - sad) * s(t)
    pixel (i, j)      = detector centre + (j - (W-1)/2) du u + (i - (H-1)/2) dv v

t = 0 is the AP view (source anterior, column 0 at the patient's right); t = 90 is the
lateral view (source at the patient's left, column 0 anterior). A parallel beam is the
limit sad, sdd -> infinity: every ray runs along s(t) through its pixel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

__all__ = [
    "Geometry",
    "VIEW_VECTOR_SIZE",
    "rescale_views",
    "stack_views",
    "transform_views",
    "view_vectors",
]

# Per view: source (3), pixel (0, 0) centre (3), column step (3), row step (3), beam
# direction s(t) (3); all in world millimetres. Shared by the torch path and the kernels.
VIEW_VECTOR_SIZE = 15


def _check_finite_positive(name: str, values, *, allow_zero: bool = False) -> None:
    for x in values:
        if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
            raise ValueError(f"Geometry.{name} must be finite numbers, got {values!r}")
        if x < 0 or (x == 0 and not allow_zero):
            raise ValueError(f"Geometry.{name} must be positive, got {values!r}")


@dataclass(frozen=True)
class Geometry:
    """A C-arm acquisition: one cone (or parallel) beam per gantry angle.

    Args:
        sad: source-to-axis (isocentre) distance, in mm.
        sdd: source-to-detector distance, in mm; must exceed ``sad``.
        detector_shape: detector size in pixels, (H rows, W columns).
        pixel_spacing: detector pixel size in mm, (row spacing dv, column spacing du),
            in the same order as ``detector_shape``.
        angles: gantry angles in degrees, one image per angle; (0, 90) is AP and lateral.
        parallel: parallel beam instead of a cone beam (``sad``/``sdd`` then only place
            the detector; there is no magnification).
        detector_offset: (o_v, o_u) mm, the detector's centre moved in its own plane
            along the row direction v and the column direction u (the source does not
            move): the isocentre then projects (o_v / dv, o_u / du) pixels away from the
            image centre, toward row 0 and column 0 for positive offsets. The same
            shift as a pose's (d_v, d_u) (``x2ct.projector.pose``).

    The defaults follow a common C-arm / X2CT setup (sad 541 mm, sdd 949 mm) with a
    256 x 256 detector of 1.5 mm pixels: 384 mm at the detector, about 219 mm at the
    isocentre. ``Geometry.fit`` picks a detector that covers a given volume.
    """

    sad: float = 541.0
    sdd: float = 949.0
    detector_shape: tuple[int, int] = (256, 256)
    pixel_spacing: tuple[float, float] = (1.5, 1.5)
    angles: tuple[float, ...] = field(default=(0.0, 90.0))
    parallel: bool = False
    detector_offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so that configs loaded from JSON compare equal.
        object.__setattr__(self, "detector_shape", tuple(self.detector_shape))
        object.__setattr__(self, "pixel_spacing", tuple(float(p) for p in self.pixel_spacing))
        object.__setattr__(self, "angles", tuple(float(a) for a in self.angles))
        offset = tuple(self.detector_offset)
        if len(offset) != 2 or not all(
            isinstance(o, (int, float)) and not isinstance(o, bool) and math.isfinite(o)
            for o in offset
        ):
            raise ValueError(
                f"Geometry.detector_offset must be two finite mm values (o_v, o_u), "
                f"got {self.detector_offset!r}"
            )
        object.__setattr__(self, "detector_offset", tuple(float(o) for o in offset))
        _check_finite_positive("sad", [self.sad])
        _check_finite_positive("sdd", [self.sdd])
        if not self.parallel and self.sdd <= self.sad:
            raise ValueError(
                f"Geometry.sdd ({self.sdd} mm) must exceed Geometry.sad ({self.sad} mm): "
                "the detector lies beyond the isocentre"
            )
        if len(self.detector_shape) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in self.detector_shape
        ):
            raise ValueError(
                f"Geometry.detector_shape must be two positive integers (H, W), "
                f"got {self.detector_shape!r}"
            )
        if len(self.pixel_spacing) != 2:
            raise ValueError(f"Geometry.pixel_spacing must be (dv, du), got {self.pixel_spacing!r}")
        _check_finite_positive("pixel_spacing", self.pixel_spacing)
        if len(self.angles) == 0:
            raise ValueError("Geometry.angles must name at least one view")
        for a in self.angles:
            if not math.isfinite(a):
                raise ValueError(f"Geometry.angles must be finite degrees, got {self.angles!r}")

    @property
    def num_views(self) -> int:
        return len(self.angles)

    def split(self) -> list[Geometry]:
        """One single-view Geometry per angle (the same detector and distances)."""
        return [dataclasses.replace(self, angles=(a,)) for a in self.angles]

    @property
    def magnification(self) -> float:
        """Detector size over object size at the isocentre (1 for a parallel beam)."""
        return 1.0 if self.parallel else self.sdd / self.sad

    @classmethod
    def fit(
        cls,
        volume_shape: tuple[int, int, int],
        spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
        detector_shape: tuple[int, int] | None = None,
        *,
        margin: float = 1.02,
        **kwargs,
    ) -> Geometry:
        """A geometry whose detector just covers the volume in every one of its views.

        The shadow of a box is the hull of its eight projected corners, so square pixels
        are chosen from the corners of the volume's support (voxel index -1 to n, where
        the trilinear interpolant can be non-zero), magnified from each corner's depth,
        for each angle, with ``margin`` to spare. ``detector_shape`` defaults to
        (Z, max(X, Y)) pixels. Other fields (``sad``, ``angles``, ...) pass through
        ``kwargs``.
        """
        if len(volume_shape) != 3 or len(spacing) != 3:
            raise ValueError(
                f"volume_shape and spacing must have three entries, got {volume_shape}, {spacing}"
            )
        if detector_shape is None:
            detector_shape = (int(volume_shape[2]), int(max(volume_shape[0], volume_shape[1])))
        probe = cls(detector_shape=tuple(detector_shape), **kwargs)
        half = [0.5 * (n + 1) * s for n, s in zip(volume_shape, spacing)]
        corners = [(a * half[0], b * half[1], c * half[2])
                   for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]
        need_u = need_v = 0.0
        for angle in probe.angles:
            t = math.radians(angle)
            s_dir = (-math.sin(t), math.cos(t))  # toward the source (z component 0)
            u_dir = (-math.cos(t), -math.sin(t))  # detector columns
            for x, y, z in corners:
                depth = x * s_dir[0] + y * s_dir[1]
                if not probe.parallel and depth >= probe.sad:
                    raise ValueError(
                        f"the volume ({[round(h, 1) for h in half]} mm half size) reaches "
                        f"past the source (sad {probe.sad} mm)"
                    )
                mag = 1.0 if probe.parallel else probe.sdd / (probe.sad - depth)
                need_u = max(need_u, abs(x * u_dir[0] + y * u_dir[1]) * mag)
                need_v = max(need_v, abs(z) * mag)
        height, width = probe.detector_shape
        pixel = margin * max(2 * need_u / width, 2 * need_v / height)
        return cls(detector_shape=probe.detector_shape, pixel_spacing=(pixel, pixel), **kwargs)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["detector_shape"] = list(self.detector_shape)
        d["pixel_spacing"] = list(self.pixel_spacing)
        d["angles"] = list(self.angles)
        d["detector_offset"] = list(self.detector_offset)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(**d)


def view_vectors(geometry: Geometry, dtype=torch.float64, device=None) -> torch.Tensor:
    """Per-view ray vectors in world mm, (V, 15): source, pixel (0,0), column step, row
    step and beam direction s(t). Computed in float64 and cast, so both backends start
    from the same rounded numbers."""
    rows = []
    dv, du = geometry.pixel_spacing
    height, width = geometry.detector_shape
    for angle in geometry.angles:
        t = math.radians(angle)
        s = (-math.sin(t), math.cos(t), 0.0)
        u = (-math.cos(t), -math.sin(t), 0.0)
        v = (0.0, 0.0, -1.0)
        o_v, o_u = geometry.detector_offset
        source = [geometry.sad * c for c in s]
        centre = [-(geometry.sdd - geometry.sad) * c + o_u * cu + o_v * cv
                  for c, cu, cv in zip(s, u, v)]
        col_step = [du * c for c in u]
        row_step = [dv * c for c in v]
        origin = [
            c - 0.5 * (width - 1) * cs - 0.5 * (height - 1) * rs
            for c, cs, rs in zip(centre, col_step, row_step)
        ]
        rows.append(source + origin + col_step + row_step + list(s))
    return torch.tensor(rows, dtype=torch.float64).to(dtype=dtype, device=device)


def stack_views(geometries: Sequence[Geometry], dtype=torch.float64, device=None) -> torch.Tensor:
    """(V, 15) view vectors of several geometries, in order (e.g. an AP and a lateral
    radiograph taken at different distances). All must share the detector's pixel count
    and the beam type, since one (V, H, W) image stack holds them."""
    geometries = list(geometries)
    if not geometries:
        raise ValueError("stack_views needs at least one geometry")
    first = geometries[0]
    for g in geometries[1:]:
        if g.detector_shape != first.detector_shape or g.parallel != first.parallel:
            raise ValueError(
                "geometries stacked into one image stack must share detector_shape and "
                f"parallel, got {first.detector_shape}/{first.parallel} and "
                f"{g.detector_shape}/{g.parallel}"
            )
    views = torch.cat([view_vectors(g, torch.float64) for g in geometries])
    return views.to(dtype=dtype, device=device)


def transform_views(
    views: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor
) -> torch.Tensor:
    """View vectors (..., 15) moved by the rigid motion ``x -> rotation @ x + translation``
    (rotation (3, 3), translation (3,) mm): points (source, pixel (0, 0)) are moved,
    directions (column step, row step, beam) only rotated. Rendering a volume with the
    moved views equals rendering the volume moved by the inverse motion with the original
    views."""
    r = rotation.to(views)
    t = translation.to(views)
    p = views.unflatten(-1, (5, 3))  # (..., 5, 3)
    moved = p @ r.T
    moved = torch.cat([moved[..., :2, :] + t, moved[..., 2:, :]], -2)
    return moved.flatten(-2)


def rescale_views(
    views: torch.Tensor, shape: Sequence[int], new_shape: Sequence[int]
) -> torch.Tensor:
    """View vectors (..., 15) of a (H, W) detector resampled onto (h, w) pixels covering
    the same physical extent (as ``x2ct.diffusion.backprojection.rescale_geometry`` does
    for a Geometry): the pixel steps grow by H/h and W/w, the centre stays."""
    (height, width), (h, w) = (tuple(int(n) for n in s) for s in (shape, new_shape))
    p = views.unflatten(-1, (5, 3))
    source, pix0, col, row, beam = p.unbind(-2)
    centre = pix0 + 0.5 * (width - 1) * col + 0.5 * (height - 1) * row
    col2, row2 = col * (width / w), row * (height / h)
    pix2 = centre - 0.5 * (w - 1) * col2 - 0.5 * (h - 1) * row2
    return torch.stack([source, pix2, col2, row2, beam], -2).flatten(-2)
