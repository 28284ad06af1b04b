"""The chest: lungs with their vessels, the heart, ribs with costal cartilage, sternum and
scapulae (private).

Ribs: twelve pairs, each from its head at the side of the vertebral body (the
costovertebral joint; T2-T9 at the disc above, T1 and T10-T12 at their own body) to the
transverse process tip (costotransverse joint), then along the rib cage's ellipse at each
height, laterally and round to the front, descending 15-55 mm; ribs 1-7 reach the sternum
through costal cartilage, 8-10 the costal margin, 11-12 are short (floating). Cross
section about 7 x 13 mm: a 1 mm cortex around trabecular bone.
"""

from __future__ import annotations

import math

import numpy as np

from x2ct.data.phantom._shapes import capsule, prism, superellipse
from x2ct.data.phantom.body import Torso
from x2ct.data.phantom.draw import Canvas, ellipsoid
from x2ct.data.phantom.organs import phase_hu
from x2ct.data.phantom.texture import LatticeNoise, stream

__all__ = ["build_thorax", "draw_heart", "draw_lungs", "draw_thoracic_bones"]

# Reach of the bony rib round the cage (deg of elliptic angle, 0 = lateral, 90 = front)
# and the drop of its front end below its head (mm), per thoracic level T1..T12.
_RIB_END = {8: 60, 9: 62, 10: 64, 11: 64, 12: 64, 13: 62, 14: 60, 15: 52, 16: 45, 17: 32,
            18: -5, 19: -35}  # fmt: skip
_RIB_DROP = {8: 22, 9: 35, 10: 45, 11: 50, 12: 55, 13: 55, 14: 55, 15: 50, 16: 45, 17: 38,
             18: 25, 19: 15}  # fmt: skip


def build_thorax(seed: int, t: Torso) -> dict:
    """Rib centre lines (per rib: (n, 3) points, its cartilage) and the other thoracic
    placements of phantom ``seed``."""
    rng = stream(seed, "thorax")
    col = t.col
    ribs = []
    for lv in range(8, 20):
        vt = col.by_label(lv)
        reach = math.radians(_RIB_END[lv] + rng.uniform(-6, 4))
        drop = _RIB_DROP[lv] * rng.uniform(0.85, 1.15)
        for side in (-1.0, 1.0):
            tip = vt.to_world(vt.tp_tip(side))
            w_head = 0.5 * vt.h0 if 9 <= lv <= 16 else 0.25 * vt.h0
            head = vt.to_world([side * 0.85 * vt.p["body_w"] / 2, -0.3 * vt.p["body_d"], w_head])
            ts = np.linspace(0.0, 1.0, 14)
            z = (tip[2] - drop * ts**1.2).astype(np.float32)
            cg = t.cage(z)
            psi0 = float(cg["psi0"][0])
            psi = psi0 + (reach - psi0) * ts
            x = cg["xc"] + side * cg["a"] * np.cos(psi)
            y = cg["yc"] + cg["b"] * np.sin(psi)
            shaft = np.stack([x, y, z], axis=1).astype(np.float64)
            shaft[0] = tip
            cart = None
            if lv <= 14:  # true ribs: cartilage to the sternum's edge
                end = shaft[-1]
                zs = min(end[2] + (10.0 if lv > 10 else 0.0), tip[2] - 5.0)
                cs = t.cage(np.float32(zs))
                ster = np.array([float(cs["xc"]) + side * 14.0,
                                 float(cs["yc"] + cs["b"]) + 2.0, zs])  # fmt: skip
                cart = np.stack([end, (end + ster) / 2 + [0, 6.0, 0], ster])
            elif lv <= 17:  # false ribs: cartilage up toward the costal margin
                end = shaft[-1]
                cart = np.stack([end, end + [-side * 18.0, 14.0, 22.0]])
            ribs.append(dict(level=lv, side=side, neck=np.stack([head, tip]), shaft=shaft,
                             cartilage=cart, radius=3.4 * rng.uniform(0.9, 1.1)))  # fmt: skip
    scap = dict(
        z_top=col.z_of(9) + rng.uniform(0.0, 15.0),
        z_bottom=col.z_of(15) + rng.uniform(-15.0, 10.0),
        x_med=rng.uniform(55.0, 75.0),
        offset=rng.uniform(12.0, 22.0),
    )
    return dict(ribs=ribs, scapula=scap, vessels=_lung_vessels(t, rng))


def _lung_vessels(t: Torso, rng) -> list[tuple]:
    """Pulmonary vessel trees from each hilum: 3 generations of capsules."""
    col = t.col
    out = []
    pr = col.profile(np.float32(col.z_of(13)))
    for side in (-1.0, 1.0):
        hilum = np.array([float(pr["x"]) + side * 45.0,
                          float(pr["y"] + pr["half_d"]) + 20.0, col.z_of(13)])  # fmt: skip
        stack = []
        for _ in range(10):
            d = rng.normal(size=3) * [0.6, 0.8, 1.2]
            d[0] = side * abs(d[0]) + side * 0.6
            stack.append((hilum, d / np.linalg.norm(d), 55.0, 4.5, 0))
        while stack:
            p, d, length, r, gen = stack.pop()
            q = p + d * length
            out.append((p, q, r))
            if gen < 2:
                for _ in range(2):
                    nd = d + rng.normal(0.0, 0.55, size=3)
                    stack.append((q, nd / np.linalg.norm(nd), length * 0.7, r * 0.62, gen + 1))
    return out


def _capsules_sdf(canvas: Canvas, segs, scale_z: float = 1.0):
    """Union of capsules ``segs`` [(a, b, r)] over their common window: (sl, d) or None."""
    pts = np.concatenate([[a, b] for a, b, _ in segs])
    rmax = max(r for _, _, r in segs) / scale_z + canvas.width
    sl = canvas.window(pts.min(0) - rmax, pts.max(0) + rmax)
    if sl is None:
        return None
    d = np.full(tuple(s.stop - s.start for s in sl), 1e4, np.float32)
    for a, b, r in segs:
        rz = r / scale_z
        lo = np.minimum(a, b) - [r, r, rz]
        hi = np.maximum(a, b) + [r, r, rz]
        sub = canvas.window(lo, hi, canvas.width)
        if sub is None:
            continue
        x, y, z = canvas.grid(sub)
        a2, b2 = np.array(a, float), np.array(b, float)
        a2[2] *= scale_z
        b2[2] *= scale_z
        dd = capsule((x, y, z * np.float32(scale_z)), a2, b2, r)
        rel = tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(sub, sl))
        np.minimum(d[rel], dd, out=d[rel])
    return sl, d


def draw_thoracic_bones(canvas: Canvas, t: Torso, th: dict, bone: dict) -> None:
    """Ribs (with cartilage), sternum and scapulae."""
    for rib in th["ribs"]:
        if rib["cartilage"] is not None:
            cart = rib["cartilage"]
            segs = [(a, b, 0.9 * rib["radius"]) for a, b in zip(cart[:-1], cart[1:])]
            res = _capsules_sdf(canvas, segs, 0.6)
            if res is not None:
                canvas.paint(res[0], res[1], t.hu["cartilage"])
        pts = np.concatenate([rib["neck"], rib["shaft"][1:]])
        segs = [(a, b, rib["radius"]) for a, b in zip(pts[:-1], pts[1:])]
        res = _capsules_sdf(canvas, segs, 0.55)
        if res is not None:
            canvas.paint_bone(res[0], res[1], bone["cortical"], bone["rib"], 1.0)
    _draw_sternum(canvas, t, bone)
    _draw_scapulae(canvas, t, th["scapula"], bone)


def _draw_sternum(canvas: Canvas, t: Torso, bone: dict) -> None:
    col = t.col
    z_top = col.z_of(9) + 5.0
    z_bot = col.z_of(16) - 10.0
    z = canvas.axes[2]
    sel = (z > z_bot - 4) & (z < z_top + 4)
    if not sel.any():
        return
    zz = z[sel]
    cg = t.cage(zz)
    y_s = cg["yc"] + cg["b"] + 6.0
    f = np.clip((z_top - zz) / (z_top - z_bot), 0.0, 1.0)
    half_w = np.interp(f, [0.0, 0.2, 0.25, 0.9, 1.0], [26.0, 18.0, 14.0, 14.0, 8.0])
    half_t = np.interp(f, [0.0, 0.25, 1.0], [7.5, 5.5, 4.5])
    lo = (float(cg["xc"].min() - 30), float(y_s.min() - 10), float(zz.min()))
    hi = (float(cg["xc"].max() + 30), float(y_s.max() + 10), float(zz.max()))
    sl = canvas.window(lo, hi)
    if sl is None:
        return
    x, y, zg = canvas.grid(sl)
    e = lambda a: np.interp(canvas.axes[2][sl[2]], zz, a).astype(np.float32)[None, None, :]
    d_xy = superellipse(x - e(cg["xc"]), y - e(y_s), e(half_w), e(half_t), p=2.5)
    d = prism(d_xy, np.maximum(zg - z_top, z_bot - zg))
    canvas.paint_bone(sl, d, bone["cortical"], bone["rib"], 1.0)


def _draw_scapulae(canvas: Canvas, t: Torso, sc: dict, bone: dict) -> None:
    """A plate over the posterior ribs: from the medial border (|x| ~ 55-75 mm) out to the
    lateral border, narrowing from the top (T2) to the inferior angle (~T8)."""
    z = canvas.axes[2]
    sel = (z > sc["z_bottom"] - 6) & (z < sc["z_top"] + 6)
    if not sel.any():
        return
    zz = z[sel]
    cg = t.cage(zz)
    for side in (-1.0, 1.0):
        a, b = cg["a"] + sc["offset"], cg["b"] + sc["offset"]
        lo = (min(side * 20.0, side * float(a.max() + 20)), float((cg["yc"] - b).min() - 12),
              float(zz.min()))  # fmt: skip
        hi = (max(side * 20.0, side * float(a.max() + 20)), float(cg["yc"].max()),
              float(zz.max()))  # fmt: skip
        sl = canvas.window(lo, hi)
        if sl is None:
            continue
        x, y, zg = canvas.grid(sl)
        zs = canvas.axes[2][sl[2]]
        xc, yc, aa, bb = (np.interp(zs, zz, v).astype(np.float32)[None, None, :]
                          for v in (cg["xc"], cg["yc"], a, b))  # fmt: skip
        dx, dy = side * (x - xc) / aa, (y - yc) / bb
        rho = np.sqrt(dx * dx + dy * dy)
        psi = np.arctan2(dy, dx)
        radius = np.sqrt((aa * np.cos(psi)) ** 2 + (bb * np.sin(psi)) ** 2)
        dr = (rho - 1.0) * radius
        f = np.clip((sc["z_top"] - zg) / (sc["z_top"] - sc["z_bottom"]), 0.0, 1.0)
        psi_med = -np.arccos(np.clip(sc["x_med"] / aa, -1, 1))
        psi_lat = psi_med + (1.0 - f) * 0.9 + 0.08
        along = np.maximum(psi_med - psi, psi - psi_lat) * radius
        thick = 2.0 + 3.0 * np.clip((psi - psi_lat) / 0.25 + 1.0, 0.0, 1.0)  # lateral border
        d_plate = np.abs(dr) - thick
        d_z = np.maximum(zg - sc["z_top"], sc["z_bottom"] - zg)
        d = np.maximum(np.maximum(d_plate, along), d_z)
        canvas.paint_bone(sl, d, bone["cortical"], bone["rib"], 1.0)


def draw_lungs(canvas: Canvas, t: Torso, th: dict) -> None:
    """Lungs inside the rib cage, above the diaphragm, around the mediastinum, with a
    parenchymal texture and vessels."""
    col = t.col
    z_apex = col.z_of(8) + 25.0
    z_low = t.organs["dome"]["z_base"] - 5.0
    z = canvas.axes[2]
    sel = (z > z_low) & (z < z_apex + 2)
    if not sel.any():
        return
    zz = z[sel]
    cg = t.cage(zz)
    lo = (float((cg["xc"] - cg["a"]).min()), float((cg["yc"] - cg["b"]).min()), float(zz.min()))
    hi = (float((cg["xc"] + cg["a"]).max()), float((cg["yc"] + cg["b"]).max()), float(zz.max()))
    sl = canvas.window(lo, hi)
    if sl is None:
        return
    x, y, zg = canvas.grid(sl)
    zs = canvas.axes[2][sl[2]]
    e = lambda v: np.interp(zs, zz, v).astype(np.float32)[None, None, :]
    pr = col.profile(zs)
    p = {k: v[None, None, :] for k, v in pr.items()}
    xr = x - e(cg["xc"])
    d_cage = superellipse(xr, y - e(cg["yc"]), e(cg["a"]), e(cg["b"]))
    apex = zg - (z_apex - 25.0 * np.clip(1.0 - (xr / 60.0) ** 2, 0.0, 1.0))
    d_med = superellipse(xr + 8.0, y - (p["y"] + p["half_d"] + 45.0), 30.0, 50.0)
    d_spine = superellipse(xr, y - p["y"], p["half_w"] + 8.0, p["half_d"] + 10.0)
    d_back = np.minimum(
        np.maximum(np.abs(xr) - p["tip_x"] - 8.0, y - p["tip_y"] - 4.0),
        np.maximum(np.abs(xr) - p["half_w"] - 6.0, y - p["y"]),
    )
    h = t.organs["heart"]
    u, v, w = canvas.local(sl, h["centre"], h["frame"])
    d_heart = ellipsoid(u, v, w, *(s + 8.0 for s in h["axes"]))
    keep_out = np.minimum(np.minimum(d_med, d_spine), np.minimum(d_back, d_heart))
    d_lung = np.maximum(np.maximum(d_cage + 10.0, t.dome(x, y) - zg), -keep_out)
    d_lung = np.maximum(d_lung, apex)
    tex = LatticeNoise(t.organs["seed"], "lung", 5.0).window(canvas, sl)
    canvas.paint(sl, d_lung, np.float32(t.hu["lung"]) + 20.0 * tex)
    vessel = phase_hu(t, "artery", "blood")

    def clip(sub):  # the lung's distance on the capsule's window (outside: not lung)
        out = np.full(tuple(s.stop - s.start for s in sub), 1e4, np.float32)
        both = [slice(max(s.start, w_.start), min(s.stop, w_.stop)) for s, w_ in zip(sub, sl)]
        if all(b.stop > b.start for b in both):
            src = tuple(slice(b.start - w_.start, b.stop - w_.start) for b, w_ in zip(both, sl))
            dst = tuple(slice(b.start - s.start, b.stop - s.start) for b, s in zip(both, sub))
            out[dst] = d_lung[src]
        return out

    for a, b, r in th["vessels"]:
        canvas.paint_capsule(a, b, r, vessel, clip=clip)


def draw_heart(canvas: Canvas, t: Torso) -> None:
    h = t.organs["heart"]
    r = max(h["axes"]) + 10
    sl = canvas.window(h["centre"] - r, h["centre"] + r)
    if sl is None:
        return
    u, v, w = canvas.local(sl, h["centre"], h["frame"])
    a, b, c = h["axes"]
    canvas.paint(sl, ellipsoid(u, v, w, a + 5, b + 5, c + 5), t.hu["fat"])  # epicardial fat
    canvas.paint(sl, ellipsoid(u, v, w, a, b, c), t.hu["organ"] + 8.0)  # myocardium
    blood = phase_hu(t, "heart", "blood")
    for off, s in (((0.1 * a, -0.15 * b, -0.1 * c), 0.55), ((-0.25 * a, 0.3 * b, 0.1 * c), 0.5)):
        d = ellipsoid(u - off[0], v - off[1], w - off[2], s * a, s * b, s * c)
        canvas.paint(sl, d, blood)

