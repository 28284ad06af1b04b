"""Procedural CT phantom of an adult trunk around the spine, in HU, with VerSe labels.

``spine_phantom`` builds one patient from ``(seed, region, options)`` in patient
millimetres (RAS+: x to the patient's right, y anterior, z superior) and samples it on the
grid it is given: the grid (shape, spacing, offset) never changes the anatomy, so a 64^3
field and a whole-torso grid show the same patient where they overlap. The anatomy
origin: the bone centroid of the centre level (L3 for ``"lumbar"``, T7 for
``"thoracic"``) lies on the z axis, its body near z = 0; the grid is centred on the origin
and the anatomy sits ``offset_mm`` off it.

The patient (sources in :mod:`~x2ct.data.phantom.anatomy`):

- Spine C3-S5: per-level vertebral body width, depth, anterior/posterior height, pedicle
  width/height, canal width/depth and disc heights from published morphometry (Panjabi
  1991/1992, Zhou 2000, Zindrick 1987), scaled per seed; a 0.25-0.5 mm cortical shell
  (Silva 1994, Ritzel 1997) around trabecular bone with a texture of ~1.5 mm grains, its
  density from a QCT BMD of 35-270 mg/cm^3 (HU = 1.1 BMD + 10); laminae, spinous,
  transverse and articular processes; epidural fat, CSF, cord; discs with nucleus.
- Curves: lumbar lordosis 20-60 deg, thoracic kyphosis 20-50 deg, built from wedged
  bodies and discs; scoliosis (Cobb 10-40 deg, in 15%) with apical rotation.
- Pathology: Genant grade 1-3 wedge, biconcave or crush fractures; degeneration (disc
  height loss, rim osteophytes, endplate sclerosis, vacuum discs); titanium pedicle
  screws and rods (``metal`` mask).
- Body: a real-size trunk (width 280-380 mm, depth 180-300 mm at L3; fat 5-40 mm), back
  and wall muscles, psoas, quadratus lumborum, gluteals; liver, spleen, stomach, kidneys,
  colon and small bowel with fluid, stool and gas; aorta, IVC and iliac vessels
  (optionally contrast-enhanced, optionally calcified); lungs with vessels, heart, ribs
  with costal cartilage, sternum, scapulae; iliac wings and sacrum; the CT table; arms.
- CT: partial volume by the analytic signed-distance ramp; noise with an FBP-like noise
  power spectrum (5-25 HU at 2 mm), inside the patient only.

Labels (VerSe): C1-C7 = 1-7, T1-T12 = 8-19, L1-L5 = 20-24, sacrum (S1-S5) = 26, discs =
:data:`DISC_LABEL` (100), everything else 0.

Speed (one thread of this project's shared 2-core CPU, load average ~10, anatomy not
cached): a 64^3 field at 2 mm in 0.75-1.3 s (median 1.2 s under load), the whole torso at
2 mm (200 x 165 x 115 voxels) in 4.5-5.5 s; building the anatomy itself takes ~0.2 s and
the last 8 patients are cached (``body_bounds`` then ``spine_phantom`` builds once).

Command line: ``python -m x2ct.data.phantom --n N --out DIR`` (``--help``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from x2ct.data.phantom import anatomy as A
from x2ct.data.phantom.anatomy import DISC_LABEL, LEVEL_NAMES, SACRUM_LABEL
from x2ct.data.phantom.body import build_torso, draw_muscles, draw_outline, draw_outside
from x2ct.data.phantom.column import CENTRE_LEVEL, build_column, draw_column
from x2ct.data.phantom.draw import Canvas
from x2ct.data.phantom.metal import build_metal, draw_metal
from x2ct.data.phantom.options import PhantomOptions, resolve
from x2ct.data.phantom.organs import draw_abdomen, draw_vessels, place_organs
from x2ct.data.phantom.pelvis import build_pelvis, draw_gluteal, draw_ilium
from x2ct.data.phantom.texture import ct_noise, stream
from x2ct.data.phantom.thorax import build_thorax, draw_heart, draw_lungs, draw_thoracic_bones

__all__ = [
    "DISC_LABEL",
    "LEVEL_NAMES",
    "Phantom",
    "PhantomOptions",
    "REGIONS",
    "SACRUM_LABEL",
    "TISSUE_HU",
    "body_bounds",
    "main",
    "phantom_id",
    "spine_phantom",
    "whole_body_grid",
]

REGIONS = tuple(CENTRE_LEVEL)
TISSUE_HU = A.TISSUE_HU


class Phantom(NamedTuple):
    """A phantom volume.

    Attributes:
        hu: (X, Y, Z) float32 Hounsfield units, RAS+ voxel order, centred on the origin.
        labels: (X, Y, Z) int16 VerSe vertebra labels, :data:`DISC_LABEL` for discs, else 0.
        spacing: voxel size (sx, sy, sz) in mm.
        metal: (X, Y, Z) bool, voxels whose centre is inside metal (screws, rods).
        info: the phantom's per-seed draws (features, body size, BMD, vertebrae, fractures,
            screws, noise); see :func:`spine_phantom`.
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    metal: np.ndarray | None = None
    info: dict | None = None


def phantom_id(seed: int) -> str:
    """Case id of the phantom drawn with ``seed`` (``phantom_0007``), shared by the
    command line and :class:`x2ct.data.PhantomDataset`."""
    return f"phantom_{seed:04d}"


def _as_triple(value, name: str, kind) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = (value,) * 3
    try:
        value = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three positive numbers, got {value!r}") from None
    if len(value) != 3 or not all(math.isfinite(v) and v > 0 for v in value):
        raise ValueError(f"{name} must be three positive numbers, got {value!r}")
    return value


def _check(region: str, options) -> None:
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    if options is not None and not isinstance(options, PhantomOptions):
        raise TypeError(f"options must be a PhantomOptions or None, got {type(options).__name__}")


@functools.lru_cache(maxsize=8)
def _model(seed: int, region: str, options: PhantomOptions | None) -> dict:
    """Everything about patient ``seed`` that does not depend on the grid."""
    feat = resolve(seed, options)
    rng = stream(seed, "tissue")
    hu = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in A.TISSUE_HU.items()}
    if feat.contrast != "none":
        for organ, (lo, hi) in A.CONTRAST_HU[feat.contrast].items():
            hu[f"contrast_{organ}"] = float(rng.uniform(lo, hi))
    col = build_column(seed, region, feat)
    torso = build_torso(seed, col, feat, options, hu)
    torso.organs["seed"] = seed
    place_organs(seed, torso)
    thorax = build_thorax(seed, torso)
    pelvis = build_pelvis(seed, torso)
    metal = build_metal(seed, col) if feat.metal else []
    trab = col.by_label(20).trabecular
    bone = dict(cortical=hu["cortical"], rib=0.9 * trab, pelvis=0.85 * trab)
    return dict(feat=feat, hu=hu, col=col, torso=torso, thorax=thorax, pelvis=pelvis,
                metal=metal, bone=bone)  # fmt: skip


def spine_phantom(
    shape: int | Sequence[int] = (64, 64, 64),
    spacing: float | Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    region: str = "lumbar",
    offset_mm: float | Sequence[float] = (0.0, 0.0, 0.0),
    *,
    options: PhantomOptions | None = None,
) -> Phantom:
    """Draw the spine CT phantom of patient ``seed`` on a grid.

    Args:
        shape: grid size (X, Y, Z) in voxels (an int for a cube).
        spacing: voxel size (sx, sy, sz) in mm (a float for isotropic voxels).
        seed: the patient; with ``region`` and ``options`` the only input to the anatomy.
            Training uses seeds 0-9999, validation 10000+, test 90000+.
        region: ``"lumbar"`` (the anatomy origin at L3) or ``"thoracic"`` (at T7).
        offset_mm: (x, y, z) mm by which the anatomy sits off the grid's centre.
        options: :class:`PhantomOptions` forcing features on or off; ``None`` draws every
            feature from the seed (prevalences in ``anatomy.FEATURE_PREVALENCE``).

    Returns:
        :class:`Phantom` with ``hu``, ``labels``, ``spacing``, ``metal`` and ``info``:
        ``features`` (the resolved options), ``body`` (width_mm, depth_mm, fat_mm at L3),
        ``bmd`` (mg/cm^3), ``vertebrae`` (label -> centre, frame columns u/v/w, sizes, in
        grid millimetres: anatomy + offset), ``fractures``, ``screws``, ``noise_std``.
    """
    _check(region, options)
    shape = _as_triple(shape, "shape", int)
    spacing = _as_triple(spacing, "spacing", float)
    offset = tuple(float(o) for o in np.broadcast_to(np.asarray(offset_mm, float), (3,)))
    if not all(math.isfinite(o) for o in offset):
        raise ValueError(f"offset_mm must be three finite numbers (mm), got {offset_mm!r}")
    m = _model(int(seed), region, options)
    feat, col, torso = m["feat"], m["col"], m["torso"]

    canvas = Canvas(shape, spacing, offset)
    draw_outline(canvas, torso)
    draw_abdomen(canvas, torso)
    draw_lungs(canvas, torso, m["thorax"])
    draw_heart(canvas, torso)
    draw_vessels(canvas, torso, feat.calcification)
    draw_muscles(canvas, torso)
    draw_gluteal(canvas, torso, m["pelvis"])
    draw_ilium(canvas, torso, m["pelvis"], m["bone"])
    draw_thoracic_bones(canvas, torso, m["thorax"], m["bone"])
    draw_column(canvas, col, int(seed), m["hu"])
    metal_hu = A.METAL_HU
    if options is not None and options.metal_hu is not None:
        metal_hu = float(options.metal_hu)
    draw_metal(canvas, m["metal"], metal_hu)
    draw_outside(canvas, torso)

    noise_std = 0.0
    if feat.ct_noise:
        noise_std = feat.noise_std * float(np.prod(np.asarray(spacing) / 2.0)) ** -0.5
        if options is None or options.noise_std is None:  # larger patients, noisier images
            noise_std *= float(np.clip((_width(torso) / 320.0) ** 2, 0.7, 1.6))
        rng = stream(seed, f"ct-noise/{shape}/{spacing}/{offset}")
        peak = float(stream(seed, "ct-noise-peak").uniform(0.15, 0.3))
        noise = ct_noise(rng, shape, spacing, noise_std, peak)
        canvas.hu += noise * (canvas.hu > -999.5)
    return Phantom(canvas.hu, canvas.labels, spacing, canvas.metal,
                   _info(m, offset, noise_std, region, int(seed)))  # fmt: skip


def _width(torso) -> float:
    o = torso.outline(np.float32(torso.col.z_of(22)))
    return float(2 * o["a"])


def _info(m: dict, offset, noise_std: float, region: str, seed: int) -> dict:
    col, torso, feat = m["col"], m["torso"], m["feat"]
    off = np.asarray(offset)
    o = torso.outline(np.float32(col.z_of(22)))
    verts = {}
    for vt in col.vertebrae:
        if vt.sacral > 1:
            continue
        verts[vt.label] = dict(
            name=LEVEL_NAMES[vt.label], centre=(vt.centre + off).tolist(),
            frame=vt.frame.tolist(), body_w=vt.p["body_w"], body_d=vt.p["body_d"],
            ha=vt.p["ha"], hp=vt.p["hp"], h0=vt.h0, disc_below=col.disc_h.get(vt.label),
            trabecular_hu=vt.trabecular, cortical_hu=vt.cortical, shell_mm=vt.shell,
            canal_w=vt.p["canal_w"], canal_d=vt.p["canal_d"], canal_v=vt.canal_v,
            ped_w=vt.p["ped_w"], ped_h=vt.p["ped_h"],
        )  # fmt: skip
    screws = [
        dict(label=s["label"], side=s["side"], entry=(s["entry"] + off).tolist(),
             tip=(s["tip"] + off).tolist(), diameter=2 * s["radius"])
        for con in m["metal"] for s in con["screws"]
    ]  # fmt: skip
    return dict(
        seed=seed,
        region=region,
        offset_mm=list(offset),
        features=dataclasses.asdict(feat),
        body=dict(width_mm=float(2 * o["a"]), depth_mm=float(o["y_ant"] - o["y_post"]),
                  fat_mm=torso.fat, table=dict(torso.table) if torso.table else None,
                  arms=torso.arms is not None),  # fmt: skip
        bmd=feat.bmd,
        lordosis_deg=col.lordosis,
        kyphosis_deg=col.kyphosis,
        cobb_deg=col.cobb,
        vertebrae=verts,
        fractures=[dict(label=v.label, name=LEVEL_NAMES[v.label], type=v.fracture, loss=v.loss,
                        grade=feat.fracture_grade) for v in col.vertebrae if v.fracture],
        vacuum_discs=sorted(col.vacuum),
        screws=screws,
        noise_std=noise_std,
    )


def body_bounds(
    seed: int,
    region: str = "lumbar",
    options: PhantomOptions | None = None,
    z_range_mm: tuple[float, float] | None = None,
) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """Anatomy-frame bounds ((xmin, xmax), (ymin, ymax), (zmin, zmax)) in mm of patient
    ``seed``'s body (skin, table, arms) over ``z_range_mm`` (default: the drawn trunk, from
    120 mm below S1 to 30 mm above T1). A grid holds the body when it covers these bounds
    shifted by its ``offset_mm``."""
    _check(region, options)
    m = _model(int(seed), region, options)
    col = m["col"]
    if z_range_mm is None:
        z_range_mm = (col.z_of(SACRUM_LABEL) - 120.0, col.z_of(8) + 30.0)
    z0, z1 = (float(v) for v in z_range_mm)
    if not (math.isfinite(z0) and math.isfinite(z1) and z0 < z1):
        raise ValueError(f"z_range_mm must be (low, high) mm with low < high, got {z_range_mm!r}")
    xy = m["torso"].bounds(z0, z1)
    return (tuple(xy[0]), tuple(xy[1]), (z0, z1))


def whole_body_grid(
    seed: int,
    region: str = "lumbar",
    spacing: float = 2.0,
    z_extent_mm: float = 230.0,
    margin_mm: float = 10.0,
    options: PhantomOptions | None = None,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """``(shape, offset_mm)`` of a grid holding the whole body in x and y (with a margin)
    over ``z_extent_mm`` centred on the anatomy origin; pass both to
    :func:`spine_phantom`. The anatomy origin then lies at ``offset_mm`` in the grid."""
    if not (spacing > 0 and z_extent_mm > 0 and margin_mm >= 0):
        raise ValueError("spacing and z_extent_mm must be positive and margin_mm >= 0")
    (x0, x1), (y0, y1), _ = body_bounds(seed, region, options,
                                        (-z_extent_mm / 2, z_extent_mm / 2))  # fmt: skip
    size = np.array([x1 - x0, y1 - y0, z_extent_mm]) + 2 * margin_mm * np.array([1, 1, 0])
    shape = tuple(int(n) for n in np.ceil(size / spacing).astype(int))
    offset = (-(x0 + x1) / 2, -(y0 + y1) / 2, 0.0)
    return shape, offset


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (:mod:`x2ct.data.phantom.cli`)."""
    from x2ct.data.phantom.cli import main as _main

    _main(argv)
