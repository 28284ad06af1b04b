"""The spinal column: per-seed vertebrae built as a chain of wedged bodies and discs, and
their drawing (vertebrae with cortical shell and trabecular texture, discs, canal, sacrum).

The chain: each vertebra has a frame (u toward the patient's right, v anterior, w
superior) with sagittal angle theta, coronal angle phi and axial rotation psi. Between two
vertebrae the frames turn by the segment's angle (kyphosis positive): the thoracic
kyphosis (T4-T12) and lumbar lordosis (L1-S1) drawn per seed are shared over the segments
as published, the disc taking what the bodies' own wedging does not. A fractured (wedged)
body adds its wedge to its segments, so the column kinks at a fracture as it does in
patients. Scoliosis is a coronal curve with apical axial rotation toward the convexity.
The whole chain is then turned so that the T4-L5 chord runs along z (a supine patient),
and placed so that the centre level's bone centroid lies on the z axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from x2ct.data.phantom import anatomy as A
from x2ct.data.phantom._shapes import prism, superellipse
from x2ct.data.phantom.draw import Canvas, ellipsoid, rotation
from x2ct.data.phantom.options import Features
from x2ct.data.phantom.pathology import degenerate, fracture
from x2ct.data.phantom.texture import LatticeNoise, stream
from x2ct.data.phantom.vertebra import Vertebra, vertebra_window

__all__ = ["CENTRE_LEVEL", "Column", "build_column", "draw_column"]

CENTRE_LEVEL = {"lumbar": 22, "thoracic": 14}  # L3, T7


@dataclass
class Column:
    vertebrae: list[Vertebra]  # C3 .. L5, S1 .. S5, top to bottom
    disc_h: dict[int, float]  # mid-sagittal disc height below each mobile level (mm)
    vacuum: dict[int, float]  # levels whose disc below holds gas: gas fraction of the disc
    lordosis: float
    kyphosis: float
    cobb: float
    _tables: dict | None = field(default=None, init=False, repr=False)
    _zs: np.ndarray | None = field(default=None, init=False, repr=False)

    def by_label(self, label: int) -> Vertebra:
        for vt in self.vertebrae:
            if vt.label == label and vt.sacral <= 1:
                return vt
        raise KeyError(label)

    def z_of(self, label: int) -> float:
        return float(self.by_label(label).centre[2])

    def profile(self, z) -> dict[str, np.ndarray]:
        """Per-z landmarks (mm) of the column, each shaped like ``z`` (float32): body
        centre ``x``, ``y``, body ``half_w`` and ``half_d``, the back of the spinous
        processes ``back``, transverse process tips ``tip_x`` (from the centre line) and
        ``tip_y``, and the continuous ``level`` (VerSe label; 25 = S1)."""
        if self._tables is None:
            vts = [v for v in self.vertebrae if v.sacral <= 1][::-1]  # ascending z
            t = {
                "x": [v.centre[0] for v in vts],
                "y": [v.centre[1] for v in vts],
                "half_w": [v.p["body_w"] / 2 for v in vts],
                "half_d": [v.p["body_d"] / 2 for v in vts],
                "level": [25.0 if v.sacral else float(v.label) for v in vts],
                "back": [v.centre[1] + v.canal_v - v.p["canal_d"] / 2 - v.p["lam_t"]
                         - v.p["sp_len"] * math.cos(math.radians(v.p["sp_incl"]))
                         for v in vts],
                "tip_x": [v.tp_tip(1.0)[0] for v in vts],
                "tip_y": [v.centre[1] + v.tp_tip(1.0)[1] for v in vts],
            }  # fmt: skip
            self._zs = np.array([v.centre[2] for v in vts])
            self._tables = {k: np.asarray(val, np.float64) for k, val in t.items()}
        return {k: np.interp(z, self._zs, val).astype(np.float32)
                for k, val in self._tables.items()}  # fmt: skip


def _level_params(rng: np.random.Generator, size: float) -> dict[int, dict[str, float]]:
    anchors = sorted(k for k in A.POSTERIOR if k != A.SACRUM_LABEL)
    params = {}
    for lv in A.LEVELS:
        p = dict(A.VERTEBRA[lv])
        for k, sd in A.VERTEBRA_SD.items():
            p[k] = p[k] * size + float(np.clip(rng.normal(0.0, 0.35 * sd), -sd, sd))
        if lv == A.SACRUM_LABEL:
            post = dict(A.POSTERIOR[lv])
        else:
            post = {
                k: float(np.interp(lv, anchors, [A.POSTERIOR[a][k] for a in anchors]))
                for k in A.POSTERIOR[3]
            }
        for k in ("lam_t", "sp_len", "sp_h", "tp_len", "tp_t"):
            post[k] *= size * rng.uniform(0.95, 1.05)
        post["sp_incl"] += rng.uniform(-5, 5)
        post["tp_back"] += rng.uniform(-4, 4)
        p.update(post)
        p["ha"], p["hp"] = p.pop("body_ha"), p.pop("body_hp")
        p["wedge0"] = math.degrees(math.atan((p["hp"] - p["ha"]) / (0.75 * p["body_d"])))
        params[lv] = p
    return params


def _sacral_segments(size: float) -> list[dict[str, float]]:
    """S2-S5: bodies shrinking down the sacrum (width, depth, height in mm)."""
    rows = [(40.0, 26.0, 24.0), (30.0, 20.0, 20.0), (22.0, 15.0, 16.0), (15.0, 11.0, 12.0)]
    base = {k: v for k, v in A.VERTEBRA[A.SACRUM_LABEL].items() if k not in ("body_ha", "body_hp")}
    base.update(A.POSTERIOR[A.SACRUM_LABEL])
    return [
        dict(base, body_w=w * size, body_d=d * size, ha=h * size, hp=h * size,
             canal_w=0.5 * w * size, canal_d=0.35 * d * size, wedge0=0.0)
        for w, d, h in rows
    ]  # fmt: skip


def _scoliosis(rng: np.random.Generator, cobb: float, n: int):
    """Coronal frame angles phi and axial rotations psi (deg) per level index 0..n-1 (top
    to bottom) for a curve of Cobb angle ``cobb``."""
    apex_label = int(rng.choice([15, 18, 20, 21]))  # T8, T11, L1, L2
    apex = A.LEVELS.index(apex_label)
    half = int(rng.integers(3, 6))  # end vertebrae apex -+ half
    tail = 3
    side = float(rng.choice([-1.0, 1.0]))  # convex toward +x (the patient's right) or -x
    phi, psi = np.zeros(n), np.zeros(n)
    for i in range(n):
        k = apex - i  # positive above the apex
        if abs(k) <= half:
            phi[i] = -side * cobb / 2 * math.sin(math.pi * k / (2 * half))
            psi[i] = -side * A.APICAL_ROTATION_PER_COBB * cobb * math.cos(math.pi * k / (2 * half))
        elif abs(k) <= half + tail:
            end = -side * cobb / 2 * math.copysign(1.0, k)
            phi[i] = end * math.cos(math.pi / 2 * (abs(k) - half) / tail)
    return phi, psi


def build_column(seed: int, region: str, feat: Features) -> Column:
    """Draw the column of phantom ``seed``: sizes, densities, curves, pathology, and the
    chain that places every vertebra (anatomy mm, before the global offset)."""
    rng = stream(seed, "column")
    size = float(np.clip(rng.normal(1.0, A.SIZE_SD), 1 - 2.4 * A.SIZE_SD, 1 + 2.4 * A.SIZE_SD))
    params = _level_params(rng, size)
    levels = A.LEVELS
    n = len(levels)
    vts = [Vertebra(label=lv, p=params[lv], sacral=int(lv == A.SACRUM_LABEL)) for lv in levels]
    disc_h = {lv: params[lv]["disc_h"] for lv in levels[:-1]}

    # Bone density and cortex (per seed, per vertebra a few per cent).
    trab = A.hu_from_bmd(feat.bmd)
    cort = rng.uniform(*A.TISSUE_HU["cortical"])
    t_bmd = np.clip((feat.bmd - A.BMD_RANGE[0]) / (A.BMD_RANGE[1] - A.BMD_RANGE[0]), 0, 1)
    shell = A.CORTEX_MM[0] + (A.CORTEX_MM[1] - A.CORTEX_MM[0]) * (0.3 + 0.5 * t_bmd)
    for vt in vts:
        thoracic = 8 <= vt.label <= 19
        vt.trabecular = trab * (1.08 if thoracic else 1.0) * rng.uniform(0.95, 1.05)
        vt.cortical = cort * rng.uniform(0.97, 1.03)
        vt.shell = shell * rng.uniform(0.9, 1.1)

    # Pathology: degeneration (discs, rims, endplates), fractures.
    vacuum = degenerate(seed, vts, disc_h) if feat.degeneration else {}
    if feat.fracture:
        fracture(seed, vts, feat.fracture_grade)

    # Sagittal segment angles (kyphosis positive) between level i and i + 1.
    srng = stream(seed, "curves")
    lordosis = float(np.clip(srng.normal(42.0, 10.0), *A.LORDOSIS_DEG))
    kyphosis = float(np.clip(srng.normal(36.0, 8.0), *A.KYPHOSIS_DEG))
    cerv = float(srng.uniform(*A.CERVICAL_LORDOSIS_DEG))
    target = np.zeros(n - 1)
    for i, lv in enumerate(levels[:-1]):
        if lv <= 7:
            target[i] = -cerv / 5
        elif lv <= 10:  # T1-2 .. T3-4
            target[i] = 2.0
        elif lv <= 18:  # T4-5 .. T11-12
            target[i] = kyphosis * math.sin(math.pi * (lv - 10.5) / 8) / 5.03
        elif lv == 19:
            target[i] = srng.uniform(-1.0, 2.0)
        else:
            target[i] = -lordosis * A.LORDOSIS_SHARE[lv - 20]
    target += srng.normal(0.0, 1.0, size=n - 1)
    seg = np.zeros(n - 1)
    for i in range(n - 1):
        up, lo = vts[i], vts[i + 1]
        normal_wedge = (up.p["wedge0"] + lo.p["wedge0"]) / 2
        disc = target[i] - normal_wedge
        lim = math.degrees(math.atan((disc_h[up.label] - 1.5) / (0.5 * up.p["body_d"])))
        disc = float(np.clip(disc, -lim, lim))
        seg[i] = disc + (up.wedge_deg + lo.wedge_deg) / 2
    theta = np.zeros(n)
    for i in range(n - 2, -1, -1):  # upper = lower + kyphotic angle
        theta[i] = theta[i + 1] + seg[i]
    phi, psi = _scoliosis(stream(seed, "scoliosis"), feat.cobb_deg, n)
    psi += srng.normal(0.0, 1.5, size=n)
    for i, vt in enumerate(vts):
        vt.frame = rotation(-theta[i], phi[i], psi[i])

    # Positions: stack bodies and discs from the centre level outward.
    ic = levels.index(CENTRE_LEVEL[region])
    for i in range(ic - 1, -1, -1):
        up, lo = vts[i], vts[i + 1]
        e = lo.centre + lo.frame[:, 2] * lo.h0 / 2
        nd = up.frame[:, 2] + lo.frame[:, 2]
        up.centre = e + nd / np.linalg.norm(nd) * disc_h[up.label] + up.frame[:, 2] * up.h0 / 2
    for i in range(ic + 1, n):
        up, lo = vts[i - 1], vts[i]
        e = up.centre - up.frame[:, 2] * up.h0 / 2
        nd = up.frame[:, 2] + lo.frame[:, 2]
        lo.centre = e - nd / np.linalg.norm(nd) * disc_h[up.label] - lo.frame[:, 2] * lo.h0 / 2
    # Sacral segments S2-S5 continue the sacrum's kyphotic curve (fused, ~1 mm apart).
    last = vts[-1]
    for k, p in enumerate(_sacral_segments(size)):
        frame = last.frame @ rotation(srng.uniform(12.0, 18.0), 0.0, 0.0)
        vt = Vertebra(label=A.SACRUM_LABEL, p=p, frame=frame, sacral=k + 2,
                      cortical=last.cortical, trabecular=last.trabecular,
                      shell=last.shell)  # fmt: skip
        e = last.centre - last.frame[:, 2] * last.h0 / 2
        vt.centre = e - frame[:, 2] * (1.0 + vt.h0 / 2)
        vts.append(vt)
        last = vt

    # Supine: the T4-L5 chord along z; coronal balance: the T1-S1 chord along z.
    def chord(a, b):
        return vts[levels.index(b)].centre - vts[levels.index(a)].centre

    d = chord(24, 11)  # upward
    tilt = float(np.clip(srng.normal(0.0, 1.5), -3.0, 3.0))  # pelvic tilt on the table
    g = rotation(math.degrees(math.atan2(d[1], d[2])) + tilt, 0.0, 0.0)
    d = g @ chord(A.SACRUM_LABEL, 8)
    g = rotation(0.0, math.degrees(math.atan2(-d[0], d[2])), 0.0) @ g
    for vt in vts:
        vt.centre = g @ vt.centre
        vt.frame = g @ vt.frame
    # The centre level's bone centroid on the z axis; its body centre near z = 0.
    cv = vts[ic]
    centroid = _bone_centroid(cv)
    pitch = cv.h0 + disc_h[cv.label]
    jitter = (0.5 if region == "lumbar" else 1.0) * srng.uniform(-1.0, 1.0) * pitch
    shift = np.array([-centroid[0], -centroid[1], jitter - cv.centre[2]])
    for vt in vts:
        vt.centre = vt.centre + shift
    return Column(vts, disc_h, vacuum, lordosis, kyphosis, feat.cobb_deg)


def _bone_centroid(vt: Vertebra, step: float = 3.0) -> np.ndarray:
    """World centroid of the vertebra's bone, on a fixed local grid (independent of the
    phantom's grid)."""
    lo, hi = vt.local_box()
    u = np.arange(lo[0], hi[0], step, dtype=np.float32)[:, None, None]
    v = np.arange(lo[1], hi[1], step, dtype=np.float32)[None, :, None]
    w = np.arange(lo[2], hi[2], step, dtype=np.float32)[None, None, :]
    inside = vt.sdf(u, v, w) <= 0
    idx = np.nonzero(inside)
    q = np.stack([u.ravel()[idx[0]], v.ravel()[idx[1]], w.ravel()[idx[2]]]).mean(1)
    return vt.to_world(q)


# --- drawing ---------------------------------------------------------------------------------


def draw_column(canvas: Canvas, col: Column, seed: int, hu_of: dict[str, float]) -> None:
    """Canal contents, discs, then vertebrae (bone over the discs' overlap)."""
    mobile = [v for v in col.vertebrae if v.sacral <= 1]
    for vt in col.vertebrae:
        _draw_canal(canvas, vt, col, hu_of)
    for up, lo in zip(mobile[:-1], mobile[1:]):
        _draw_disc(canvas, up, lo, col, seed, hu_of)
    trab_noise = LatticeNoise(seed, "trabecular", (1.5, 1.5, 2.5))
    for vt in col.vertebrae:
        _draw_vertebra(canvas, vt, trab_noise)


def _draw_vertebra(canvas: Canvas, vt: Vertebra, noise: LatticeNoise) -> None:
    res = vertebra_window(canvas, vt)
    if res is None:
        return
    sl, d = res
    if not (d < canvas.width).any():
        return
    u, v, w = canvas.local(sl, vt.centre, vt.frame)
    # Trabecular bone: its density with a texture of ~1.5 mm grains, elongated along z
    # (vertical trabeculae); relative SD 12-22% (higher in osteoporotic bone).
    rel = 0.12 + 0.10 * float(np.clip(1.0 - (vt.trabecular - 60.0) / 220.0, 0.0, 1.0))
    trab = np.float32(vt.trabecular) * (1.0 + np.float32(rel) * noise.window(canvas, sl))
    if vt.sclerosis > 0:  # endplate sclerosis: a dense band within ~3 mm of the endplates
        hc = vt.height(v) / 2
        band = np.clip(1.0 - (hc - np.abs(w)) / 3.0, 0.0, 1.0) * (np.abs(w) < hc + 2.0)
        band = band * (v > -0.85 * vt.p["body_d"] / 2)  # in the body only
        trab = trab + np.float32(vt.sclerosis) * band
    # Thicker cortex in the posterior elements (~0.8 mm) than in the body's shell.
    shell = np.where(v < -0.85 * vt.p["body_d"] / 2, np.float32(max(vt.shell, 0.8)),
                     np.float32(vt.shell))  # fmt: skip
    canvas.paint_bone(sl, d, vt.cortical, trab, shell, label=vt.label)


def _draw_disc(canvas, upper: Vertebra, lower: Vertebra, col: Column, seed, hu_of) -> None:
    """The disc fills the wedge between the upper body's lower endplate and the lower
    body's upper endplate (planes 1.5 mm into each body)."""
    p1, n1 = upper.endplate(upper=False)
    p2, n2 = lower.endplate(upper=True)
    mid = (p1 + p2) / 2
    frame = (upper.frame + lower.frame) / 2
    frame = np.linalg.qr(frame)[0] * np.sign(np.diag(np.linalg.qr(frame)[1]))
    degen = upper.osteophyte > 0 and lower.osteophyte > 0
    bulge = 1.02 + (0.06 if degen else 0.0)
    a = 0.5 * (upper.p["body_w"] + lower.p["body_w"]) / 2 * bulge
    b = 0.5 * (upper.p["body_d"] + lower.p["body_d"]) / 2 * bulge
    half = np.linalg.norm(p1 - p2) / 2 + 8.0
    sl = canvas.box_window(mid, frame, (-a - 3, -b - 3, -half - 6), (a + 3, b + 3, half + 6))
    if sl is None:
        return
    u, v, _ = canvas.local(sl, mid, frame)
    x, y, z = canvas.grid(sl)
    above = (x - p1[0]) * n1[0] + (y - p1[1]) * n1[1] + (z - p1[2]) * n1[2] - 1.5
    below = -((x - p2[0]) * n2[0] + (y - p2[1]) * n2[1] + (z - p2[2]) * n2[2]) - 1.5
    bb = np.where(v > 0, np.float32(b), np.float32(0.85 * b))
    d = prism(superellipse(u, v, a, bb, p=2.4), np.maximum(above, below))
    canvas.paint(sl, d, hu_of["disc"])
    if not degen:  # the nucleus of a healthy disc is ~10-25 HU below the annulus
        dn = prism(superellipse(u, v - 0.1 * b, 0.55 * a, 0.5 * b), np.maximum(above, below) + 1)
        canvas.paint(sl, dn, hu_of["disc"] - 18.0)
    gas = col.vacuum.get(upper.label)
    if gas:  # vacuum phenomenon: nitrogen in a fissured degenerated disc
        w_mid = (x - mid[0]) * frame[0, 2] + (y - mid[1]) * frame[1, 2] + (z - mid[2]) * frame[2, 2]
        dg = ellipsoid(u, v - 0.3 * b, w_mid, gas * a + 2.0, 0.4 * gas * b + 1.5, 1.2)
        canvas.paint(sl, np.maximum(dg, d + 1.0), -900.0)
    lab = canvas.labels[sl]
    lab[d <= 0] = A.DISC_LABEL


def _draw_canal(canvas: Canvas, vt: Vertebra, col: Column, hu_of) -> None:
    """Epidural fat, the thecal sac (CSF) and, above L2, the spinal cord, through the
    vertebra's canal and its disc space."""
    p = vt.p
    cu, cv = p["canal_w"] / 2, p["canal_d"] / 2
    reach = vt.h0 / 2 + max(col.disc_h.get(vt.label, 3.0), 4.0) + 2.0
    if vt.sacral >= 2:
        cu, cv = 0.5 * cu + 1.0, 0.6 * cv + 1.0
        reach = vt.h0 / 2 + 2.0
    box_lo = (-cu - 2, vt.canal_v - cv - 2, -reach - 2)
    box_hi = (cu + 2, vt.canal_v + cv + 2, reach + 2)
    sl = canvas.box_window(vt.centre, vt.frame, box_lo, box_hi)
    if sl is None:
        return
    u, v, w = canvas.local(sl, vt.centre, vt.frame)
    slab = np.abs(w) - reach
    canvas.paint(sl, prism(superellipse(u, v - vt.canal_v, cu, cv), slab), hu_of["fat"])
    lumbar = vt.label >= 20 or vt.sacral
    sac_u, sac_v = cu - (2.5 if lumbar else 1.0), cv - (2.5 if lumbar else 1.0)
    if vt.sacral >= 3:
        return
    canvas.paint(sl, prism(superellipse(u, v - vt.canal_v, sac_u, sac_v), slab), hu_of["csf"])
    if vt.label <= 20 and not vt.sacral:  # the cord ends (conus) at L1-L2
        d_cord = superellipse(u, v - vt.canal_v - 0.15 * cv, min(5.5, 0.5 * sac_u), 4.0)
        canvas.paint(sl, prism(d_cord, slab), hu_of["cord"])
