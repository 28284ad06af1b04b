"""Organs and vessels: where they lie in the seed's body, and their drawing (private).

Placed relative to the column's levels and the trunk's outline: kidneys posterior beside
L1-L3 (the left 1-2 cm higher, upper poles medial and posterior, hila anteromedial, in
perirenal fat, with renal sinus fat); the liver under the right hemidiaphragm, crossing
the midline anteriorly; the spleen posterolateral under the left dome; the stomach left
anterior with a gas cap (supine: gas rises anteriorly); the heart behind the sternum;
the aorta from the heart over the arch, down the left-anterior side of the spine to its
bifurcation at L4, the iliac arteries; the IVC right-anterior of the spine from the iliac
veins to the right atrium; the colon (ascending, transverse, descending, sigmoid) and
small-bowel loops with walls, fluid, stool with gas bubbles and gas above fluid levels.
CT numbers per contrast phase from :data:`~x2ct.data.phantom.anatomy.CONTRAST_HU`.
"""

from __future__ import annotations

import math

import numpy as np

from x2ct.data.phantom import anatomy as A
from x2ct.data.phantom._shapes import capsule
from x2ct.data.phantom.body import Torso, _psoas_radius
from x2ct.data.phantom.draw import Canvas, ellipsoid, rotation
from x2ct.data.phantom.texture import stream

__all__ = ["draw_abdomen", "draw_vessels", "paint_tube", "phase_hu", "place_organs"]


def place_organs(seed: int, t: Torso) -> None:
    """Draw the organs' placements of phantom ``seed`` into ``t.organs``."""
    _place_organs(t, stream(seed, "organs"))


def _place_organs(t: Torso, rng: np.random.Generator) -> None:
    col, org = t.col, t.organs
    size = float(rng.uniform(0.85, 1.15))

    def at(label, dz=0.0):
        z = np.float32(col.z_of(label) + dz)
        return {k: float(v) for k, v in col.profile(z).items()}, z

    # Kidneys: posterior, beside L1-L3, the left about 1-2 cm higher; upper poles tilted
    # medially and posteriorly, hila facing anteromedially.
    kid = []
    for side, dz in ((1.0, rng.uniform(-25.0, -10.0)), (-1.0, rng.uniform(0.0, 10.0))):
        pr, z = at(21, dz - 10.0)
        r_ps = _psoas_radius(t, t.level(z))
        length, width, thick = (s * size * rng.uniform(0.92, 1.08) for s in A.ORGANS["kidney"])
        x = pr["x"] + side * (pr["half_w"] + 1.3 * float(r_ps) + width / 2 + 6.0)
        y = pr["y"] - rng.uniform(0.0, 12.0)
        frame = rotation(-12.0, side * 14.0, side * -30.0)
        kid.append(dict(centre=np.array([x, y, float(z)]), frame=frame,
                        axes=(width / 2, thick / 2, length / 2), side=side))  # fmt: skip
    org["kidneys"] = kid

    # Liver: right upper quadrant under the right dome, crossing the midline anteriorly.
    d = org["dome"]
    pr, z = at(18)
    span = rng.uniform(*A.ORGANS["liver_span"]) * size
    o = t.outline(z)
    a_in = float(o["a"] - o["fat"] - o["wall"])
    y_front = float(o["y_ant"] - o["fat_ant"] - o["wall"])
    org["liver"] = dict(
        right=dict(centre=np.array([0.42 * a_in, (pr["y"] + y_front) / 2 + 5.0,
                                    d["z_base"] + d["h_right"] - span / 2]),
                   axes=(0.55 * a_in, 0.5 * (y_front - pr["y"]) + 20.0, span / 2)),
        left=dict(centre=np.array([-0.2 * a_in, y_front - 45.0,
                                   d["z_base"] + d["h_left"] - 35.0]),
                  axes=(0.4 * a_in, 35.0, 40.0)),
    )  # fmt: skip
    # Spleen: left, posterolateral under the dome, along the ribs.
    pr, z = at(18, 10.0)
    ln, wd, th = (s * size for s in A.ORGANS["spleen"])
    org["spleen"] = dict(centre=np.array([-(a_in - th / 2 - 12.0), pr["y"] + 10.0, float(z)]),
                         frame=rotation(0.0, 0.0, 40.0), axes=(th / 2, wd / 2, ln / 2))
    # Stomach: left upper quadrant, anterior, a gas cap above a fluid level (supine: gas
    # rises anteriorly).
    pr, z = at(19, 10.0)
    org["stomach"] = dict(centre=np.array([-0.4 * a_in, y_front - 55.0, float(z)]),
                          axes=(50.0 * size, 38.0 * size, 60.0 * size),
                          gas=float(rng.uniform(0.1, 0.6)))  # fmt: skip
    # Great vessels: nodes (x, y, z, radius).
    aorta_r = rng.uniform(*A.ORGANS["aorta_diameter"]) / 2 * size
    nodes = []
    heart = _heart_geometry(t, rng, size)
    org["heart"] = heart
    hc = heart["centre"]
    pr4, z4 = at(11)
    nodes += [(hc[0] + 10, hc[1] + 5, hc[2] + 30, aorta_r * 1.5),
              (12.0, hc[1] + 5, float(z4) + 5, aorta_r * 1.4),
              (-2.0, pr4["y"] + pr4["half_d"] + 25.0, float(z4) + 22, aorta_r * 1.3),
              (-pr4["half_w"] - 8.0, pr4["y"] + 6.0, float(z4) + 8, aorta_r * 1.2)]  # fmt: skip
    for lv in range(12, 23):
        pr, z = at(lv)
        f = (lv - 12) / 7.0
        x = pr["x"] - (0.85 - 0.55 * min(f, 1.0)) * pr["half_w"] - 4.0
        y = pr["y"] + pr["half_d"] * min(0.3 + 0.8 * f, 1.0) + (aorta_r + 2 if f >= 1 else 0)
        nodes.append((x, y, float(z), aorta_r * (1.2 - 0.2 * min(f, 1.0))))
    pr, z = at(23)
    nodes.append((pr["x"] - 6, pr["y"] + pr["half_d"] + aorta_r + 2, float(z) + 5, aorta_r))
    org["aorta"] = nodes
    iliac = []
    prs, zs = at(A.SACRUM_LABEL)
    for side in (1.0, -1.0):
        iliac.append([nodes[-1],
                      (pr["x"] + side * 35, pr["y"] + pr["half_d"] + 8, float(z) - 25, 6.0),
                      (prs["x"] + side * 60, prs["y"] + 35, float(zs) - 30, 5.0),
                      (prs["x"] + side * 80, prs["y"] + 70, float(zs) - 90, 4.5)])  # fmt: skip
    org["iliac_arteries"] = iliac
    ivc_r = rng.uniform(*A.ORGANS["ivc_diameter"]) / 2 * size
    ivc = []
    for lv in range(24, 15, -1):
        pr, z = at(lv)
        ivc.append((pr["x"] + 0.45 * pr["half_w"] + 8.0, pr["y"] + pr["half_d"] + ivc_r,
                    float(z), ivc_r))  # fmt: skip
    ivc.append((hc[0] + 30.0, hc[1] - 10.0, hc[2] - 20.0, ivc_r))
    org["ivc"] = ivc
    org["iliac_veins"] = [
        [ivc[0], (prs["x"] + side * 55, prs["y"] + 25, float(zs) - 30, 6.5),
         (prs["x"] + side * 72, prs["y"] + 55, float(zs) - 90, 5.5)]
        for side in (1.0, -1.0)
    ]  # fmt: skip

    # Bowel: colon (ascending right, transverse, descending left, sigmoid) and small-bowel
    # loops (random walks) in the cavity below the liver.
    org["bowel"] = _bowel(t, rng, at)
    # Aortic wall calcifications (when drawn): segment index, position, angle, size.
    org["plaques"] = [
        dict(seg=int(rng.integers(len(nodes) - 7, len(nodes) - 1)), t=float(rng.uniform()),
             angle=float(rng.uniform(0, 2 * math.pi)), length=float(rng.uniform(2.0, 6.0)),
             radius=float(rng.uniform(1.5, 2.5)), hu=float(rng.uniform(*A.CALCIFICATION_HU)))
        for _ in range(int(rng.integers(2, 14)))
    ]  # fmt: skip


def _heart_geometry(t: Torso, rng, size: float) -> dict:
    """The heart in the lower mediastinum: behind the sternum, in front of the spine with
    room for the aorta and oesophagus (15 mm), left of the midline; long axis pointing
    left, anterior and down. Smaller in a shallow chest."""
    col = t.col
    z = np.float32(col.z_of(15) - rng.uniform(0.0, 15.0))
    cg = t.cage(z)
    pr = col.profile(z)
    y_front = float(cg["yc"] + cg["b"]) - 6.0
    y_back = float(pr["y"] + pr["half_d"]) + 15.0
    ln, wd, dp = (s * size * rng.uniform(0.9, 1.1) for s in A.ORGANS["heart"])
    fit = min(1.0, (y_front - y_back) / (0.8 * dp + 0.25 * ln))
    ln, wd, dp = ln * fit, wd * fit, dp * fit
    axis = np.array([-0.55, 0.5, -0.45])
    axis /= np.linalg.norm(axis)
    e2 = np.cross(axis, [0.0, 0.0, 1.0])
    e2 /= np.linalg.norm(e2)
    frame = np.stack([axis, e2, np.cross(axis, e2)], axis=1)
    centre = np.array([float(cg["xc"]) - 22.0, (y_front + y_back) / 2, float(z)])
    return dict(centre=centre, frame=frame, axes=(ln / 2, wd / 2, dp / 2))


def _bowel(t: Torso, rng, at) -> list[dict]:
    col = t.col
    chains = []
    z_l1, z_l3, z_s1 = col.z_of(20), col.z_of(22), col.z_of(A.SACRUM_LABEL)
    o = t.outline(np.float32(z_l3))
    a_in = float(o["a"] - o["fat"] - o["wall"])
    y_front = float(o["y_ant"] - o["fat_ant"] - o["wall"])
    pr = col.profile(np.float32(z_l3))
    y_spine = float(pr["y"] + pr["half_d"])
    r_colon = rng.uniform(18.0, 26.0)

    def colon(points, content):
        chains.append(dict(points=np.array(points), radius=r_colon * rng.uniform(0.85, 1.1),
                           content=content, gas=float(rng.uniform(0.15, 0.9))))  # fmt: skip

    cx = 0.72 * a_in
    colon([(cx, y_spine + 10, z_s1 - 20), (cx + 5, y_spine + 15, z_l3),
           (cx - 10, y_spine + 30, z_l1 - 10)], "faeces")  # fmt: skip
    colon([(cx - 10, y_spine + 30, z_l1 - 10), (0.0, y_front - 35, z_l3 + 15),
           (-cx + 10, y_spine + 40, z_l1 + 5)], str(rng.choice(["faeces", "gas"])))  # fmt: skip
    colon([(-cx + 10, y_spine + 40, z_l1 + 5), (-cx - 5, y_spine + 15, z_l3),
           (-cx, y_spine + 15, z_s1 - 10), (-0.3 * a_in, y_spine + 40, z_s1 - 60)],
          "faeces")  # fmt: skip
    # Small bowel: loops as random walks in the mid and lower abdomen.
    lo = np.array([-0.55 * a_in, y_spine + 25.0, z_s1 - 40.0])
    hi = np.array([0.55 * a_in, y_front - 15.0, z_l1 - 20.0])
    hi = np.maximum(hi, lo + 10.0)  # a shallow abdomen still holds a few loops
    for _ in range(int(rng.integers(5, 9))):
        p = rng.uniform(lo, hi)
        pts = [p]
        step = rng.uniform(20.0, 30.0)
        direction = rng.normal(size=3)
        for _ in range(int(rng.integers(4, 9))):
            direction = direction / np.linalg.norm(direction) + rng.normal(0.0, 0.6, size=3)
            direction /= np.linalg.norm(direction)
            p = np.clip(p + step * direction, lo, hi)
            pts.append(p)
        chains.append(dict(points=np.array(pts), radius=float(rng.uniform(10.0, 15.0)),
                           content="fluid", gas=float(rng.uniform(0.0, 0.5) if rng.uniform() < 0.6
                                                      else 0.0)))  # fmt: skip
    return chains


def paint_tube(canvas: Canvas, nodes, value, clip=None) -> None:
    """A vessel through ``nodes`` (x, y, z, radius): one capsule per segment."""
    for p, q in zip(nodes[:-1], nodes[1:]):
        canvas.paint_capsule(p[:3], q[:3], (p[3] + q[3]) / 2, value, clip=clip)


def _organ(canvas, centre, frame, axes, value, grow=0.0):
    r = max(axes) + grow + 2
    sl = canvas.window(np.asarray(centre) - r, np.asarray(centre) + r)
    if sl is None:
        return None
    u, v, w = canvas.local(sl, centre, frame)
    d = ellipsoid(u, v, w, *(s + grow for s in axes))
    canvas.paint(sl, d, value)
    return sl, u, v, w, d


def phase_hu(t: Torso, organ: str, base: str) -> float:
    if t.contrast == "none":
        return t.hu[base]
    lo, hi = A.CONTRAST_HU[t.contrast][organ]
    return t.hu.get(f"contrast_{organ}", (lo + hi) / 2)


def draw_abdomen(canvas: Canvas, t: Torso) -> None:
    """Bowel, stomach, spleen, liver, kidneys (painter's order: later wins)."""
    org = t.organs
    # Bowel: walls of every segment first, then contents, then gas (so loops have no
    # internal walls where their segments join).
    segs = []
    for ch in org["bowel"]:
        for p, q in zip(ch["points"][:-1], ch["points"][1:]):
            segs.append((p, q, ch))
    for p, q, ch in segs:
        canvas.paint_capsule(p, q, ch["radius"], t.hu["organ"])
    stool = org["stool"]
    for p, q, ch in segs:
        r = ch["radius"] - 2.5
        if ch["content"] == "faeces":

            def value(sl, _n=stool):
                n = _n.window(canvas, sl)
                return np.where(n > 0.9, np.float32(-950.0), np.float32(t.hu["faeces"]) + 25 * n)

            _paint_valued_capsule(canvas, p, q, r, value)
        elif ch["content"] == "gas":
            canvas.paint_capsule(p, q, r, -980.0)
        else:
            canvas.paint_capsule(p, q, r, t.hu["fluid"])
    for p, q, ch in segs:  # gas rises anteriorly (supine): above a level in each segment
        if ch["gas"] <= 0 or ch["content"] == "gas":
            continue
        r = ch["radius"] - 2.5
        level = max(p[1], q[1]) + r * (1.0 - 2.0 * ch["gas"])
        clip = lambda sl, _lv=level: np.float32(_lv) - canvas.grid(sl)[1]
        canvas.paint_capsule(p, q, r, -990.0, clip=clip)

    st = org["stomach"]
    res = _organ(canvas, st["centre"], np.eye(3), st["axes"], t.hu["organ"])
    if res is not None:
        sl, u, v, w, d = res
        canvas.paint(sl, d + 4.0, t.hu["fluid"])
        level = st["axes"][1] * (1.0 - 2.0 * st["gas"])
        canvas.paint(sl, np.maximum(d + 4.0, level - v), -990.0)

    sp = org["spleen"]
    _organ(canvas, sp["centre"], sp["frame"], sp["axes"], phase_hu(t, "spleen", "spleen"))
    _draw_liver(canvas, t)
    for k in org["kidneys"]:
        _organ(canvas, k["centre"], k["frame"], k["axes"], t.hu["fat"], grow=12.0)  # perirenal
        res = _organ(canvas, k["centre"], k["frame"], k["axes"], phase_hu(t, "kidney", "kidney"))
        if res is None:
            continue
        sl, u, v, w, d = res
        a = k["axes"]
        # Renal sinus fat at the hilum (medial, facing anteromedially in the local frame).
        hil = ellipsoid(u + k["side"] * 0.55 * a[0], v, w, 0.45 * a[0], 0.5 * a[1], 0.45 * a[2])
        canvas.paint(sl, np.maximum(hil, d), t.hu["fat"])


def _paint_valued_capsule(canvas, a, b, r, value_fn):
    a, b = np.asarray(a, float), np.asarray(b, float)
    sl = canvas.window(np.minimum(a, b) - r, np.maximum(a, b) + r, canvas.width)
    if sl is None:
        return
    d = capsule(canvas.grid(sl), a, b, r)
    canvas.paint(sl, d, value_fn(sl))


def _draw_liver(canvas: Canvas, t: Torso) -> None:
    lv = t.organs["liver"]
    value = phase_hu(t, "liver", "liver")
    parts = [lv["right"], lv["left"]]
    lo = np.min([p["centre"] - np.array(p["axes"]) for p in parts], axis=0)
    hi = np.max([p["centre"] + np.array(p["axes"]) for p in parts], axis=0)
    sl = canvas.window(lo, hi, 2.0)
    if sl is None:
        return
    x, y, z = canvas.grid(sl)
    d = np.minimum(
        *[ellipsoid(x - p["centre"][0], y - p["centre"][1], z - p["centre"][2], *p["axes"])
          for p in parts]
    )  # fmt: skip
    d = np.maximum(d, z - (t.dome(x, y) - 4.0))  # under the diaphragm
    d = np.maximum(d, t.inner_sdf(x, y, z) + 2.0)  # inside the abdominal wall
    n = t.organs["organ"].window(canvas, sl)
    canvas.paint(sl, d, np.float32(value) + 4.0 * n)


def draw_vessels(canvas: Canvas, t: Torso, calcification: bool) -> None:
    org = t.organs
    art = phase_hu(t, "artery", "blood")
    vein = phase_hu(t, "vein", "blood")
    paint_tube(canvas, org["aorta"], art)
    for nodes in org["iliac_arteries"]:
        paint_tube(canvas, nodes, art)
    paint_tube(canvas, org["ivc"], vein)
    for nodes in org["iliac_veins"]:
        paint_tube(canvas, nodes, vein)
    if not calcification:
        return
    nodes = org["aorta"]
    for pl in org["plaques"]:
        p, q = np.array(nodes[pl["seg"]]), np.array(nodes[pl["seg"] + 1])
        c = p[:3] + pl["t"] * (q[:3] - p[:3])
        r = p[3] + pl["t"] * (q[3] - p[3])
        axis = (q[:3] - p[:3]) / np.linalg.norm(q[:3] - p[:3])
        e1 = np.cross(axis, [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
        radial = math.cos(pl["angle"]) * e1 + math.sin(pl["angle"]) * e2
        tangent = np.cross(axis, radial)
        centre = c + radial * (r - 0.5)
        half = pl["length"] / 2
        canvas.paint_capsule(centre - half * tangent, centre + half * tangent, pl["radius"],
                             pl["hu"])  # fmt: skip
