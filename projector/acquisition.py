"""The range of X-ray acquisitions a model accepts, and random acquisitions within it.

A model is trained for a *field*: a cube around the isocentre, seen by ``nominal`` views
(its config's Geometry). Real radiographs are taken at other distances: a C-arm puts the
isocentre half-way (source-to-isocentre ``sad`` 600-700 mm, source-to-detector ``sdd``
about 1000-1200 mm, magnification sdd/sad 1.5-1.9); an X-ray room puts the detector
behind the patient (``sdd`` 1000-1800 mm, the spine 100-250 mm in front of the detector,
magnification 1.05-1.3). Whatever the acquisition, x2ct resamples each image onto the
model's detector grid *at the isocentre*: the same number of pixels, each covering the
same millimetres of the isocentre plane as the nominal detector's,

    pixel spacing at the detector = nominal pixel at the isocentre * sdd / sad

so an acquisition differs from the nominal one only in the cone's divergence (sad) and in
its angles. The geometry-aware conditioning back-projects along each case's own rays.

``AcquisitionRange`` says which acquisitions a model was trained on (``sad`` range,
magnification range, angle jitter per view); :meth:`AcquisitionRange.sample` draws one
per view for training; :meth:`AcquisitionRange.check` refuses geometries outside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from x2ct.projector.geometry import Geometry

__all__ = ["AcquisitionRange", "isocentre_pixel", "on_model_detector"]


def isocentre_pixel(geometry: Geometry) -> tuple[float, float]:
    """(dv, du) mm that one detector pixel covers in the isocentre plane."""
    m = geometry.magnification
    return (geometry.pixel_spacing[0] / m, geometry.pixel_spacing[1] / m)


def on_model_detector(nominal: Geometry, angle: float, sad: float, sdd: float) -> Geometry:
    """A single view at ``angle`` with distances (sad, sdd) on the model's detector grid:
    ``nominal``'s pixel count and isocentre-plane pixel size (no detector offset: the
    isocentre projects on the image centre)."""
    iso = isocentre_pixel(nominal)
    m = 1.0 if nominal.parallel else sdd / sad
    return dataclasses.replace(
        nominal,
        sad=float(sad),
        sdd=float(sdd),
        pixel_spacing=(iso[0] * m, iso[1] * m),
        angles=(float(angle),),
        detector_offset=(0.0, 0.0),
    )


def _range(name: str, value) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"AcquisitionRange.{name} must be (low, high) with 0 < low <= high, "
                         f"got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class AcquisitionRange:
    """Acquisitions a model accepts.

    Attributes:
        sad: (low, high) source-to-isocentre distance in mm.
        magnification: (low, high) of sdd / sad (> 1: the detector is behind the isocentre).
        angle_jitter: degrees each view may turn from its nominal angle (real AP and
            lateral radiographs are never exactly orthogonal).
    """

    sad: tuple[float, float] = (541.0, 541.0)
    magnification: tuple[float, float] = (949.0 / 541.0, 949.0 / 541.0)
    angle_jitter: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sad", _range("sad", self.sad))
        object.__setattr__(self, "magnification", _range("magnification", self.magnification))
        if self.magnification[0] <= 1.0:
            raise ValueError(
                f"AcquisitionRange.magnification must exceed 1 (detector behind the "
                f"isocentre), got {self.magnification}"
            )
        if not (math.isfinite(self.angle_jitter) and 0.0 <= self.angle_jitter <= 20.0):
            raise ValueError(
                f"AcquisitionRange.angle_jitter must be in [0, 20] degrees, got {self.angle_jitter}"
            )

    @classmethod
    def of(cls, nominal: Geometry) -> AcquisitionRange:
        """The range holding only ``nominal``'s distances (a model trained on one)."""
        return cls((nominal.sad, nominal.sad), (nominal.magnification,) * 2, 0.0)

    def to_dict(self) -> dict:
        return {"sad": list(self.sad), "magnification": list(self.magnification),
                "angle_jitter": self.angle_jitter}

    @classmethod
    def from_dict(cls, d: dict) -> AcquisitionRange:
        return cls(**d)

    def describe(self) -> str:
        return (f"source-to-isocentre {self.sad[0]:g}-{self.sad[1]:g} mm, magnification "
                f"(source-to-detector / source-to-isocentre) {self.magnification[0]:.3g}-"
                f"{self.magnification[1]:.3g}, views within {self.angle_jitter:g} degrees of "
                "the model's angles")

    def sample(self, nominal: Geometry, generator: torch.Generator) -> list[Geometry]:
        """One random single-view Geometry per nominal view on the model's detector grid
        (:func:`on_model_detector`): sad log-uniform, magnification uniform, angle uniform
        within the jitter; drawn independently per view (an X-ray room takes each view
        on its own; a C-arm's views share distances, a special case)."""
        out = []
        for angle in nominal.angles:
            u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
            lo, hi = math.log(self.sad[0]), math.log(self.sad[1])
            sad = math.exp(lo + (hi - lo) * u[0])
            m = self.magnification[0] + (self.magnification[1] - self.magnification[0]) * u[1]
            jitter = self.angle_jitter * (2 * u[2] - 1)
            out.append(on_model_detector(nominal, angle + jitter, sad, sad * m))
        return out

    def check(self, geometries: Sequence[Geometry], nominal: Geometry, names=None) -> None:
        """Raise ValueError naming the view and the accepted range when a view's distances
        or angle fall outside this range (a small tolerance for rounding)."""
        if len(geometries) != nominal.num_views:
            raise ValueError(f"expected {nominal.num_views} views, got {len(geometries)}")
        names = names or [f"view {i}" for i in range(len(geometries))]
        for g, angle, name in zip(geometries, nominal.angles, names):
            problems = []
            if g.parallel != nominal.parallel:
                problems.append("parallel beam" if g.parallel else "cone beam")
            if not g.parallel:
                if not self.sad[0] * 0.999 <= g.sad <= self.sad[1] * 1.001:
                    problems.append(f"source-to-isocentre {g.sad:g} mm")
                m = g.sdd / g.sad
                if not self.magnification[0] * 0.999 <= m <= self.magnification[1] * 1.001:
                    problems.append(f"magnification {m:.3g}")
            for a in g.angles:
                turn = (a - angle + 180.0) % 360.0 - 180.0
                if abs(turn) > self.angle_jitter + 1e-6:
                    problems.append(f"angle {a:g} degrees (nominal {angle:g})")
            if problems:
                raise ValueError(
                    f"{name}: {', '.join(problems)} is outside what the model was trained "
                    f"for: {self.describe()}"
                )
