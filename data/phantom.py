"""Procedural spine CT phantom: a curved column of vertebrae in a body, in HU.

``spine_phantom`` draws a CT-like volume from analytic signed-distance shapes on a
millimetre grid (DESIGN.md: RAS+ voxel order, the volume centred on the origin), so the
anatomy keeps its real size whatever the spacing and shape, and the field of view decides
how many vertebrae show. Per seed it varies the curve of the column (lordosis or kyphosis
in Y-Z, mild scoliosis in X-Z), each vertebra's tilt, axial rotation, size and bone density,
the body outline, fat, muscle and noise.

Anatomy (local vertebra frame: u toward the patient's right, v anterior, w superior):
vertebral body (rounded, waisted, flat-backed superellipse with concave endplates: a
cortical shell around cancellous bone), pedicles, laminae closing the arch around the
spinal canal, a spinous process pointing posterior (-Y) and down, transverse processes
(+-X), superior and inferior articular processes, and intervertebral discs between the
bodies. Thoracic levels carry ribs (neck from the transverse process, then a shaft around
an elliptical cage, descending anteriorly); lungs fill the cage above the diaphragm.
Around the column: the thecal sac in the canal, paraspinal muscles, psoas (lumbar),
abdominal or chest wall muscle, organs with visceral fat, subcutaneous fat, an elliptical
body outline and air.

The column sits posterior of the body centre as in real anatomy, but the volume is
centred on the spine: the centroid of bone lies within a few mm of the origin in X and Y.
The body outline is the real-size ellipse shrunk where needed to fit inside the field of
view with a margin, so every phantom has air around the body; the spine and the tissue
next to it keep their real sizes.

Labels (VerSe numbering): C1-C7 = 1-7, T1-T12 = 8-19, L1-L5 = 20-24, sacrum (S1) = 26,
intervertebral discs = :data:`DISC_LABEL` (100), everything else (ribs included) 0.

Command line (VerSe-style pairs, ``<id>_ct.nii.gz`` and ``<id>_seg-vert_msk.nii.gz``)::

    python -m x2ct.data.phantom --n 100 --out DIR [--shape 64] [--spacing 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from x2ct.data._shapes import box, capsule, fraction, prism, smin, superellipse, upsample_linear

__all__ = [
    "DISC_LABEL",
    "LEVEL_NAMES",
    "Phantom",
    "REGIONS",
    "SACRUM_LABEL",
    "TISSUE_HU",
    "main",
    "phantom_id",
    "spine_phantom",
]

DISC_LABEL = 100
"""Label of every intervertebral disc in the phantom's label map."""

SACRUM_LABEL = 26
"""VerSe label of the sacrum (only its first segment, S1, is drawn)."""

REGIONS = ("lumbar", "thoracic")

LEVEL_NAMES: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{i + 7: f"T{i}" for i in range(1, 13)},
    **{i + 19: f"L{i}" for i in range(1, 6)},
    SACRUM_LABEL: "S1",
}
"""VerSe label id -> level name."""

TISSUE_HU: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "lung": (-880.0, -800.0),
    "fat": (-115.0, -75.0),
    "organ": (28.0, 45.0),
    "muscle": (38.0, 58.0),
    "csf": (5.0, 20.0),
    "disc": (75.0, 110.0),
    "cancellous": (150.0, 400.0),
    "cortical": (700.0, 1900.0),
}
"""HU range of each tissue before texture and noise (published CT values); per seed the
phantom draws one value inside each range (bone: per vertebra, scaled by a density)."""


class Phantom(NamedTuple):
    """A phantom volume.

    Attributes:
        hu: (X, Y, Z) float32 Hounsfield units, RAS+ voxel order, centred on the origin.
        labels: (X, Y, Z) int16 VerSe vertebra labels, :data:`DISC_LABEL` for discs, else 0.
        spacing: voxel size (sx, sy, sz) in mm.
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


def phantom_id(seed: int) -> str:
    """Case id of the phantom drawn with ``seed`` (``phantom_0007``), shared by the
    command line and :class:`x2ct.data.PhantomDataset`."""
    return f"phantom_{seed:04d}"


# --- level parameters --------------------------------------------------------------------

# Full sizes in mm (angles in degrees) at anchor levels, interpolated in between:
# approximate adult values in the ranges reported by vertebral morphometry studies
# (e.g. Panjabi et al., Spine 1991 and 1992).
_ANCHORS = np.array([3, 7, 8, 13, 19, 20, 22, 24], dtype=np.float64)  # C3 C7 T1 T6 T12 L1 L3 L5
_TABLE: dict[str, list[float]] = {
    "body_w": [17, 24, 27, 30, 40, 43, 47, 50],  # body width (X)
    "body_d": [16, 17, 18, 26, 30, 32, 34, 35],  # body depth (Y)
    "body_h": [14, 14, 16, 20, 24, 25, 26, 26],  # body height (Z)
    "disc_h": [5, 5, 4, 5, 7, 9, 10, 11],  # height of the disc below the level
    "canal_w": [24, 24, 20, 16, 18, 22, 23, 25],  # spinal canal width
    "canal_d": [14, 14, 15, 15, 16, 17, 16, 16],  # spinal canal depth
    "ped_w": [5, 6, 8, 6, 8, 9, 10, 13],  # pedicle width (X)
    "ped_h": [7, 7, 10, 12, 15, 15, 15, 14],  # pedicle height (Z)
    "lam_t": [3, 4, 5, 5, 6, 7, 7, 7],  # lamina thickness
    "sp_len": [14, 22, 30, 35, 30, 30, 30, 25],  # spinous process length
    "sp_incl": [15, 25, 35, 55, 25, 12, 8, 5],  # spinous process downward slope
    "sp_h": [6, 8, 8, 8, 14, 16, 18, 16],  # spinous process height
    "tp_len": [10, 15, 20, 22, 12, 18, 25, 20],  # transverse process length
    "tp_back": [0, 10, 30, 35, 25, 5, 0, 0],  # transverse process backward angle
    "tp_t": [6, 7, 9, 9, 8, 7, 7, 9],  # transverse process thickness
    "curv": [-0.004, -0.001, 0.002, 0.0032, 0.001, -0.002, -0.0045, -0.005],  # y'' (1/mm)
    "psoas": [0, 0, 0, 0, 0, 9, 16, 22],  # psoas radius
}
_S1: dict[str, float] = {
    "body_w": 50, "body_d": 36, "body_h": 30, "disc_h": 0, "canal_w": 24, "canal_d": 12,
    "ped_w": 16, "ped_h": 18, "lam_t": 7, "sp_len": 12, "sp_incl": 20, "sp_h": 12,
    "tp_len": 30, "tp_back": 15, "tp_t": 24, "curv": -0.005, "psoas": 22,
}  # fmt: skip
_LEVELS = list(range(3, 25)) + [SACRUM_LABEL]  # C3 .. L5, S1 (top to bottom)
_LENGTHS = set(_TABLE) - {"sp_incl", "tp_back", "curv", "psoas"}  # scale with size


def _level_table(level: int) -> dict[str, float]:
    if level == SACRUM_LABEL:
        return dict(_S1)
    return {k: float(np.interp(level, _ANCHORS, v)) for k, v in _TABLE.items()}


# --- the column ----------------------------------------------------------------------------


@dataclass
class _Vertebra:
    label: int
    centre: np.ndarray  # (3,) body centre, world mm
    frame: np.ndarray  # (3, 3) columns: local u, v, w in world coordinates
    p: dict[str, float]  # sizes (mm) and angles (deg)
    cortical: float  # HU
    cancellous: float  # HU

    @property
    def canal_v(self) -> float:
        """Local v of the canal centre (the canal's front wall is the body's back)."""
        return -0.85 * self.p["body_d"] / 2 - self.p["canal_d"] / 2 + 1.0

    @property
    def arch_w(self) -> float:
        """Local w of the pedicles and transverse processes (upper part of the body)."""
        return self.p["body_h"] / 2 - self.p["ped_h"] / 2 - 1.0

    def tp_tip(self, side: float) -> np.ndarray:
        """Local position of the transverse process tip on ``side`` (+1 right, -1 left)."""
        p, back = self.p, math.radians(self.p["tp_back"])
        length = p["tp_len"] + p["lam_t"]
        return np.array(
            [
                side * (p["canal_w"] / 2 + 0.5 * p["lam_t"] + length * math.cos(back)),
                self.canal_v - 1.0 - length * math.sin(back),
                self.arch_w,
            ]
        )

    def to_world(self, q) -> np.ndarray:
        return self.centre + self.frame @ np.asarray(q, dtype=np.float64)


def _frame(tangent: np.ndarray, axial_deg: float, tilt_deg: float = 0.0) -> np.ndarray:
    """Local (u, v, w) axes: w along the column's tangent, u as close to +X as possible,
    then rotated about w by ``axial_deg`` and about u by ``tilt_deg`` (w toward +v)."""
    w = tangent / np.linalg.norm(tangent)
    u = np.array([1.0, 0.0, 0.0]) - w[0] * w
    u /= np.linalg.norm(u)
    v = np.cross(w, u)
    c, s = math.cos(math.radians(axial_deg)), math.sin(math.radians(axial_deg))
    u, v = c * u + s * v, -s * u + c * v
    c, s = math.cos(math.radians(tilt_deg)), math.sin(math.radians(tilt_deg))
    w, v = c * w + s * v, c * v - s * w
    return np.stack([u, v, w], axis=1)


@dataclass
class _Column:
    vertebrae: list[_Vertebra]  # top to bottom, only those near the field of view
    z_grid: np.ndarray  # fine z samples of the centre line (ascending)
    x_line: np.ndarray  # body-centre x at z_grid
    y_line: np.ndarray  # body-centre y at z_grid
    z_levels: np.ndarray  # body centre z of every level in the column (ascending)
    p_levels: dict[str, np.ndarray]  # per-level parameters aligned with z_levels
    labels_up: np.ndarray  # level labels aligned with z_levels
    rib_levels: list[_Vertebra]  # thoracic vertebrae that carry ribs (near the FOV)


def _build_column(rng: np.random.Generator, region: str, fov: np.ndarray) -> _Column:
    scale = rng.uniform(0.9, 1.1)
    density = rng.uniform(0.7, 1.25)
    cortical = rng.uniform(1000.0, 1450.0) * math.sqrt(density)
    cancellous = rng.uniform(200.0, 280.0) * density
    params = {}
    for lv in _LEVELS:
        p = _level_table(lv)
        jitter = scale * rng.uniform(0.96, 1.04)
        for k in _LENGTHS:
            p[k] *= jitter
        p["sp_incl"] += rng.uniform(-5, 5)
        p["tp_back"] += rng.uniform(-4, 4)
        p["curv"] *= rng.uniform(0.5, 1.4)
        params[lv] = p

    # Body centre z of each level, stacked from the centre level outward along z.
    centre = 22 if region == "lumbar" else 14  # L3 or T7
    jitter = 1.0 if region == "thoracic" else 0.5
    z = {
        centre: rng.uniform(-jitter, jitter) * (params[centre]["body_h"] + params[centre]["disc_h"])
    }
    i0 = _LEVELS.index(centre)
    for i in range(i0 - 1, -1, -1):  # up
        lv, below = _LEVELS[i], _LEVELS[i + 1]
        z[lv] = (
            z[below] + (params[below]["body_h"] + params[lv]["body_h"]) / 2 + params[lv]["disc_h"]
        )
    for i in range(i0 + 1, len(_LEVELS)):  # down
        lv, above = _LEVELS[i], _LEVELS[i - 1]
        z[lv] = (
            z[above]
            - (params[above]["body_h"] + params[lv]["body_h"]) / 2
            - params[above]["disc_h"]
        )
    if region == "lumbar":
        # A tall field of view shows more of the thoracic spine rather than the pelvis: the
        # bottom of the view stays within the first sacral segment.
        lowest = z[SACRUM_LABEL]
        if lowest > -fov[2] / 2:
            z = {k: v - (lowest + fov[2] / 2) for k, v in z.items()}

    levels_up = _LEVELS[::-1]  # ascending z
    z_levels = np.array([z[lv] for lv in levels_up])
    p_levels = {k: np.array([params[lv][k] for lv in levels_up]) for k in params[centre]}

    # Centre line: integrate the sagittal curvature twice; scoliosis as a sine; both
    # detrended over the field of view so that the column runs along Z through the origin.
    zg = np.linspace(z_levels[0] - 60.0, z_levels[-1] + 60.0, 1024)
    dz = zg[1] - zg[0]
    curv = np.interp(zg, z_levels, p_levels["curv"])
    slope = np.cumsum(curv) * dz
    y_line = np.cumsum(slope) * dz
    amp = rng.uniform(0.0, 7.0) * rng.choice([-1.0, 1.0])
    wavelength = rng.uniform(250.0, 450.0)
    x_line = amp * np.sin(2 * math.pi * zg / wavelength + rng.uniform(0, 2 * math.pi))
    inside = np.abs(zg) <= max(fov[2] / 2, 40.0)
    for line in (x_line, y_line):
        coef = np.polyfit(zg[inside], line[inside], 1)
        line -= np.polyval(coef, zg)
    # Shift the bodies anterior so that the bone centroid (bodies + arches) is near y = 0.
    y_line += 0.5 * np.interp(0.0, z_levels, p_levels["body_d"]) - 6.0
    x_slope = np.gradient(x_line, zg)
    y_slope = np.gradient(y_line, zg)

    # Vertebrae near the field of view (their spinous processes reach one level down).
    vertebrae: list[_Vertebra] = []
    rib_levels: list[_Vertebra] = []
    for lv in _LEVELS:
        p = params[lv]
        zc = z[lv]
        reach = p["body_h"] + p["disc_h"] + p["sp_len"] * 0.8 + 10.0
        near = -fov[2] / 2 - reach < zc < fov[2] / 2 + reach
        carries_rib = 8 <= lv <= 19 and -fov[2] / 2 - 30.0 < zc < fov[2] / 2 + 110.0
        if not (near or carries_rib):
            continue
        tangent = np.array([np.interp(zc, zg, x_slope), np.interp(zc, zg, y_slope), 1.0])
        axial = -np.degrees(np.interp(zc, zg, x_slope)) * rng.uniform(0.5, 1.5) + rng.normal(0, 1.5)
        tilt = rng.uniform(15.0, 25.0) if lv == SACRUM_LABEL else rng.normal(0.0, 1.5)
        c = np.array([np.interp(zc, zg, x_line), np.interp(zc, zg, y_line), zc])
        v = _Vertebra(
            label=lv,
            centre=c,
            frame=_frame(tangent, axial, tilt),
            p=p,
            cortical=float(np.clip(cortical * rng.uniform(0.93, 1.07), 700.0, 1900.0)),
            cancellous=float(np.clip(cancellous * rng.uniform(0.9, 1.1), 150.0, 400.0)),
        )
        if near:
            vertebrae.append(v)
        if carries_rib:
            rib_levels.append(v)
    labels_up = np.array(levels_up, dtype=np.float64)
    return _Column(vertebrae, zg, x_line, y_line, z_levels, p_levels, labels_up, rib_levels)


# --- drawing -------------------------------------------------------------------------------


class _Canvas:
    """Full-volume distance fields that the shapes are min-ed into. World coordinates are
    mm from the volume's centre, less ``offset`` (the anatomy sits ``offset`` mm off it)."""

    def __init__(self, shape, spacing, offset=(0.0, 0.0, 0.0)):
        self.shape = shape
        self.spacing = spacing
        self.axes = [
            ((np.arange(n) - (n - 1) / 2) * s - o).astype(np.float32)
            for n, s, o in zip(shape, spacing, offset)
        ]
        big = np.float32(1e4)
        self.d_bone = np.full(shape, big, np.float32)  # vertebrae
        self.owner = np.full(shape, -1, np.int16)  # index of the nearest vertebra
        self.d_rib = np.full(shape, big, np.float32)
        self.d_disc = np.full(shape, big, np.float32)
        self.d_canal = np.full(shape, big, np.float32)

    def window(self, lo: np.ndarray, hi: np.ndarray):
        """Index slices of the voxels inside the world box [lo, hi], or None."""
        sl = []
        for ax, lo_i, hi_i, s in zip(self.axes, lo, hi, self.spacing):
            i0 = max(int(math.floor((lo_i - ax[0]) / s)), 0)
            i1 = min(int(math.ceil((hi_i - ax[0]) / s)) + 1, len(ax))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)

    def local(self, sl, centre: np.ndarray, frame: np.ndarray):
        """Local coordinates (u, v, w) of the voxels in ``sl`` for a frame at ``centre``."""
        px = (self.axes[0][sl[0]] - np.float32(centre[0]))[:, None, None]
        py = (self.axes[1][sl[1]] - np.float32(centre[1]))[None, :, None]
        pz = (self.axes[2][sl[2]] - np.float32(centre[2]))[None, None, :]
        f = frame.astype(np.float32)
        return tuple(px * f[0, i] + py * f[1, i] + pz * f[2, i] for i in range(3))


def _box_window(canvas: _Canvas, centre, frame, lo_local, hi_local):
    corners = np.array(
        [
            [a, b, c]
            for a in (lo_local[0], hi_local[0])
            for b in (lo_local[1], hi_local[1])
            for c in (lo_local[2], hi_local[2])
        ]
    )
    world = centre + corners @ frame.T
    return canvas.window(world.min(0), world.max(0))


def _draw_vertebra(canvas: _Canvas, index: int, vt: _Vertebra) -> None:
    p = vt.p
    a, b, h = p["body_w"] / 2, p["body_d"] / 2, p["body_h"] / 2
    cu, cv = p["canal_w"] / 2, p["canal_d"] / 2
    lt = p["lam_t"]
    v_c = vt.canal_v
    w_a = vt.arch_w
    incl = math.radians(p["sp_incl"])
    back = math.radians(p["tp_back"])
    u_max = max(a, cu + lt + p["tp_len"] + p["tp_t"]) + 4
    v_min = v_c - cv - lt - p["sp_len"] * math.cos(incl) - p["sp_h"] - 4
    w_low = -h - max(p["disc_h"], 6.0) - p["sp_len"] * math.sin(incl) - p["sp_h"] - 4
    w_high = h + max(p["disc_h"], 6.0) / 2 + 6
    sl = _box_window(canvas, vt.centre, vt.frame, (-u_max, v_min, w_low), (u_max, b + 4, w_high))
    if sl is None:
        return
    u, v, w = canvas.local(sl, vt.centre, vt.frame)

    # Vertebral body: superellipse section (flat, slightly concave back), waist, concave
    # endplates, rounded rims.
    rr = 2.0
    waist = 1.0 - 0.06 * (1.0 - np.clip(w / h, -1, 1) ** 2)
    back_wall = 0.85 * (1.0 - 0.12 * np.exp(-((u / (0.4 * a)) ** 2)))
    bb = np.where(v > 0, np.float32(b), b * back_wall) * waist
    d_xy = superellipse(u, v, (a - rr) * waist, bb - rr, p=2.4)
    r_xy = np.clip(1.0 + d_xy / min(a, b), 0.0, 1.0)
    h_eff = h - rr - 1.2 * (1.0 - r_xy**2)
    d_body = prism(d_xy, np.abs(w) - h_eff) - rr

    # Posterior arch: laminae = posterior half ring around the canal, sloping down
    # posteriorly; pedicles join it to the body, closing the canal.
    d_canal = superellipse(u, v - v_c, cu, cv)
    d_outer = superellipse(u, v - v_c, cu + lt, cv + lt)
    lam_h = 0.5 * max(p["ped_h"], 0.75 * p["body_h"])
    w_lam = w_a - 0.35 * np.maximum(v_c - v, 0)
    d_ring = np.maximum(np.maximum(d_outer, -d_canal), v - v_c)
    d_arch = prism(d_ring, np.abs(w - w_lam) - lam_h)
    v0, v1 = -0.85 * b + 3.0, v_c
    for side in (-1.0, 1.0):
        d_ped = prism(
            superellipse(u - side * (cu + lt / 2), w - w_a, p["ped_w"] / 2, p["ped_h"] / 2),
            np.abs(v - (v0 + v1) / 2) - (v0 - v1) / 2,
        )
        d_arch = smin(d_arch, d_ped, 1.5)

    # Spinous process: a rounded plate from the back of the ring, posterior and down.
    base = np.array([0.0, v_c - cv - 0.5 * lt, w_a - 0.35 * (cv + lt)])
    axis = np.array([0.0, -math.cos(incl), -math.sin(incl)])
    normal = np.array([0.0, -math.sin(incl), math.cos(incl)])
    mid = base + axis * p["sp_len"] / 2
    qs = (v - mid[1]) * axis[1] + (w - mid[2]) * axis[2]
    qn = (v - mid[1]) * normal[1] + (w - mid[2]) * normal[2]
    hw = 2.5 if p["body_w"] < 30 else 3.5
    d_post = box(u, qs, qn, hw, p["sp_len"] / 2, p["sp_h"] / 2, min(hw, 2.5))

    for side in (-1.0, 1.0):
        # Transverse process, from the pedicle-lamina junction laterally (and back).
        axis = np.array([side * math.cos(back), -math.sin(back), 0.0])
        normal = np.array([side * math.sin(back), math.cos(back), 0.0])
        start = np.array([side * (cu + 0.5 * lt), v_c - 1.0, w_a])
        mid = start + axis * (p["tp_len"] + lt) / 2
        q1 = (u - mid[0]) * axis[0] + (v - mid[1]) * axis[1]
        q2 = (u - mid[0]) * normal[0] + (v - mid[1]) * normal[1]
        t = p["tp_t"] / 2
        d_tp = box(q1, q2, w - mid[2], (p["tp_len"] + lt) / 2, 0.75 * t, t, 0.7 * t)
        # Superior articular process (lateral, reaching up) and inferior (medial, down):
        # the facet joint pairs one level's inferior with the next level's superior.
        us = side * (cu + 0.5 * lt + 1.5)
        d_sap = box(
            u - us, v - (v_c - 2.0), w - (w_a + h + 4) / 2, 3.0, 4.0, (h + 4 - w_a) / 2, 2.5
        )
        ui = side * (cu + 0.5 * lt - 4.5)
        wi_top, wi_bot = w_a - 0.35 * cv, -h - 5.0
        d_iap = box(
            u - ui,
            v - (v_c - 0.8 * cv),
            w - (wi_top + wi_bot) / 2,
            2.8,
            3.5,
            (wi_top - wi_bot) / 2,
            2.5,
        )
        d_post = np.minimum(d_post, np.minimum(d_tp, np.minimum(d_sap, d_iap)))

    d_vert = smin(d_body, smin(d_arch, d_post, 1.5), 2.0)
    closer = d_vert < canvas.d_bone[sl]
    canvas.d_bone[sl] = np.where(closer, d_vert, canvas.d_bone[sl])
    canvas.owner[sl] = np.where(closer, np.int16(index), canvas.owner[sl])

    # Thecal sac: the canal ellipse, through the disc space up to the next level.
    reach = h + max(p["disc_h"], 4.0)
    d_sac = prism(d_canal, np.abs(w) - reach)
    np.minimum(canvas.d_canal[sl], d_sac, out=canvas.d_canal[sl])


def _draw_disc(canvas: _Canvas, upper: _Vertebra, lower: _Vertebra) -> None:
    """The disc fills the wedge between the upper body's lower endplate and the lower
    body's upper endplate (planes through the endplate centres, 1.5 mm into each body)."""
    e1 = upper.to_world([0.0, 0.0, -upper.p["body_h"] / 2])
    e2 = lower.to_world([0.0, 0.0, lower.p["body_h"] / 2])
    n1, n2 = upper.frame[:, 2], lower.frame[:, 2]
    mid = (e1 + e2) / 2
    axis = (n1 + n2) / np.linalg.norm(n1 + n2)
    frame = (upper.frame + lower.frame) / 2
    frame = _frame(axis, 0.0) if np.abs(np.linalg.det(frame)) < 0.5 else frame
    a = 0.5 * (upper.p["body_w"] + lower.p["body_w"]) / 2 * 1.02
    b = 0.5 * (upper.p["body_d"] + lower.p["body_d"]) / 2 * 1.02
    half = np.linalg.norm(e1 - e2) / 2 + 4.0
    sl = _box_window(canvas, mid, frame, (-a - 3, -b - 3, -half - 6), (a + 3, b + 3, half + 6))
    if sl is None:
        return
    u, v, _ = canvas.local(sl, mid, frame)
    x, y, z = canvas.local(sl, np.zeros(3), np.eye(3))
    above = (x - e1[0]) * n1[0] + (y - e1[1]) * n1[1] + (z - e1[2]) * n1[2] - 1.5
    below = -((x - e2[0]) * n2[0] + (y - e2[1]) * n2[1] + (z - e2[2]) * n2[2]) - 1.5
    bb = np.where(v > 0, np.float32(b), np.float32(0.85 * b))
    d = prism(superellipse(u, v, a, bb, p=2.4), np.maximum(above, below))
    np.minimum(canvas.d_disc[sl], d, out=canvas.d_disc[sl])


def _draw_rib_neck(canvas: _Canvas, vt: _Vertebra) -> None:
    """Rib head and neck: a capsule from the side of the body (the costovertebral joint)
    to the transverse process tip, where the shaft (:func:`_draw_ribs`) starts."""
    p = vt.p
    for side in (-1.0, 1.0):
        head = vt.to_world(
            [side * 0.9 * p["body_w"] / 2, -0.35 * p["body_d"], 0.3 * p["body_h"] / 2]
        )
        tip = vt.to_world(vt.tp_tip(side))
        sl = canvas.window(np.minimum(head, tip) - 8, np.maximum(head, tip) + 8)
        if sl is None:
            continue
        d = capsule(canvas.local(sl, np.zeros(3), np.eye(3)), head, tip, 4.0)
        np.minimum(canvas.d_rib[sl], d, out=canvas.d_rib[sl])


def _draw_ribs(canvas: _Canvas, column: _Column, cage: dict, rng: np.random.Generator) -> None:
    """Rib shafts on the elliptical cage (per z: centre (xc, yc), half axes (a, b)), one
    per thoracic level and side, from the transverse process tip (elliptic angle psi0)
    laterally round to the front, descending. Only voxels in a band around the cage are
    evaluated, each against the ribs whose height range it falls in."""
    x, y, z = canvas.axes
    xc, yc = cage["xc"][None, None, :], cage["yc"][None, None, :]
    A, B = cage["a"][None, None, :], cage["b"][None, None, :]
    dx = np.abs(x[:, None, None] - xc) / A  # (X, 1, Z)
    dy = (y[None, :, None] - yc) / B  # (1, Y, Z)
    rho = np.sqrt(dx * dx + dy * dy)
    idx = np.nonzero(np.abs(rho - 1.0) < np.float32(10.0) / np.minimum(A, B))
    if idx[0].size == 0:
        return
    rho_i = rho[idx]
    psi = np.arctan2(dy[0, idx[1], idx[2]], dx[idx[0], 0, idx[2]])  # -pi/2 back, +pi/2 front
    a_i, b_i, psi0 = A[0, 0, idx[2]], B[0, 0, idx[2]], cage["psi0"][idx[2]]
    radius = np.sqrt((a_i * np.cos(psi)) ** 2 + (b_i * np.sin(psi)) ** 2)
    dr = (rho_i - 1.0) * radius  # radial offset from the cage, mm
    z_i = z[idx[2]]

    levels = column.rib_levels
    labels = np.array([lv.label for lv in levels])
    starts = np.array([lv.to_world(lv.tp_tip(1.0))[2] for lv in levels])
    # Ribs reach furthest round in the mid chest; T11 and T12 are short (floating).
    reach = np.radians(np.interp(labels, [8, 10, 15, 17, 18, 19], [150, 160, 150, 120, 75, 45]))
    reach = reach * rng.uniform(0.9, 1.05, size=len(labels))
    drop = np.interp(labels, [8, 12, 19], [40.0, 48.0, 30.0]) * rng.uniform(0.85, 1.15)
    r_rad, r_z = 3.2 * rng.uniform(0.9, 1.15), 5.5 * rng.uniform(0.9, 1.15)

    best = np.full(psi.shape, 1e4, np.float32)
    for k in range(len(levels)):
        near = (z_i <= starts[k] + r_z + 2) & (z_i >= starts[k] - drop[k] - r_z - 2)
        if not near.any():
            continue
        p, p0 = psi[near], psi0[near]
        # The bony rib stops short of the sternum (65 degrees; cartilage is not drawn).
        span = np.minimum(reach[k], np.radians(65.0) - p0)
        t = np.clip((p - p0) / span, 0.0, 1.0)
        z_rib = starts[k] - drop[k] * t**1.2
        d_cross = (
            np.sqrt((dr[near] / r_rad) ** 2 + ((z_i[near] - z_rib) / r_z) ** 2) - 1.0
        ) * r_rad
        along = np.maximum(p0 - p, p - p0 - span) * radius[near]  # < 0 along the shaft
        best[near] = np.minimum(best[near], prism(d_cross, along))
    canvas.d_rib[idx] = np.minimum(canvas.d_rib[idx], best)


def _smooth_noise(rng: np.random.Generator, shape, corr: float) -> np.ndarray:
    """Unit-variance noise with a correlation length of ``corr`` voxels: Gaussian noise on
    a coarse grid, lightly smoothed and upsampled trilinearly."""
    small = tuple(max(int(n / corr), 2) + 2 for n in shape)
    g = ndimage.gaussian_filter(rng.standard_normal(small, dtype=np.float32), 0.7)
    g /= g.std() + 1e-6
    return upsample_linear(g, shape)


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


def _profiles(column: _Column, z: np.ndarray) -> dict[str, np.ndarray]:
    """Per-slice positions (mm) of the column's landmarks, each (1, 1, Z) float32."""
    f = lambda a: np.asarray(a, np.float32)[None, None, :]
    at = lambda name: np.interp(z, column.z_levels, column.p_levels[name])
    pr = {k: f(at(k)) for k in ("body_w", "body_d", "canal_w", "canal_d", "lam_t", "psoas")}
    pr["xc"] = f(np.interp(z, column.z_grid, column.x_line))
    pr["yb"] = f(np.interp(z, column.z_grid, column.y_line))
    pr["y_canal"] = pr["yb"] - 0.85 * pr["body_d"] / 2 - pr["canal_d"] / 2 + 1.0
    incl, back = np.radians(at("sp_incl")), np.radians(at("tp_back"))
    pr["y_back"] = pr["y_canal"] - pr["canal_d"] / 2 - pr["lam_t"] - f(at("sp_len") * np.cos(incl))
    tp = at("tp_len") + at("lam_t")
    pr["tip_x"] = pr["canal_w"] / 2 + 0.5 * pr["lam_t"] + f(tp * np.cos(back))
    pr["tip_y"] = pr["y_canal"] - 1.0 - f(tp * np.sin(back))
    return pr


def _window_xy(canvas: _Canvas, x0, x1, y0, y1):
    """Slices and coordinates ((n,1,1), (1,m,1)) of the columns x0 <= x <= x1,
    y0 <= y <= y1 over every z; None when empty."""
    sl = canvas.window(np.array([x0, y0, -1e9]), np.array([x1, y1, 1e9]))
    if sl is None:
        return None
    return sl, canvas.axes[0][sl[0]][:, None, None], canvas.axes[1][sl[1]][None, :, None]


def _paint(hu: np.ndarray, d, value, width: float) -> None:
    """In place: hu <- hu + f (value - hu), f the partial-volume fraction of shape d."""
    hu += fraction(d, width) * (value - hu)


def spine_phantom(
    shape: int | Sequence[int] = (64, 64, 64),
    spacing: float | Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    region: str = "lumbar",
    offset_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Phantom:
    """Draw a spine CT phantom.

    Args:
        shape: volume size (X, Y, Z) in voxels (an int for a cube).
        spacing: voxel size (sx, sy, sz) in mm (a float for isotropic voxels).
        seed: the only source of randomness (``numpy.random.default_rng(seed)``): the same
            seed, shape and spacing give the same phantom.
        region: ``"lumbar"`` (centred near L3; T11-T12 ribs and lung bases show when the
            view is tall) or ``"thoracic"`` (centred near T7; ribs and lungs).
        offset_mm: (x, y, z) mm by which the whole anatomy sits off the volume's centre
            (patients are never placed alike; the seed draws the same anatomy, moved).

    Returns:
        :class:`Phantom`: ``hu`` (X, Y, Z) float32, ``labels`` (X, Y, Z) int16 (VerSe ids,
        discs :data:`DISC_LABEL`), ``spacing``.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    shape = _as_triple(shape, "shape", int)
    spacing = _as_triple(spacing, "spacing", float)
    rng = np.random.default_rng(seed)
    fov = np.array(shape) * np.array(spacing)
    width = float(np.mean(spacing))  # partial-volume ramp of every boundary, mm

    column = _build_column(rng, region, fov)
    offset = tuple(float(o) for o in np.broadcast_to(np.asarray(offset_mm, float), (3,)))
    if not all(math.isfinite(o) for o in offset):
        raise ValueError(f"offset_mm must be three finite numbers (mm), got {offset_mm!r}")
    canvas = _Canvas(shape, spacing, offset)
    x, y, z = canvas.axes
    pr = _profiles(column, z)
    thoracic = region == "thoracic"

    # Body outline: a real-size superellipse, shrunk to fit the field of view with an air
    # margin; subcutaneous fat, then a wall of muscle, then organs inside.
    margin = rng.uniform(0.03, 0.08, size=2) * fov[:2] + 2 * np.array(spacing[:2])
    half_w_real = rng.uniform(145.0, 175.0) if thoracic else rng.uniform(140.0, 170.0)
    body_a = min(half_w_real, fov[0] / 2 - margin[0])
    y_sp = float(pr["y_back"].min())
    y_post = min(max(y_sp - rng.uniform(30.0, 55.0), -(fov[1] / 2 - margin[1])), y_sp - 6.0)
    y_ant = min(float(pr["yb"].max()) + rng.uniform(110.0, 160.0), fov[1] / 2 - margin[1])
    body_b, body_y = (y_ant - y_post) / 2, (y_ant + y_post) / 2
    squeeze = min(1.0, body_a / half_w_real)
    t_fat = rng.uniform(6.0, 25.0) * squeeze + width
    t_wall = rng.uniform(6.0, 12.0) * squeeze + width
    hu_of = {
        k: rng.uniform(*v)
        for k, v in TISSUE_HU.items()
        if k not in ("air", "cortical", "cancellous")
    }

    d_body = superellipse(x[:, None], y[None, :] - body_y, body_a, body_b, p=2.3)  # (X, Y)
    base = np.full(shape[:2], -1000.0, np.float32)
    _paint(base, d_body, hu_of["fat"], width)
    _paint(base, d_body + t_fat, hu_of["muscle"], width)
    hu = np.repeat(base[:, :, None], shape[2], axis=2)
    texture = _smooth_noise(rng, shape, 12.0 / width)
    organ = hu_of["organ"] + 5.0 * texture
    f_vfat = np.clip((texture - rng.uniform(0.2, 1.2)) / 0.5, 0.0, 1.0)  # visceral fat
    organ += f_vfat * (hu_of["fat"] - organ)
    hu += fraction(d_body + t_fat + t_wall, width)[:, :, None] * (organ - hu)
    fat_in = (d_body + t_fat)[:, :, None]  # muscles stay inside the subcutaneous fat

    # Back muscles (erector spinae, multifidus) fill the space behind the transverse
    # processes beside the spinous processes; psoas beside the lumbar bodies.
    half = np.minimum(pr["tip_x"] + rng.uniform(14.0, 24.0), body_a - t_fat - 4.0)
    front = pr["y_canal"] + 6.0
    depth = (front - (y_post + t_fat / 2)) / 2 + 4.0
    win = _window_xy(
        canvas,
        float((pr["xc"] - half).min()) - 4,
        float((pr["xc"] + half).max()) + 4,
        y_post - 4,
        float(front.max()) + 4,
    )
    if win is not None:
        sl, xs, ys = win
        d = superellipse(xs - pr["xc"], ys - (front - depth), half, depth, p=3.0)
        _paint(hu[sl], np.maximum(d, fat_in[sl[0], sl[1]]), hu_of["muscle"], width)
    if float(pr["psoas"].max()) > 1.0:
        r_ps = pr["psoas"] * rng.uniform(0.85, 1.15)
        reach = float((pr["body_w"] / 2 + 1.6 * r_ps).max()) + 4
        win = _window_xy(
            canvas,
            float(pr["xc"].min()) - reach,
            float(pr["xc"].max()) + reach,
            float(pr["yb"].min()) - 30,
            float(pr["yb"].max()) + 30,
        )
        if win is not None:
            sl, xs, ys = win
            for side in (-1.0, 1.0):
                px = pr["xc"] + side * (pr["body_w"] / 2 + 0.6 * r_ps)
                d = superellipse(
                    xs - px,
                    ys - (pr["yb"] - 3.0),
                    np.maximum(r_ps, 0.5),
                    np.maximum(0.9 * r_ps, 0.5),
                )
                _paint(hu[sl], np.where(r_ps > 1.0, d, np.float32(1e4)), hu_of["muscle"], width)

    # Rib cage: per slice an ellipse through the transverse process tips, reaching to just
    # inside the chest wall; lungs fill it above the diaphragm dome, around the mediastinum.
    cage = None
    if column.rib_levels:
        wall = t_fat + t_wall + 4.0
        narrowing = np.interp(column.labels_up, [7, 8, 11, 19], [0.6, 0.7, 0.95, 1.0])
        cage_a = np.minimum(body_a - wall, 125.0 * np.interp(z, column.z_levels, narrowing))
        tip_x, tip_y = pr["tip_x"][0, 0], pr["tip_y"][0, 0]
        cage_a = np.maximum(cage_a, 1.2 * tip_x + 6.0).astype(np.float32)
        root = np.sqrt(1.0 - (tip_x / cage_a) ** 2)
        cage_b = np.maximum((body_y + body_b - wall - tip_y) / (1.0 + root), 20.0)
        cage = {
            "xc": pr["xc"][0, 0],
            "yc": (tip_y + cage_b * root).astype(np.float32),
            "a": cage_a,
            "b": cage_b.astype(np.float32),
            "psi0": -np.arccos(tip_x / cage_a).astype(np.float32),
        }
        lower = [lv.centre[2] for lv in column.rib_levels if lv.label >= 17]
        z_dia = (min(lower) if lower else column.rib_levels[-1].centre[2]) - 10.0
        win = _window_xy(
            canvas,
            float(pr["xc"].min() - cage_a.max()),
            float(pr["xc"].max() + cage_a.max()),
            float(tip_y.min()),
            float((cage["yc"] + cage["b"]).max()),
        )
        top = z[-1] + 1.0 > z_dia
        if win is not None and top:
            sl, xs, ys = win
            c = {k: v[None, None, :] for k, v in cage.items()}
            xr = xs - c["xc"]
            d_cage = superellipse(xr, ys - c["yc"], c["a"], c["b"])
            rho2 = (xr / c["a"]) ** 2 + ((ys - c["yc"]) / c["b"]) ** 2
            dome = z_dia + 70.0 * np.clip(1.0 - rho2, 0.0, 1.0) - z[None, None, :]
            d_med = superellipse(xr + 12.0, ys - (pr["yb"] + pr["body_d"] / 2 + 50.0), 48.0, 55.0)
            d_spine = superellipse(
                xr, ys - pr["yb"], pr["body_w"] / 2 + 8.0, pr["body_d"] / 2 + 12.0
            )
            d_aorta = superellipse(
                xr + 0.35 * pr["body_w"], ys - (pr["yb"] + 0.45 * pr["body_d"]), 13.0, 13.0
            )
            # No lung behind the transverse processes, nor medially behind the bodies.
            d_back = np.minimum(
                np.maximum(np.abs(xr) - pr["tip_x"] - 8.0, ys - pr["tip_y"] - 6.0),
                np.maximum(np.abs(xr) - pr["body_w"] / 2 - 6.0, ys - pr["yb"]),
            )
            keep_out = np.minimum(np.minimum(d_med, d_spine), np.minimum(d_aorta, d_back))
            d_lung = np.maximum(np.maximum(d_cage + 9.0, dome), -keep_out)
            lung = hu_of["lung"] + 25.0 * texture[sl]
            hu[sl] += fraction(d_lung, width) * (lung - hu[sl])

    # Bones, discs and the thecal sac.
    for i, vt in enumerate(column.vertebrae):
        _draw_vertebra(canvas, i, vt)
    for upper, lower_vt in zip(column.vertebrae[:-1], column.vertebrae[1:]):
        _draw_disc(canvas, upper, lower_vt)
    if cage is not None:
        for vt in column.rib_levels:
            _draw_rib_neck(canvas, vt)
        _draw_ribs(canvas, column, cage, rng)
    _paint(hu, canvas.d_canal, hu_of["csf"], width)
    _paint(hu, canvas.d_disc, hu_of["disc"] + 6.0 * texture, width)

    # Bone: cortical shell (~1.5 mm, at least one voxel) around cancellous bone, composited
    # with partial volume only where bone reaches: hu (1 - f_bone) + cortical (f_bone -
    # f_canc) + cancellous f_canc.
    is_rib = canvas.d_rib < canvas.d_bone
    d_all = np.minimum(canvas.d_rib, canvas.d_bone)
    near = np.nonzero(d_all < width / 2)
    cort = np.array([v.cortical for v in column.vertebrae] + [0.0], np.float32)
    canc = np.array([v.cancellous for v in column.vertebrae] + [0.0], np.float32)
    ref_cort = float(np.median(cort[:-1])) if len(cort) > 1 else 1100.0
    ref_canc = float(np.median(canc[:-1])) if len(canc) > 1 else 220.0
    rib = is_rib[near]
    owner = canvas.owner[near]
    v_cort = np.where(rib, np.float32(rng.uniform(0.8, 0.95) * ref_cort), cort[owner])
    v_canc = np.where(rib, np.float32(rng.uniform(0.9, 1.1) * ref_canc), canc[owner])
    v_canc *= 1.0 + 0.08 * _smooth_noise(rng, shape, 4.0 / width)[near]
    shell = max(1.5, max(spacing))
    d_n = d_all[near]
    f_bone, f_canc = fraction(d_n, width), fraction(d_n + shell, width)
    h_n = hu[near]
    hu[near] = h_n + (f_bone - f_canc) * (v_cort - h_n) + f_canc * (v_canc - h_n)

    # CT noise: white Gaussian smoothed to ~1 voxel correlation, inside the body only.
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.7)
    noise *= rng.uniform(4.0, 20.0) / (noise.std() + 1e-6)
    hu += noise * fraction(d_body, width)[:, :, None]

    labels = np.zeros(shape, np.int16)
    labels[canvas.d_disc <= 0] = DISC_LABEL
    vert_ids = np.array([v.label for v in column.vertebrae] + [0], np.int16)
    bone = (canvas.d_bone <= 0) & ~is_rib
    labels[bone] = vert_ids[canvas.owner[bone]]
    return Phantom(hu, labels, spacing)


# --- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Write ``--n`` phantoms as VerSe-style NIfTI pairs into ``--out``."""
    from tqdm import tqdm

    from x2ct.clihelp import HelpFormatter
    from x2ct.data.io import save_ct

    parser = argparse.ArgumentParser(
        prog="python -m x2ct.data.phantom",
        description="Write procedural spine CT phantoms as <id>_ct.nii.gz (HU) and "
        "<id>_seg-vert_msk.nii.gz (VerSe labels; discs 100). Case i uses seed + i.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--n", type=int, required=True, help="number of phantoms")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--shape", type=int, nargs="+", default=[64], help="voxels (1 or 3 ints)")
    parser.add_argument("--spacing", type=float, nargs="+", default=[2.0], help="mm (1 or 3)")
    parser.add_argument("--seed", type=int, default=90000, help="seed of the first phantom "
                        "(default 90000: the held-out test phantoms; training uses 0, 1, ...)")
    parser.add_argument("--region", choices=REGIONS, default="lumbar")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if len(args.shape) not in (1, 3) or len(args.spacing) not in (1, 3):
        parser.error("--shape and --spacing take 1 or 3 values")
    shape = args.shape * 3 if len(args.shape) == 1 else args.shape
    spacing = args.spacing * 3 if len(args.spacing) == 1 else args.spacing
    args.out.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(args.n), desc="phantoms", unit="case"):
        seed = args.seed + i
        ph = spine_phantom(shape, spacing, seed=seed, region=args.region)
        case = phantom_id(seed)
        save_ct(args.out / f"{case}_ct.nii.gz", ph.hu, spacing=ph.spacing)
        save_ct(args.out / f"{case}_seg-vert_msk.nii.gz", ph.labels, spacing=ph.spacing)
    first, last = phantom_id(args.seed), phantom_id(args.seed + args.n - 1)
    print(f"wrote {args.n} phantom(s) {first}{'' if args.n == 1 else ' .. ' + last} "
          f"({args.region}, {'x'.join(map(str, shape))} voxels of {spacing} mm) to {args.out}: "
          "<id>_ct.nii.gz (HU) and <id>_seg-vert_msk.nii.gz (VerSe labels)")


if __name__ == "__main__":
    main()
