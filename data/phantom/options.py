"""Which features a phantom has: explicit switches, or draws from the seed (private).

:class:`PhantomOptions` fields left at ``None`` are drawn per seed with the prevalences of
:data:`~x2ct.data.phantom.anatomy.FEATURE_PREVALENCE`; a field given forces the feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from x2ct.data.phantom.anatomy import FEATURE_PREVALENCE, GENANT_GRADES
from x2ct.data.phantom.texture import stream

__all__ = ["CONTRAST_PHASES", "Features", "PhantomOptions", "resolve"]

CONTRAST_PHASES = ("none", "venous", "arterial")


@dataclass(frozen=True)
class PhantomOptions:
    """Switches of the phantom's features; ``None`` = drawn from the seed.

    Attributes:
        metal: titanium pedicle screws and rods over 2-4 levels.
        fracture: compression fracture(s) of Genant grade 1-3.
        fracture_grade: force the grade (1, 2 or 3) of the fracture(s).
        degeneration: disc height loss, osteophytes, endplate sclerosis, vacuum discs.
        contrast: ``"none"``, ``"venous"`` (portal-venous phase) or ``"arterial"``.
        calcification: aortic wall calcifications.
        table: the CT couch under the patient's back.
        arms: arms down beside the body (else raised out of the field).
        scoliosis: a structural curve (Cobb 10-40 deg); False: 0-6 deg asymmetry only.
        cobb_deg: force the scoliosis Cobb angle (deg, 0-60).
        bmd: trabecular bone density, mg/cm^3 QCT (20-350).
        ct_noise: add CT noise (False: noiseless, for tests of the anatomy).
        noise_std: CT noise standard deviation in HU at 2 mm voxels (0-100).
        body_width_mm, body_depth_mm: lateral width and AP depth of the abdomen at L3
            (skin to skin; 200-500 and 140-400 mm).
        fat_mm: subcutaneous fat thickness (2-80 mm).
        metal_hu: HU drawn for metal (>= 2000; 3071 mimics a 12-bit scanner).
    """

    metal: bool | None = None
    fracture: bool | None = None
    fracture_grade: int | None = None
    degeneration: bool | None = None
    contrast: str | None = None
    calcification: bool | None = None
    table: bool | None = None
    arms: bool | None = None
    scoliosis: bool | None = None
    cobb_deg: float | None = None
    bmd: float | None = None
    ct_noise: bool = True
    noise_std: float | None = None
    body_width_mm: float | None = None
    body_depth_mm: float | None = None
    fat_mm: float | None = None
    metal_hu: float | None = None

    def __post_init__(self):
        def bad(name, expected):
            raise ValueError(
                f"PhantomOptions.{name} must be {expected}, got {getattr(self, name)!r}"
            )

        for name in ("metal", "fracture", "degeneration", "calcification", "table", "arms",
                     "scoliosis"):  # fmt: skip
            if not (getattr(self, name) is None or isinstance(getattr(self, name), bool)):
                bad(name, "True, False or None")
        if not isinstance(self.ct_noise, bool):
            bad("ct_noise", "True or False")
        if self.contrast is not None and self.contrast not in CONTRAST_PHASES:
            bad("contrast", f"one of {CONTRAST_PHASES} or None")
        if self.fracture_grade is not None and self.fracture_grade not in GENANT_GRADES:
            bad("fracture_grade", "1, 2, 3 or None")
        if self.fracture is False and self.fracture_grade is not None:
            bad("fracture_grade", "None when fracture=False")
        ranges = {
            "cobb_deg": (0.0, 60.0),
            "bmd": (20.0, 350.0),
            "noise_std": (0.0, 100.0),
            "body_width_mm": (200.0, 500.0),
            "body_depth_mm": (140.0, 400.0),
            "fat_mm": (2.0, 80.0),
            "metal_hu": (2000.0, 30000.0),
        }
        for name, (lo, hi) in ranges.items():
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, f"a number in [{lo:g}, {hi:g}] or None")
            if not lo <= v <= hi:
                bad(name, f"a number in [{lo:g}, {hi:g}] or None")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Features:
    """The features one phantom has (options resolved against the seed's draws)."""

    metal: bool
    fracture: bool
    fracture_grade: int | None
    degeneration: bool
    contrast: str
    calcification: bool
    table: bool
    arms: bool
    scoliosis: bool
    cobb_deg: float
    age: float
    bmd: float
    ct_noise: bool
    noise_std: float


def resolve(seed: int, options: PhantomOptions | None) -> Features:
    """Draw the features of phantom ``seed`` (each from its own stream), then apply the
    forced ones. Age (uniform 20-90 years) drives BMD (-1.8 mg/cm^3 per year after 30,
    SD 25), degeneration and calcification (more likely with age)."""
    o = options or PhantomOptions()
    rng = stream(seed, "features")
    age = float(rng.uniform(20.0, 90.0))

    def coin(name: str, p: float | None = None) -> bool:
        r = stream(seed, f"feature/{name}")
        return bool(r.uniform() < (FEATURE_PREVALENCE[name] if p is None else p))

    # Age-weighted prevalences whose mean over ages 20-90 is FEATURE_PREVALENCE's value.
    age_w = (age - 20.0) / 35.0  # mean 1 over U(20, 90)
    drawn = {
        "metal": coin("metal"),
        "fracture": coin("fracture"),
        "degeneration": coin("degeneration", min(FEATURE_PREVALENCE["degeneration"] * age_w, 1)),
        "calcification": coin(
            "calcification", min(FEATURE_PREVALENCE["calcification"] * age_w, 1)
        ),
        "table": coin("table"),
        "arms": coin("arms"),
        "scoliosis": coin("scoliosis"),
    }
    feat = {k: (getattr(o, k) if getattr(o, k) is not None else v) for k, v in drawn.items()}
    r = stream(seed, "feature/contrast")
    phase = "none"
    if r.uniform() < FEATURE_PREVALENCE["contrast"]:
        phase = "venous" if r.uniform() < 0.75 else "arterial"
    contrast = o.contrast if o.contrast is not None else phase
    r = stream(seed, "feature/grade")
    grade = int(r.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    if o.fracture_grade is not None:
        feat["fracture"] = True if o.fracture is None else feat["fracture"]
        grade = o.fracture_grade
    r = stream(seed, "feature/cobb")
    cobb = float(r.uniform(10.0, 40.0)) if feat["scoliosis"] else float(r.uniform(0.0, 6.0))
    if o.cobb_deg is not None:
        cobb = float(o.cobb_deg)
        feat["scoliosis"] = cobb >= 10.0
    r = stream(seed, "feature/bmd")
    bmd = 200.0 - 1.8 * max(age - 30.0, 0.0) + 25.0 * float(r.standard_normal())
    bmd = float(min(max(bmd, 35.0), 270.0))
    if feat["fracture"] and o.bmd is None:
        bmd = min(bmd, float(r.uniform(50.0, 120.0)))  # fragility fractures: low BMD
    if o.bmd is not None:
        bmd = float(o.bmd)
    r = stream(seed, "feature/noise")
    noise = float(o.noise_std) if o.noise_std is not None else float(r.uniform(5.0, 18.0))
    return Features(
        metal=feat["metal"],
        fracture=feat["fracture"],
        fracture_grade=grade if feat["fracture"] else None,
        degeneration=feat["degeneration"],
        contrast=contrast,
        calcification=feat["calcification"],
        table=feat["table"],
        arms=feat["arms"],
        scoliosis=feat["scoliosis"],
        cobb_deg=cobb,
        age=age,
        bmd=bmd,
        ct_noise=o.ct_noise,
        noise_std=noise,
    )

