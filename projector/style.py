"""``RadiographStyle``: how a radiograph is acquired and stored, and its random draws.

Used by ``x2ct.projector.radiograph.simulate_radiograph``; every length is in mm at the
detector. Ranges and typical values are cited where they are set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from x2ct.projector.materials import MATERIALS, mass_attenuation
from x2ct.projector.spectra import SPECTRUM_MODELS

__all__ = ["REFERENCE_KEV", "RadiographStyle"]


def _reference_kev() -> float:
    """The energy at which water's mu equals MU_WATER (1/mm), on the log-log interpolant."""
    from x2ct.projector.attenuation import MU_WATER

    lo, hi = 10.0, 150.0
    target = MU_WATER * 10.0 / MATERIALS["water"].density  # cm^2/g
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if mass_attenuation("water", [mid])[0] > target:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


REFERENCE_KEV = _reference_kev()
"""About 64.6 keV: where NISTIR 5632 water has mu = ``MU_WATER`` = 0.02/mm. The ideal
style is monochromatic here, and ``decompose_hu`` reproduces ``hu_to_mu`` exactly here."""


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _chance(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g, dtype=torch.float64)) < p


@dataclass(frozen=True)
class RadiographStyle:
    """How one radiograph is acquired and stored. Lengths are mm at the detector.

    Beam: ``kvp`` (None: monochromatic at ``mono_kev``), total filtration
    ``filtration_mm_al`` and ``filtration_mm_cu``, ``anode_angle_deg``, ``spectrum_model``
    (``x2ct.projector.spectra.spectrum``).

    Exposure: ``photons_per_mm2``, quanta per mm^2 of the unattenuated beam at the
    detector (None: noiseless). An estimate for scale: a lumbar AP at about 3 mGy
    entrance air kerma gives, by the inverse square law, about 1.4 mGy at the detector
    plane outside the patient, some 3e7 photons/mm^2 of an 80 kVp beam (about 2.5e4
    photons/mm^2 per uGy); a C-arm fluoroscopy frame is 100 times less.
    ``electronic_noise``: standard deviation of additive detector noise, in quanta per
    pixel.

    Scatter: ``spr_20cm``, the scatter-to-primary ratio behind 20 cm of water-equivalent
    tissue, growing as ``(t_w / 20 cm) ** spr_exponent``; ``scatter_sigma_mm``, the width
    of the scatter kernel. Without a grid a 20-25 cm abdomen gives SPR 3-5 in a large field;
    a grid (ratio 10-12) removes 80-90% of the scatter (Bushberg et al. 2012, sec. 7.4;
    IAEA handbook 2014, sec. 6.3.4), an air gap (C-arm) less.

    ``heel``: relative intensity change from the top row to the bottom row (the anode-
    cathode axis along the patient's long axis; the cathode end of a 43 cm field at 100 cm
    can receive up to about 45% more than the anode end, K. L. Bontrager and J. P.
    Lampignano, *Textbook of Radiographic Positioning and Related Anatomy*; a flat
    panel's gain calibration removes much of it, so draws stay within 25%).

    Detector: ``csi_mg_cm2``, areal density of the CsI:Tl scintillator (indirect flat
    panels use 400-600 um needles, about 150-250 mg/cm^2; 0: an ideal absorber);
    ``blur_mm`` (Gaussian sigma, or Lorentzian half width at half maximum) with
    ``blur_kind`` "gaussian" or "lorentzian" (MTF ``exp(-2 pi^2 sigma^2 f^2)`` or
    ``exp(-2 pi gamma f)``).

    Display: ``window`` = (low, high) percentiles of the line integral in the exposed
    field mapped to black and white (None: the fixed linear map ``line_integral /
    DRR_SCALE``, x2ct's DRR images); ``enhancement`` = ((amount, sigma_mm), ...) unsharp
    masks in the log domain (multi-scale contrast enhancement as X-ray rooms apply);
    ``gamma``; ``sigmoid`` gain (0: off); ``lut``, a monotone curve sampled at equally
    spaced inputs from 0 to 1 (None: off); ``invert`` (MONOCHROME1); ``bits`` (8, 12, 16);
    ``collimation`` = fractions (top, bottom, left, right) of the image left unexposed
    (white); ``marker_seed`` (None: no burned-in markers) places a lead letter marker and
    a text strip.
    """

    kvp: float | None = 90.0
    mono_kev: float = REFERENCE_KEV
    filtration_mm_al: float = 3.0
    filtration_mm_cu: float = 0.0
    anode_angle_deg: float = 12.0
    spectrum_model: str = "auto"
    photons_per_mm2: float | None = 1e7
    electronic_noise: float = 0.0
    spr_20cm: float = 0.4
    spr_exponent: float = 1.0
    scatter_sigma_mm: float = 40.0
    heel: float = 0.0
    csi_mg_cm2: float = 200.0
    blur_mm: float = 0.15
    blur_kind: str = "gaussian"
    window: tuple[float, float] | None = (0.5, 99.5)
    enhancement: tuple[tuple[float, float], ...] = ()
    gamma: float = 1.0
    sigmoid: float = 0.0
    lut: tuple[float, ...] | None = None
    invert: bool = False
    bits: int = 12
    collimation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    marker_seed: int | None = None

    def __post_init__(self) -> None:
        def fail(field: str, expected: str) -> None:
            raise ValueError(
                f"RadiographStyle.{field} must be {expected}, got {getattr(self, field)!r}"
            )

        def finite(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        if self.kvp is not None and not (finite(self.kvp) and 30 <= self.kvp <= 150):
            fail("kvp", "None or a tube voltage in [30, 150] kV")
        if not (finite(self.mono_kev) and 10 <= self.mono_kev <= 150):
            fail("mono_kev", "an energy in [10, 150] keV")
        for name in ("filtration_mm_al", "filtration_mm_cu", "electronic_noise", "spr_20cm",
                     "scatter_sigma_mm", "csi_mg_cm2", "blur_mm", "sigmoid"):
            if not (finite(getattr(self, name)) and getattr(self, name) >= 0):
                fail(name, "a finite number >= 0")
        if self.spectrum_model not in SPECTRUM_MODELS:
            fail("spectrum_model", f"one of {SPECTRUM_MODELS}")
        if self.photons_per_mm2 is not None and not (
            finite(self.photons_per_mm2) and self.photons_per_mm2 > 0
        ):
            fail("photons_per_mm2", "None (noiseless) or a positive fluence")
        if not (finite(self.spr_exponent) and 0 <= self.spr_exponent <= 3):
            fail("spr_exponent", "in [0, 3]")
        if not (finite(self.heel) and abs(self.heel) < 1):
            fail("heel", "a relative change in (-1, 1)")
        if self.blur_kind not in ("gaussian", "lorentzian"):
            fail("blur_kind", "'gaussian' or 'lorentzian'")
        if self.window is not None:
            object.__setattr__(self, "window", tuple(float(p) for p in self.window))
            lo, hi = self.window if len(self.window) == 2 else (1.0, 0.0)
            if not (0 <= lo < hi <= 100):
                fail("window", "None or percentiles (low, high) with 0 <= low < high <= 100")
        enhancement = tuple(tuple(float(v) for v in pair) for pair in self.enhancement)
        object.__setattr__(self, "enhancement", enhancement)
        if not all(len(p) == 2 and p[0] >= 0 and p[1] > 0 for p in enhancement):
            fail("enhancement", "pairs (amount >= 0, sigma_mm > 0)")
        if not (finite(self.gamma) and self.gamma > 0):
            fail("gamma", "positive")
        if self.lut is not None:
            object.__setattr__(self, "lut", tuple(float(v) for v in self.lut))
            lut = np.asarray(self.lut)
            if len(lut) < 2 or lut[0] != 0 or lut[-1] != 1 or np.any(np.diff(lut) < 0):
                fail("lut", "None or a non-decreasing curve from 0 to 1 (two or more values)")
        if self.bits not in (8, 12, 16):
            fail("bits", "8, 12 or 16")
        object.__setattr__(self, "collimation", tuple(float(c) for c in self.collimation))
        c = self.collimation
        if len(c) != 4 or min(c) < 0 or c[0] + c[1] >= 0.9 or c[2] + c[3] >= 0.9:
            fail("collimation", "fractions (top, bottom, left, right) >= 0 leaving >= 10%")

    @property
    def max_value(self) -> int:
        """The largest stored pixel value, ``2**bits - 1``."""
        return 2**self.bits - 1

    @classmethod
    def ideal(cls, bits: int = 16) -> RadiographStyle:
        """Monochromatic at ``REFERENCE_KEV``, no scatter, noise, blur or heel, linear
        display: ``line_integral`` is x2ct's DRR and ``display / (2**bits - 1)`` is
        ``clip(drr / DRR_SCALE, 0, 1)``."""
        return cls(kvp=None, photons_per_mm2=None, spr_20cm=0.0, csi_mg_cm2=0.0,
                   blur_mm=0.0, window=None, bits=bits)

    @classmethod
    def sample(cls, generator: torch.Generator, view: str = "any") -> RadiographStyle:
        """A random style for training augmentation, deterministic per generator state.

        Tube voltage from spine radiography protocols: lumbar AP 75-90 kV and lateral
        80-95 kV in the European Guidelines on Quality Criteria for Diagnostic
        Radiographic Images (EUR 16260, 1996); 80-120 kV found optimal for lumbar spine on
        CsI flat panels (C. S. Moore et al., Br. J. Radiol. 93 (2020) 20200565); C-arms
        run 60-120 kV. ``view``: "ap" samples 65-105 kV, "lateral" 75-115 kV, "any" 65-115
        kV, in whole kV as generators set them. Everything else from the ranges in the
        class docstring, each effect present with some probability.
        """
        g = generator
        kv_range = {"ap": (65, 105), "lateral": (75, 115), "any": (65, 115)}
        if view not in kv_range:
            raise ValueError(f"view must be one of {sorted(kv_range)}, got {view!r}")
        kvp = float(round(_uniform(g, *kv_range[view])))
        cu = _uniform(g, 0.05, 0.3) if _chance(g, 0.4) else 0.0
        grid = _chance(g, 0.7)
        spr = _uniform(g, 0.15, 0.7) if grid else _uniform(g, 0.7, 3.5)
        heel = _uniform(g, -0.25, 0.25) if _chance(g, 0.5) else 0.0
        enhancement = tuple(
            (_uniform(g, 0.2, 1.5), math.exp(_uniform(g, math.log(1.0), math.log(25.0))))
            for _ in range(int(torch.randint(0, 3, (), generator=g)))
        )
        lut = None
        if _chance(g, 0.3):
            steps = torch.rand(8, generator=g, dtype=torch.float64) + 0.2
            lut = (0.0, *(torch.cumsum(steps, 0) / steps.sum()).tolist())
            lut = lut[:-1] + (1.0,)
        collimation = (0.0, 0.0, 0.0, 0.0)
        if _chance(g, 0.5):
            collimation = tuple(_uniform(g, 0.0, 0.12) * _chance(g, 0.6) for _ in range(4))
        bits = (8, 12, 16)[int(torch.multinomial(torch.tensor([0.3, 0.4, 0.3]), 1,
                                                 generator=g))]
        return cls(
            kvp=kvp,
            filtration_mm_al=_uniform(g, 2.5, 4.5),
            filtration_mm_cu=cu,
            anode_angle_deg=_uniform(g, 10.0, 16.0),
            photons_per_mm2=math.exp(_uniform(g, math.log(3e5), math.log(5e7))),
            electronic_noise=_uniform(g, 0.0, 5.0),
            spr_20cm=spr,
            spr_exponent=_uniform(g, 0.8, 1.3),
            scatter_sigma_mm=_uniform(g, 20.0, 80.0),
            heel=heel,
            csi_mg_cm2=_uniform(g, 120.0, 260.0),
            blur_mm=_uniform(g, 0.05, 0.35),
            blur_kind="lorentzian" if _chance(g, 0.4) else "gaussian",
            window=(_uniform(g, 0.0, 3.0), _uniform(g, 97.0, 100.0)),
            enhancement=enhancement,
            gamma=math.exp(_uniform(g, math.log(0.6), math.log(1.7))),
            sigmoid=_uniform(g, 2.0, 8.0) if _chance(g, 0.4) else 0.0,
            lut=lut,
            invert=_chance(g, 0.3),
            bits=bits,
            collimation=collimation,
            marker_seed=int(torch.randint(0, 2**31 - 1, (), generator=g))
            if _chance(g, 0.5) else None,
        )
