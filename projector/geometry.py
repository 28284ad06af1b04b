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

import math
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["Geometry", "view_vectors", "VIEW_VECTOR_SIZE"]

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

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so that configs loaded from JSON compare equal.
        object.__setattr__(self, "detector_shape", tuple(self.detector_shape))
        object.__setattr__(self, "pixel_spacing", tuple(float(p) for p in self.pixel_spacing))
        object.__setattr__(self, "angles", tuple(float(a) for a in self.angles))
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
        source = [geometry.sad * c for c in s]
        centre = [-(geometry.sdd - geometry.sad) * c for c in s]
        col_step = [du * c for c in u]
        row_step = [dv * c for c in v]
        origin = [
            c - 0.5 * (width - 1) * cs - 0.5 * (height - 1) * rs
            for c, cs, rs in zip(centre, col_step, row_step)
        ]
        rows.append(source + origin + col_step + row_step + list(s))
    return torch.tensor(rows, dtype=torch.float64).to(dtype=dtype, device=device)
