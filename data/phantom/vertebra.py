"""One vertebra: its size, frame and bone, and its shape as signed distances of its parts
(body, arch, processes; sacral ala and lower sacral segments), evaluated part by part in
each part's own box (private)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from x2ct.data.phantom._shapes import box, prism, smin, superellipse
from x2ct.data.phantom.draw import Canvas

__all__ = ["Vertebra", "combine", "vertebra_window"]


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
