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
from x2ct.data.phantom._shapes import box, prism, smin, superellipse
from x2ct.data.phantom.draw import Canvas, ellipsoid, rotation
from x2ct.data.phantom.options import Features
from x2ct.data.phantom.texture import LatticeNoise, stream

__all__ = ["Column", "Vertebra", "build_column", "draw_column"]

CENTRE_LEVEL = {"lumbar": 22, "thoracic": 14}  # L3, T7


@dataclass
class Vertebra:
    label: int
    p: dict[str, float]  # sizes (mm), angles (deg)
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))  # body centre (mm)
    frame: np.ndarray = field(default_factory=lambda: np.eye(3))  # columns u, v, w
    cortical: float = 1700.0  # HU of the shell's bone
    trabecular: float = 200.0  # HU of the trabecular bone
    shell: float = 0.35  # cortical shell thickness, mm
    fracture: str | None = None  # "wedge", "biconcave" or "crush"
    loss: float = 0.0  # fractional height loss of the fracture
    osteophyte: float = 0.0  # rim lipping (mm) at the endplates
    sclerosis: float = 0.0  # extra HU of the bone within 3 mm of the endplates
    sacral: int = 0  # 0: mobile vertebra; 1: S1; 2-5: lower sacral segments

    # --- geometry in the local frame ----------------------------------------------------------

    def height(self, v):
        """Body height (mm) at local v: posterior height hp at the back, rising linearly to
        the anterior height ha at v = b/2 and flat anterior of that."""
        b = self.p["body_d"] / 2
        t = np.clip((np.asarray(v, np.float32) + b) / (1.5 * b), 0.0, 1.0)
        return self.p["hp"] + (self.p["ha"] - self.p["hp"]) * t

    @property
    def h0(self) -> float:
        """Height at the body's centre line (v = 0): the chain's reference."""
        return self.p["hp"] + (self.p["ha"] - self.p["hp"]) * (2.0 / 3.0)  # height(0)

    @property
    def wedge_deg(self) -> float:
        """Kyphotic wedge angle of the body (anterior shorter: positive)."""
        return math.degrees(math.atan((self.p["hp"] - self.p["ha"]) / (0.75 * self.p["body_d"])))

    @property
    def canal_v(self) -> float:
        """Local v of the canal centre (the canal's front wall is the body's back)."""
        return -0.85 * self.p["body_d"] / 2 - self.p["canal_d"] / 2 + 1.0

    @property
    def arch_w(self) -> float:
        """Local w of the pedicles and transverse processes (upper part of the body)."""
        return self.h0 / 2 - self.p["ped_h"] / 2 - 1.0

    def tp_tip(self, side: float) -> np.ndarray:
        """Local position of the transverse process tip on ``side`` (+1 right, -1 left)."""
        p, back = self.p, math.radians(self.p["tp_back"])
        length = p["tp_len"] + p["lam_t"]
        return np.array([
            side * (p["canal_w"] / 2 + 0.5 * p["lam_t"] + length * math.cos(back)),
            self.canal_v - 1.0 - length * math.sin(back),
            self.arch_w,
        ])  # fmt: skip

    def pedicle_centre(self, side: float) -> np.ndarray:
        """Local centre of the pedicle on ``side``: its medial wall is the canal's lateral
        border (the interpedicular distance is the canal width)."""
        p = self.p
        v0, v1 = -0.85 * p["body_d"] / 2 + 3.0, self.canal_v
        u = p["canal_w"] / 2 + max(p["ped_w"], p["lam_t"]) / 2 - 0.5
        return np.array([side * u, (v0 + v1) / 2, self.arch_w])

    def to_world(self, q) -> np.ndarray:
        return self.centre + self.frame @ np.asarray(q, dtype=np.float64)

    def endplate(self, upper: bool) -> tuple[np.ndarray, np.ndarray]:
        """(point, unit normal pointing up) of the upper or lower endplate plane."""
        b = self.p["body_d"] / 2
        slope = (self.p["ha"] - self.p["hp"]) / (1.5 * b) / 2  # d(h/2)/dv at v = 0
        sign = 1.0 if upper else -1.0
        n = self.frame @ np.array([0.0, -sign * slope, 1.0])
        return self.to_world([0.0, 0.0, sign * self.h0 / 2]), n / np.linalg.norm(n)

    def parts(self) -> list[tuple[str, tuple, tuple, object]]:
        """The vertebra's parts as (group, local box lo, hi, signed distance fn(u, v, w)):
        groups ``body``, ``arch`` (laminae and pedicles) and ``post`` (processes), joined
        by :func:`combine` with fillets. Each part is evaluated only inside its box."""
        p = self.p
        a, b = p["body_w"] / 2, p["body_d"] / 2
        rr = 2.0 if self.sacral < 2 else 1.5
        hc = self.h0 / 2
        hmax = max(p["ha"], p["hp"]) / 2
        lip = self.osteophyte

        def body(u, v, w):
            h = self.height(v)
            waist = 1.0 - 0.06 * (1.0 - np.clip(w / hc, -1.0, 1.0) ** 2)
            back_wall = 0.85 * (1.0 - 0.12 * np.exp(-((u / (0.4 * a)) ** 2)))
            bb = np.where(v > 0, np.float32(b), b * back_wall) * waist
            aa = (a - rr) * waist
            if lip > 0:  # marginal osteophytes: lips at the endplate rims
                ring = lip * np.exp(-(((np.abs(w) - h / 2) / 2.5) ** 2)) * (v > -0.6 * b)
                aa, bb = aa + ring, bb + ring * (v > 0)
            d_xy = superellipse(u, v, aa, bb - rr, p=2.4)
            r_xy = np.clip(1.0 + d_xy / min(a, b), 0.0, 1.0)
            conc = 1.2 + (self.loss * (h - 2.4) / 2 if self.fracture == "biconcave" else 0.0)
            d = prism(d_xy, np.abs(w) - (h / 2 - rr - conc * (1.0 - r_xy**2))) - rr
            if self.sacral >= 2:  # lower sacral segment: a dorsal plate over the canal
                plate = box(u, v - (self.canal_v - p["canal_d"] / 2 - 2.0), w, 0.7 * a + 4.0,
                            3.0, hc, 1.5)  # fmt: skip
                d = smin(d, plate, 2.0)
            return d

        out = [("body", (-a - lip - 1, -b - lip - 1, -hmax - lip - 1),
                (a + lip + 1, b + lip + 1, hmax + lip + 1), body)]  # fmt: skip
        if self.sacral >= 2:
            out[0] = ("body", out[0][1][:1] + (self.canal_v - p["canal_d"] / 2 - 6.0,)
                      + out[0][1][2:], out[0][2], body)  # fmt: skip
            return out

        cu, cv = p["canal_w"] / 2, p["canal_d"] / 2
        lt = p["lam_t"]
        v_c, w_a = self.canal_v, self.arch_w
        incl, back = math.radians(p["sp_incl"]), math.radians(p["tp_back"])
        lam_h = 0.5 * max(p["ped_h"], 0.75 * self.h0)
        v0, v1 = -0.85 * b + 3.0, v_c

        u_ped = self.pedicle_centre(1.0)[0]

        def arch(u, v, w):  # laminae around the canal, pedicles joining them to the body
            d_canal = superellipse(u, v - v_c, cu, cv)
            d_outer = superellipse(u, v - v_c, cu + lt, cv + lt)
            w_lam = w_a - 0.35 * np.maximum(v_c - v, 0)
            d_ring = np.maximum(np.maximum(d_outer, -d_canal), v - v_c)
            d = prism(d_ring, np.abs(w - w_lam) - lam_h)
            for side in (-1.0, 1.0):
                d_ped = prism(
                    superellipse(u - side * u_ped, w - w_a, p["ped_w"] / 2,
                                 p["ped_h"] / 2),
                    np.abs(v - (v0 + v1) / 2) - (v0 - v1) / 2,
                )  # fmt: skip
                d = smin(d, d_ped, 1.5)
            return d

        u_arch = max(cu + lt, u_ped + p["ped_w"] / 2) + 1
        out.append(("arch", (-u_arch, v_c - cv - lt - 1, w_a - 0.35 * (cv + lt) - lam_h - 1),
                    (u_arch, v0 + 1, w_a + max(lam_h, p["ped_h"] / 2) + 1), arch))  # fmt: skip

        def boxed(centre, half, fn):
            c, h = np.asarray(centre, float), np.asarray(half, float)
            return tuple(c - h - 1), tuple(c + h + 1), fn

        # Spinous process: a rounded plate from the back of the ring, posterior and down.
        base = np.array([0.0, v_c - cv - 0.5 * lt, w_a - 0.35 * (cv + lt)])
        axis = np.array([0.0, -math.cos(incl), -math.sin(incl)])
        normal = np.array([0.0, -math.sin(incl), math.cos(incl)])
        mid = base + axis * p["sp_len"] / 2
        hw = 2.5 if p["body_w"] < 30 else 3.5

        def spinous(u, v, w, mid=mid, axis=axis, normal=normal):
            qs = (v - mid[1]) * axis[1] + (w - mid[2]) * axis[2]
            qn = (v - mid[1]) * normal[1] + (w - mid[2]) * normal[2]
            return box(u, qs, qn, hw, p["sp_len"] / 2, p["sp_h"] / 2, min(hw, 2.5))

        ext = np.abs(axis) * p["sp_len"] / 2 + np.abs(normal) * p["sp_h"] / 2 + [hw, 0, 0]
        out.append(("post", *boxed(mid, ext, spinous)))
        for side in (-1.0, 1.0):
            if self.sacral == 1:  # sacral ala, reaching the sacroiliac joint
                c = (side * (a + 8.0), -0.25 * b, -0.35 * hc + 8.0)
                half = (16.0, 0.6 * b + 4.0, hc + 8.0)

                def ala(u, v, w, c=c, half=half):
                    return box(u - c[0], v - c[1], w - c[2], *half, 4.0)

                out.append(("post", *boxed(c, half, ala)))
            else:  # transverse process, from the pedicle-lamina junction laterally (and back)
                ax = np.array([side * math.cos(back), -math.sin(back), 0.0])
                nm = np.array([side * math.sin(back), math.cos(back), 0.0])
                start = np.array([side * (cu + 0.5 * lt), v_c - 1.0, w_a])
                m = start + ax * (p["tp_len"] + lt) / 2
                t = p["tp_t"] / 2

                def tp(u, v, w, m=m, ax=ax, nm=nm, t=t):
                    q1 = (u - m[0]) * ax[0] + (v - m[1]) * ax[1]
                    q2 = (u - m[0]) * nm[0] + (v - m[1]) * nm[1]
                    return box(q1, q2, w - m[2], (p["tp_len"] + lt) / 2, 0.75 * t, t, 0.7 * t)

                ext = np.abs(ax) * (p["tp_len"] + lt) / 2 + np.abs(nm) * 0.75 * t + [0, 0, t]
                out.append(("post", *boxed(m, ext, tp)))
            # Superior articular process (lateral, up) and inferior (medial, down): the facet
            # joint pairs one level's inferior with the next level's superior.
            c = (side * (cu + 0.5 * lt + 1.5), v_c - 2.0, (w_a + hc + 4) / 2)
            half = (3.0, 4.0, max((hc + 4 - w_a) / 2, 2.6))

            def sap(u, v, w, c=c, half=half):
                return box(u - c[0], v - c[1], w - c[2], *half, 2.5)

            out.append(("post", *boxed(c, half, sap)))
            if self.sacral == 1:
                continue
            wi_top, wi_bot = w_a - 0.35 * cv, -hc - 5.0
            c = (side * (cu + 0.5 * lt - 4.5), v_c - 0.8 * cv, (wi_top + wi_bot) / 2)
            half = (2.8, 3.5, (wi_top - wi_bot) / 2)

            def iap(u, v, w, c=c, half=half):
                return box(u - c[0], v - c[1], w - c[2], *half, 2.5)

            out.append(("post", *boxed(c, half, iap)))
        return out

    def sdf(self, u, v, w):
        """Signed distance (mm) of the whole vertebra at local coordinates (every part
        evaluated everywhere: for small grids; drawing uses :func:`vertebra_window`)."""
        groups = {}
        for g, _, _, fn in self.parts():
            d = fn(u, v, w)
            groups[g] = d if g not in groups else np.minimum(groups[g], d)
        return combine(groups)

    def local_box(self) -> tuple[tuple, tuple]:
        """Local bounding box (lo, hi) of :meth:`sdf`'s shape."""
        p = self.p
        a, b, h = p["body_w"] / 2, p["body_d"] / 2, max(p["ha"], p["hp"]) / 2
        incl = math.radians(p["sp_incl"])
        lip = self.osteophyte + 1.0
        u_max = max(a + lip, p["canal_w"] / 2 + p["lam_t"] + p["tp_len"] + p["tp_t"], a + 26) + 4
        v_min = self.canal_v - p["canal_d"] / 2 - p["lam_t"] - p["sp_len"] * math.cos(incl)
        v_min -= p["sp_h"] + 4
        w_low = -h - 6.0 - p["sp_len"] * math.sin(incl) - p["sp_h"] - 4
        if self.sacral == 1:
            w_low = min(w_low, -2 * h - 12.0)
        return (-u_max, v_min, w_low), (u_max, b + lip + 4, h + 10.0)


def combine(groups: dict) -> np.ndarray:
    """Body, arch and processes joined with fillets (smooth minima of 1.5 and 2 mm)."""
    big = np.float32(1e4)
    arch = groups.get("arch", big)
    post = groups.get("post", big)
    return smin(groups["body"], smin(arch, post, 1.5), 2.0)


def vertebra_window(canvas: Canvas, vt: Vertebra):
    """(window, signed distance) of vertebra ``vt`` on ``canvas``, each part evaluated in
    its own box only; None when the vertebra misses the grid."""
    lo, hi = vt.local_box()
    sl = canvas.box_window(vt.centre, vt.frame, lo, hi)
    if sl is None:
        return None
    size = tuple(s.stop - s.start for s in sl)
    groups = {}
    pad = 2.5 + canvas.width
    for g, plo, phi, fn in vt.parts():
        sub = canvas.box_window(vt.centre, vt.frame, np.subtract(plo, pad), np.add(phi, pad))
        if sub is None:
            continue
        sub = tuple(slice(max(a.start, c.start), min(a.stop, c.stop)) for a, c in zip(sub, sl))
        if any(s.stop <= s.start for s in sub):
            continue
        if g not in groups:
            groups[g] = np.full(size, 1e4, np.float32)
        rel = tuple(slice(s.start - c.start, s.stop - c.start) for s, c in zip(sub, sl))
        np.minimum(groups[g][rel], fn(*canvas.local(sub, vt.centre, vt.frame)),
                   out=groups[g][rel])  # fmt: skip
    if "body" not in groups:
        groups["body"] = np.full(size, 1e4, np.float32)
    return sl, combine(groups)


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
    prng = stream(seed, "degeneration")
    vacuum: dict[int, float] = {}
    if feat.degeneration:
        weights = {20: 0.05, 21: 0.1, 22: 0.2, 23: 0.35, 24: 0.3, 18: 0.05, 19: 0.05, 14: 0.05,
                   15: 0.05, 16: 0.05}  # fmt: skip
        labs = np.array(list(weights))
        pw = np.array(list(weights.values()))
        k = int(prng.integers(1, 4))
        for lv in prng.choice(labs, size=k, replace=False, p=pw / pw.sum()):
            lv = int(lv)
            loss = prng.uniform(0.2, 0.6)
            disc_h[lv] *= 1.0 - loss
            i = levels.index(lv)
            for vt in (vts[i], vts[i + 1]):
                vt.osteophyte = max(vt.osteophyte, prng.uniform(2.0, 7.0))
                vt.sclerosis = max(vt.sclerosis, prng.uniform(100.0, 350.0))
            if loss > 0.35 and prng.uniform() < 0.5:
                vacuum[lv] = prng.uniform(0.25, 0.5)
    fractures = []
    prng = stream(seed, "fracture")
    if feat.fracture:
        weights = {13: 0.04, 14: 0.08, 15: 0.08, 16: 0.05, 17: 0.05, 18: 0.1, 19: 0.2, 20: 0.2,
                   21: 0.1, 22: 0.05, 23: 0.05}  # fmt: skip
        labs = np.array(list(weights))
        pw = np.array(list(weights.values()))
        k = 1 if prng.uniform() < 0.8 else 2
        for lv in prng.choice(labs, size=k, replace=False, p=pw / pw.sum()):
            vt = vts[levels.index(int(lv))]
            vt.fracture = str(prng.choice(["wedge", "biconcave", "crush"], p=[0.6, 0.25, 0.15]))
            vt.loss = float(prng.uniform(*A.GENANT_GRADES[feat.fracture_grade]))
            vt.trabecular += prng.uniform(40.0, 100.0)  # compacted trabeculae
            if vt.fracture == "wedge":
                vt.p["ha"] *= 1.0 - vt.loss
            elif vt.fracture == "crush":
                vt.p["ha"] *= 1.0 - vt.loss
                vt.p["hp"] *= 1.0 - vt.loss
            fractures.append(vt.label)

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
