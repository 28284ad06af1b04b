"""Test scenes for the spine localiser: today's phantom on a whole-body grid with the
distractors that real chest and abdominal CTs carry, placed from the phantom's labels.

Each distractor is a function ``(scene, anatomy, rng) -> None`` that paints into ``scene.hu`` in
place and never changes ``scene.labels`` (metal in the pedicles replaces bone's HU, not the
vertebra it sits in). HU values are typical published CT numbers: iodinated contrast in the
aorta and heart chambers 250-400 HU in the arterial phase, enhanced renal cortex ~150-200
HU, positive oral contrast 300-700 HU, titanium and cobalt-chrome implants well above
2000 HU (clipped by most scanners near 3071), the table's carbon-fibre shell a few hundred
HU around a foam core near -850 HU.

``SCENE_SHAPE`` at 2 mm gives a 480 x 340 x 200 mm field: the phantom's body is close to a
real adult's, with room for arms beside it and a table below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from x2ct.data import DISC_LABEL, spine_phantom
from x2ct.data.localise import SLAB_HALF_MM

SCENE_SHAPE = (240, 170, 100)
SCENE_SPACING = (2.0, 2.0, 2.0)


@dataclass
class Scene:
    hu: np.ndarray  # (X, Y, Z) float32 HU, RAS+
    labels: np.ndarray  # (X, Y, Z) int16 VerSe labels, discs DISC_LABEL
    spacing: tuple[float, float, float]

    def axes(self) -> list[np.ndarray]:
        """Centred-frame coordinates (mm) of the voxel centres along each axis."""
        return [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(self.hu.shape, self.spacing)]

    def grid(self):
        x, y, z = self.axes()
        return x[:, None, None], y[None, :, None], z[None, None, :]


def make_scene(
    region: str = "lumbar",
    seed: int = 0,
    shape: Sequence[int] = SCENE_SHAPE,
    spacing: Sequence[float] = SCENE_SPACING,
    offset_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Scene:
    ph = spine_phantom(shape, spacing, seed=seed, region=region, offset_mm=offset_mm)
    return Scene(ph.hu.copy(), ph.labels.copy(), tuple(float(s) for s in spacing))


def true_centre(scene: Scene, z_mm) -> np.ndarray:
    """The oracle: centroid (x, y) mm of the vertebra labels (discs left out) in the slab
    ``z_mm +- SLAB_HALF_MM``; ``z_mm`` a height or a sequence of them ((2,) or (K, 2))."""
    x, y, z = scene.axes()
    v = (scene.labels > 0) & (scene.labels != DISC_LABEL)
    n = v.sum((0, 1)).astype(np.float64)  # per slice
    sx = np.einsum("xyz,x->z", v, x)
    sy = np.einsum("xyz,y->z", v, y)
    out = []
    for z0 in np.atleast_1d(np.asarray(z_mm, dtype=np.float64)):
        sel = np.abs(z - z0) <= SLAB_HALF_MM
        if n[sel].sum() == 0:
            raise ValueError(f"no vertebra labels within {SLAB_HALF_MM} mm of z = {z0}")
        out.append([sx[sel].sum() / n[sel].sum(), sy[sel].sum() / n[sel].sum()])
    out = np.array(out)
    return out[0] if np.ndim(z_mm) == 0 else out


# --- the anatomy the distractors are placed from ----------------------------------------------


@dataclass
class _Anatomy:
    x: np.ndarray  # (Z,) vertebra centroid x per slice (smoothed, mm)
    y: np.ndarray  # (Z,) vertebra centroid y
    front: np.ndarray  # (Z,) anterior edge of the column (body or disc) along the midline
    body_x: tuple[float, float]  # body's extent in x (mm), over all slices
    body_y: tuple[float, float]  # body's extent in y (mm)


def _anatomy(scene: Scene) -> _Anatomy:
    x, y, _ = scene.axes()
    col = scene.labels > 0
    n = col.sum((0, 1))
    sz = scene.spacing[2]
    with np.errstate(invalid="ignore"):
        cx = np.einsum("xyz,x->z", col, x) / n
        cy = np.einsum("xyz,y->z", col, y) / n
    ok = n > 0
    k = np.arange(col.shape[2])
    cx = np.interp(k, k[ok], cx[ok])
    cy = np.interp(k, k[ok], cy[ok])
    front = np.empty(col.shape[2])
    for kk in range(col.shape[2]):
        strip = col[np.abs(x - cx[kk]) <= 10.0, :, kk].any(0)
        front[kk] = y[strip].max() if strip.any() else cy[kk] + 25.0
    sigma = 10.0 / sz
    cx, cy = (ndimage.gaussian_filter1d(a, sigma, mode="nearest") for a in (cx, cy))
    front = ndimage.maximum_filter1d(front, max(1, int(30.0 / sz)), mode="nearest")
    body = scene.hu > -500
    bx, by = np.nonzero(body.any(2))
    return _Anatomy(cx, cy, front, (x[bx].min(), x[bx].max()), (y[by].min(), y[by].max()))


def _window(scene: Scene, lo, hi):
    """Index slices of the voxels whose centres lie in the mm box [lo, hi] (None when
    empty) and their coordinates, broadcastable (n, 1, 1), (1, m, 1), (1, 1, l)."""
    sl = []
    for ax, a, b in zip(scene.axes(), lo, hi):
        idx = np.nonzero((ax >= a) & (ax <= b))[0]
        if idx.size == 0:
            return None, None
        sl.append(slice(idx[0], idx[-1] + 1))
    x, y, z = (ax[s] for ax, s in zip(scene.axes(), sl))
    return tuple(sl), (x[:, None, None], y[None, :, None], z[None, None, :])


def _fill(scene: Scene, sl, inside: np.ndarray, value: float, only=None) -> None:
    """``hu[sl][inside] = value``, restricted to the (X, Y, Z) mask ``only`` when given."""
    if only is not None:
        inside = inside & only[sl]
    scene.hu[sl][inside] = value


def ball(scene: Scene, centre, radii, value: float, only=None) -> None:
    """Paint an axis-aligned ellipsoid (``radii`` mm, a number for a sphere)."""
    c = np.asarray(centre, float)
    r = np.broadcast_to(np.asarray(radii, float), (3,))
    sl, (gx, gy, gz) = _window(scene, c - r, c + r)
    if sl is None:
        return
    inside = ((gx - c[0]) / r[0]) ** 2 + ((gy - c[1]) / r[1]) ** 2 + ((gz - c[2]) / r[2]) ** 2
    _fill(scene, sl, inside <= 1.0, value, only)


def capsule(scene: Scene, a, b, radius: float, value: float, only=None) -> None:
    """Paint the segment a-b (mm) thickened by ``radius``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    sl, (gx, gy, gz) = _window(scene, np.minimum(a, b) - radius, np.maximum(a, b) + radius)
    if sl is None:
        return
    ab = b - a
    t = ((gx - a[0]) * ab[0] + (gy - a[1]) * ab[1] + (gz - a[2]) * ab[2]) / (ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    d2 = (gx - a[0] - t * ab[0]) ** 2 + (gy - a[1] - t * ab[1]) ** 2 + (gz - a[2] - t * ab[2]) ** 2
    _fill(scene, sl, d2 <= radius**2, value, only)


# --- distractors --------------------------------------------------------------------------------


def _aorta_line(an: _Anatomy):
    return an.x - 18.0, an.front - 4.0  # left (-x) and anterior, hugging the body


def aorta(scene: Scene, an: _Anatomy, rng: np.random.Generator) -> None:
    """Contrast-filled aorta (300 HU, 25 mm) left-anterior of the column along its whole
    length, kept 3 mm (wall and fat) off the vertebrae: it lies against the body."""
    gx, gy, _ = scene.grid()
    ax, ay = _aorta_line(an)
    lumen = (gx - ax) ** 2 + (gy - ay) ** 2 <= 12.5**2
    dist = ndimage.distance_transform_edt(scene.labels == 0, sampling=scene.spacing)
    lumen = lumen & (dist >= 3.0)
    scene.hu[lumen] = 300.0 + rng.normal(0.0, 10.0, size=int(lumen.sum()))


def heart(scene: Scene, an: _Anatomy, rng: np.random.Generator) -> None:
    """Contrast-filled heart chambers: a 300 HU ellipsoid (110 x 100 x 100 mm) in front of
    the column, left of the midline."""
    k = len(an.x) // 2
    z = scene.axes()[2]
    centre = (an.x[k] - 20.0, an.front[k] + 60.0, z[k] + 30.0)
    ball(scene, centre, (55.0, 50.0, 50.0), 300.0, only=scene.hu > -900)


def kidneys(scene: Scene, an: _Anatomy, rng: np.random.Generator) -> None:
    """Enhanced kidneys beside the column: a 180 HU cortex (8 mm) around a 20 HU medulla
    and pelvis (a ring with canal-like content)."""
    k = len(an.x) // 2
    z = scene.axes()[2]
    for side in (-1.0, 1.0):
        c = (an.x[k] + side * 70.0, an.y[k] + 10.0, z[k])
        ball(scene, c, (28.0, 24.0, 55.0), 180.0)
        ball(scene, c, (20.0, 16.0, 47.0), 20.0)


def table(scene: Scene, an: _Anatomy, rng: np.random.Generator) -> None:
    """The CT table below the patient, behind an air gap: a curved carbon-fibre sandwich
    (3 mm shells at 400 HU around a foam core at -850 HU), edges curving up."""
    gx, gy, _ = scene.grid()
    top = an.body_y[0] - 6.0 + gx**2 / (2 * 500.0)  # surface under the body, curving up
    depth = top - gy  # mm below the table's top surface
    sandwich = (depth >= 0) & (depth < 24.0) & (np.abs(gx) < 230.0)
    shell = sandwich & ((depth < 3.0) | (depth >= 21.0))
    air = scene.hu < -900
    scene.hu[sandwich & air & ~shell] = -850.0
    scene.hu[shell & air] = 400.0


def calcifications(scene: Scene, an: _Anatomy, rng: np.random.Generator) -> None:
    """Vascular calcifications: 2-4 mm specks at 600-1200 HU on the aortic wall and in
    the body's front."""
    ax, ay = _aorta_line(an)
    z = scene.axes()[2]
    for _ in range(30):
        k = rng.integers(len(z))
        t = rng.uniform(0, 2 * math.pi)
        c = (ax[k] + 13.0 * math.cos(t), ay[k] + 13.0 * math.sin(t), z[k])
        ball(scene, c, rng.uniform(1.0, 2.0), rng.uniform(600, 1200))
    for _ in range(20):
        k = rng.integers(len(z))
        c = (an.x[k] + rng.uniform(-80, 80), an.front[k] + rng.uniform(20, 90), z[k])
        ball(scene, c, rng.uniform(1.0, 2.0), rng.uniform(600, 1200), only=scene.hu > -900)


def _level_canal(scene: Scene, label: int):
    """Canal centre (x, y) and mean z (mm) of one vertebra: the hole of its labels'
    projection along z."""
    x, y, z = scene.axes()
    v = scene.labels == label
    proj = v.any(2)
    hole = ndimage.binary_fill_holes(proj) & ~proj
    if not hole.any():
        raise ValueError(f"vertebra {label} has no closed canal in the scene")
    i, j = np.nonzero(hole)
    _, _, kk = np.nonzero(v)
    return x[i].mean(), y[j].mean(), z[kk].mean()


def instrumented_levels(scene: Scene) -> list[int]:
    """The three vertebrae nearest the middle of the scene's z range (the fused ones)."""
    z = scene.axes()[2]
    found = []
    for label in np.unique(scene.labels):
        if label == 0 or label == DISC_LABEL:
            continue
        _, _, kk = np.nonzero(scene.labels == label)
        found.append((abs(z[kk].mean()), int(label)))
    return sorted(lb for _, lb in sorted(found)[:3])


def spinal_metal(scene: Scene, an: _Anatomy, rng: np.random.Generator) -> None:
    """Posterior fusion over three levels: two pedicle screws per level (6.5 mm, through
    the pedicle to 80% of the way to the body's front, converging) with their heads, and
    two 6 mm rods joining the heads along z; all 3000 HU."""
    levels = instrumented_levels(scene)
    canals = [_level_canal(scene, lb) for lb in levels]
    z = scene.axes()[2]
    for side in (-1.0, 1.0):
        heads = []
        for cx, cy, cz in canals:
            front = np.interp(cz, z, an.front)
            head = np.array([cx + side * 22.0, cy - 14.0, cz])
            tip = np.array([cx + side * 7.0, cy + 0.8 * (front - cy), cz])
            capsule(scene, head, tip, 3.25, 3000.0)
            ball(scene, head, 6.0, 3000.0)
            heads.append(head)
        a = heads[0] + np.array([0.0, 0.0, -10.0 * np.sign(heads[-1][2] - heads[0][2])])
        b = heads[-1] + np.array([0.0, 0.0, 10.0 * np.sign(heads[-1][2] - heads[0][2])])
        capsule(scene, a, b, 3.0, 3000.0)


def remote_metal(scene: Scene, an: _Anatomy, rng: np.random.Generator) -> None:
    """Metal away from the spine: a pacemaker (40 x 10 x 50 mm) under the left chest
    skin and a hip prosthesis (a 24 mm head in a hollow cup, a stem) low on the right."""
    gx, gy, gz = scene.grid()
    z = scene.axes()[2]
    k = len(z) // 2
    box = (
        (np.abs(gx - (an.body_x[0] + 60.0)) <= 20.0)
        & (np.abs(gy - (an.body_y[1] - 15.0)) <= 5.0)
        & (np.abs(gz - (z[k] + 40.0)) <= 25.0)
    )
    scene.hu[box] = 3000.0
    hip = np.array([an.x[k] + 90.0, an.y[k] + 30.0, z[0] + 40.0])
    ball(scene, hip, 30.0, 3000.0)  # cup (hollowed next) ...
    ball(scene, hip, 26.0, 20.0)  # ... around joint fluid
    ball(scene, hip, 24.0, 3000.0)  # head
    capsule(scene, hip, hip + np.array([25.0, 0.0, -60.0]), 7.0, 3000.0)  # stem


def arms(scene: Scene, an: _Anatomy, rng: np.random.Generator) -> None:
    """Arms resting beside the body along z: skin and fat around muscle (40 x 45 mm), a
    humerus (cortex 1300 HU, 11 mm outer radius, fatty marrow -60 HU inside: a ring)."""
    gx, gy, _ = scene.grid()
    yc = 0.5 * (an.body_y[0] + an.body_y[1])
    for side, edge in ((-1.0, an.body_x[0]), (1.0, an.body_x[1])):
        xc = edge + side * 40.0
        r2 = ((gx - xc) / 40.0) ** 2 + ((gy - yc) / 45.0) ** 2
        d = np.hypot(gx - xc, gy - yc)
        limb = np.broadcast_to(r2 <= 1.0, scene.hu.shape)
        scene.hu[limb] = -90.0
        scene.hu[np.broadcast_to(r2 <= 0.75, scene.hu.shape)] = 50.0
        scene.hu[np.broadcast_to(d <= 11.0, scene.hu.shape)] = 1300.0
        scene.hu[np.broadcast_to(d <= 6.5, scene.hu.shape)] = -60.0


def bowel_contrast(scene: Scene, an: _Anatomy, rng: np.random.Generator) -> None:
    """Positive oral contrast in bowel loops in front of the column (at least 15 mm from
    the vertebrae): segments 20-32 mm wide running in every direction, some filled
    (400-700 HU), some coated (a 3 mm contrast wall around fluid at 15 HU: rings with
    canal-like content)."""
    z = scene.axes()[2]
    # Bowel never touches the vertebrae: vessels and prevertebral tissue lie between.
    away = ndimage.distance_transform_edt(scene.labels == 0, sampling=scene.spacing) >= 15.0
    for i in range(10):
        k = rng.integers(len(z))
        a = np.array(
            [
                an.x[k] + rng.uniform(-90, 90),
                rng.uniform(an.front[k] + 25.0, max(an.front[k] + 30.0, an.body_y[1] - 35.0)),
                z[k],
            ]
        )
        d = rng.normal(size=3)
        b = a + 60.0 * d / np.linalg.norm(d)
        r = rng.uniform(10.0, 16.0)
        inside = (scene.hu > -900) & away
        capsule(scene, a, b, r, rng.uniform(400, 700), only=inside)
        if i % 2:
            capsule(scene, a, b, r - 3.0, 15.0, only=inside)


DISTRACTORS: dict[str, Callable[[Scene, _Anatomy, np.random.Generator], None]] = {
    "aorta": aorta,
    "heart": heart,
    "kidneys": kidneys,
    "table": table,
    "calcifications": calcifications,
    "spinal_metal": spinal_metal,
    "remote_metal": remote_metal,
    "arms": arms,
    "bowel_contrast": bowel_contrast,
}


def add(scene: Scene, *names: str, seed: int = 0) -> Scene:
    """Paint the named distractors (in the given order) into ``scene``; returns it."""
    rng = np.random.default_rng(seed)
    an = _anatomy(scene)  # from the clean scene: distractors never move each other
    for name in names:
        DISTRACTORS[name](scene, an, rng)
    return scene


# --- acquisitions -------------------------------------------------------------------------------


def crop(scene: Scene, x_mm=None, y_mm=None, z_mm=None) -> Scene:
    """Keep the voxels whose centres lie in the given (low, high) mm ranges (a smaller
    reconstruction field of view, or a body cut at the skin); the result is re-centred
    (DESIGN.md), so its coordinates differ from the scene's."""
    sl = []
    for ax, rng_mm in zip(scene.axes(), (x_mm, y_mm, z_mm)):
        if rng_mm is None:
            sl.append(slice(None))
            continue
        idx = np.nonzero((ax >= rng_mm[0]) & (ax <= rng_mm[1]))[0]
        sl.append(slice(idx[0], idx[-1] + 1))
    sl = tuple(sl)
    return Scene(scene.hu[sl].copy(), scene.labels[sl].copy(), scene.spacing)


def demineralise(scene: Scene, factor: float) -> Scene:
    """Osteoporotic bone: every vertebra voxel's (and its one-voxel rim's) excess over
    40 HU scaled by ``factor`` (0.35 takes cancellous bone from ~250 to ~110 HU and the
    cortex from ~1200 to ~450 HU, as in elderly patients' CTs), in place; returns it."""
    vert = (scene.labels > 0) & (scene.labels != DISC_LABEL)
    bone = ndimage.binary_dilation(vert) & (scene.hu > 100.0)
    scene.hu[bone] = 40.0 + (scene.hu[bone] - 40.0) * factor
    return scene


def resample(scene: Scene, spacing: Sequence[float]) -> Scene:
    """The same field of view at another spacing (HU trilinear, labels nearest), in the
    centred frame: new voxel centres map to old voxel coordinates exactly."""
    old = np.array(scene.spacing)
    new = np.asarray(spacing, dtype=np.float64)
    fov = np.array(scene.hu.shape) * old
    shape = tuple(int(n) for n in np.floor(fov / new + 1e-6))
    # old index = (new index - (N'-1)/2) * new / old + (N-1)/2
    scale = new / old
    offset = (np.array(scene.hu.shape) - 1) / 2 - (np.array(shape) - 1) / 2 * scale
    hu = ndimage.affine_transform(scene.hu, scale, offset, shape, order=1, mode="nearest")
    lab = ndimage.affine_transform(scene.labels, scale, offset, shape, order=0, mode="nearest")
    return Scene(hu.astype(np.float32), lab.astype(np.int16), tuple(float(s) for s in new))
