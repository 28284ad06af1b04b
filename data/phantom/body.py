"""The body around the column: the trunk's outline, subcutaneous fat, the muscle wall and
the cavity, back muscles, psoas and quadratus lumborum, the CT table and the arms; the
diaphragm and rib cage sections the chest is built in (private; organs: organs.py).

Everything is placed relative to the column's landmarks (levels, body centres, spinous
processes) in anatomy millimetres, at real adult size: the grid only samples it.
The trunk's cross-section at height z is an asymmetric superellipse (flatter back, round
front), its lateral width and AP depth interpolated between levels from the seed's lean
size plus its subcutaneous fat; the back lies a few mm of muscle and the fat behind the
spinous processes (supine on the table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from x2ct.data.phantom import anatomy as A
from x2ct.data.phantom._shapes import superellipse
from x2ct.data.phantom.column import Column
from x2ct.data.phantom.draw import Canvas
from x2ct.data.phantom.options import Features
from x2ct.data.phantom.texture import LatticeNoise, stream

__all__ = ["Torso", "build_torso", "draw_muscles", "draw_outline", "draw_outside"]

# Level coordinate (VerSe label, 25 = S1, beyond: one unit per 30 mm) -> shape factors.
_LEV = [1.0, 6.0, 7.0, 8.0, 11.0, 15.0, 19.0, 22.0, 24.0, 25.0, 27.0, 30.0]
_LEAN_W = [0.42, 0.42, 0.62, 1.0, 1.05, 1.02, 0.97, 1.0, 1.03, 1.1, 1.16, 1.16]
_LEAN_D = [0.55, 0.55, 0.7, 0.92, 1.05, 1.1, 1.05, 1.0, 0.97, 0.97, 0.95, 0.95]
_FAT = [0.35, 0.35, 0.5, 0.7, 0.75, 0.8, 0.9, 1.0, 1.05, 1.1, 1.15, 1.15]
_BELLY = [0.1, 0.1, 0.2, 0.3, 0.35, 0.4, 0.7, 1.0, 0.9, 0.7, 0.5, 0.5]


@dataclass
class Torso:
    col: Column
    lean_w: float  # lateral width at L3 without subcutaneous fat
    lean_d: float  # AP depth at L3 without subcutaneous fat
    fat: float  # subcutaneous fat at L3 (flanks and back)
    belly: float  # anterior abdominal fat / flank fat
    wall: float  # abdominal wall muscle thickness
    cover: float  # soft tissue behind the spinous processes (before the fat)
    muscle: float  # muscle size factor
    infiltration: float  # fatty infiltration of muscle (0-0.5)
    visceral: float  # visceral fat fraction of the abdominal cavity
    hu: dict[str, float]
    contrast: str
    table: dict | None = None
    arms: dict | None = None
    organs: dict = field(default_factory=dict)

    # --- the trunk's outline ------------------------------------------------------------------

    def level(self, z):
        """Continuous level coordinate at z (VerSe label; 25 = S1; extrapolated)."""
        pr = self.col.profile(z)
        lev = pr["level"]
        top, bottom = self.col.z_of(3), self.col.z_of(A.SACRUM_LABEL)
        lev = np.where(z > top, 3.0 - (z - top) / 20.0, lev)
        return np.where(z < bottom, 25.0 + (bottom - z) / 30.0, lev).astype(np.float32)

    def outline(self, z) -> dict[str, np.ndarray]:
        """Per-z trunk section (each shaped like ``z``): half width ``a``, back ``y_post``,
        front ``y_ant``, centre ``y_c``, subcutaneous fat ``fat`` (flanks, back), ``fat_ant``
        (front) and the muscle wall ``wall``."""
        lev = self.level(z)
        f = lambda tab: np.interp(lev, _LEV, tab).astype(np.float32)
        fat = self.fat * f(_FAT)
        fat_ant = fat * (1.0 + self.belly * f(_BELLY))
        a = self.lean_w * f(_LEAN_W) / 2 + fat
        pr = self.col.profile(z)
        glute = np.interp(lev, [24.0, 25.0, 27.0, 30.0], [0.0, 12.0, 35.0, 45.0]) * self.muscle
        y_post = pr["back"] - self.cover - fat - glute.astype(np.float32)
        y_ant = y_post + self.lean_d * f(_LEAN_D) + fat + fat_ant
        y_c = y_post + 0.42 * (y_ant - y_post)
        wall = self.wall * np.interp(lev, [6.0, 8.0, 19.0, 30.0], [0.5, 1.4, 1.0, 1.0])
        return dict(a=a, y_post=y_post, y_ant=y_ant, y_c=y_c, fat=fat, fat_ant=fat_ant,
                    wall=wall.astype(np.float32))  # fmt: skip

    def body_sdf(self, x, y, z, o=None):
        """Signed distance (first order) to the skin."""
        o = o or self.outline(z)
        b_post, b_ant = o["y_c"] - o["y_post"], o["y_ant"] - o["y_c"]
        d_post = superellipse(x, y - o["y_c"], o["a"], b_post, p=3.0)
        d_ant = superellipse(x, y - o["y_c"], o["a"], b_ant, p=2.2)
        return np.where(y < o["y_c"], d_post, d_ant)

    def inner_sdf(self, x, y, z, o=None):
        """Signed distance (first order) to the inside of the muscle wall (the cavity):
        the skin surface moved in by the fat and the wall."""
        o = o or self.outline(z)
        d = self.body_sdf(x, y, z, o)
        front = np.clip((y - o["y_c"]) / (o["y_ant"] - o["y_c"]), 0.0, 1.0)
        fat = o["fat"] + (o["fat_ant"] - o["fat"]) * front
        return d + fat + o["wall"]

    def cage(self, z) -> dict[str, np.ndarray]:
        """Rib cage ellipse at z: centre (xc, yc), half axes (a, b), and the angle psi0 of
        the transverse process tip on it (the ribs start there). Each shaped like z."""
        z = np.asarray(z, np.float32)
        o = self.outline(z)
        pr = self.col.profile(z)
        wall = o["wall"] + 6.0
        a = o["a"] - o["fat"] - wall
        tip_x, tip_y = pr["tip_x"], pr["tip_y"]
        a = np.maximum(a, 1.2 * tip_x + 6.0)
        root = np.sqrt(1.0 - (tip_x / a) ** 2)
        front = o["y_ant"] - o["fat_ant"] - wall
        b = np.maximum((front - tip_y) / (1.0 + root), 20.0)
        return dict(xc=pr["x"], yc=tip_y + b * root, a=a, b=b, psi0=-np.arccos(tip_x / a))

    def dome(self, x, y):
        """z of the diaphragm above (x, y): two hemidomes, the right one higher, over the
        rib cage section at T10; the central tendon (under the heart) lower."""
        g = self.organs["dome"]
        rho2 = ((x - g["xc"]) / g["a"]) ** 2 + ((y - g["yc"]) / g["b"]) ** 2
        h = np.interp(x, [-60.0, -25.0, 0.0, 25.0, 60.0],
                      [g["h_left"], g["h_left"] - 15, g["h_left"] - 22, g["h_right"] - 10,
                       g["h_right"]]).astype(np.float32)  # fmt: skip
        return g["z_base"] + h * np.clip(1.0 - rho2, 0.0, 1.0)

    def muscle_hu(self, canvas: Canvas, sl) -> np.ndarray:
        """Muscle HU in window ``sl``: the seed's value, marbled with intramuscular fat."""
        n = self.organs["marbling"].window(canvas, sl)
        frac = np.clip(self.infiltration + 0.25 * n, 0.0, 0.9)
        return np.float32(self.hu["muscle"]) + frac * np.float32(self.hu["fat"] - self.hu["muscle"])

    def bounds(self, z_lo: float, z_hi: float) -> np.ndarray:
        """((xmin, xmax), (ymin, ymax)) of the skin, table and arms over [z_lo, z_hi]."""
        z = np.linspace(z_lo, z_hi, 64).astype(np.float32)
        o = self.outline(z)
        xmax = float(o["a"].max())
        ymin, ymax = float(o["y_post"].min()), float(o["y_ant"].max())
        if self.arms is not None:
            xmax = max(xmax, float(np.max(o["a"])) + self.arms["gap"] + 2 * self.arms["rx"])
        if self.table is not None:
            ymin = min(ymin, self.table["y_top"] - self.table["thickness"])
            xmax = max(xmax, self.table["width"] / 2)
        return np.array([[-xmax, xmax], [ymin, ymax]])


def build_torso(seed: int, col: Column, feat: Features, opts, hu: dict[str, float]) -> Torso:
    """Draw the body's sizes and organs' placements of phantom ``seed``."""
    rng = stream(seed, "body")
    fat = 5.0 + 30.0 * float(rng.beta(1.6, 2.6))
    if opts is not None and opts.fat_mm is not None:
        fat = float(opts.fat_mm)
    belly = float(rng.uniform(0.6, 1.6))
    lean_w = float(rng.uniform(255.0, 300.0))
    lean_d = float(rng.uniform(150.0, 205.0))
    width = float(np.clip(lean_w + 2 * fat, *A.BODY["width"]))
    depth = float(np.clip(lean_d + fat * (2.0 + belly), *A.BODY["depth"]))
    if opts is not None and opts.body_width_mm is not None:
        width = float(opts.body_width_mm)
    if opts is not None and opts.body_depth_mm is not None:
        depth = float(opts.body_depth_mm)
    fat = min(fat, 0.2 * width, 0.15 * depth)
    lean_w = width - 2 * fat
    lean_d = depth - fat * (2.0 + belly)
    muscle = float(rng.uniform(0.75, 1.2))
    torso = Torso(
        col=col,
        lean_w=lean_w,
        lean_d=lean_d,
        fat=fat,
        belly=belly,
        wall=float(rng.uniform(8.0, 15.0)) * muscle,
        cover=float(rng.uniform(4.0, 12.0)),
        muscle=muscle,
        infiltration=float(np.clip(0.02 + 0.004 * (feat.age - 20) + rng.normal(0, 0.04), 0, 0.5)),
        visceral=float(np.clip(0.15 + fat / 60.0 + rng.normal(0, 0.08), 0.05, 0.85)),
        hu=hu,
        contrast=feat.contrast,
    )
    torso.organs["marbling"] = LatticeNoise(seed, "marbling", 5.0)
    torso.organs["visceral"] = LatticeNoise(seed, "visceral", 9.0)
    torso.organs["organ"] = LatticeNoise(seed, "organ", 6.0)
    torso.organs["stool"] = LatticeNoise(seed, "stool", 3.0)

    # Diaphragm over the rib cage at T10; the right dome higher (liver).
    g = torso.cage(np.float32(col.z_of(17)))
    z_base = col.z_of(19) - rng.uniform(5.0, 20.0)
    top_r = col.z_of(16) + rng.uniform(-12.0, 8.0)
    torso.organs["dome"] = dict(
        xc=float(g["xc"]), yc=float(g["yc"]), a=float(g["a"]) + 5, b=float(g["b"]) + 5,
        z_base=z_base, h_right=top_r - z_base, h_left=top_r - z_base - rng.uniform(8.0, 20.0),
    )  # fmt: skip

    if feat.table:
        trng = stream(seed, "table")
        z = np.linspace(col.z_of(8), col.z_of(A.SACRUM_LABEL) - 60.0, 48).astype(np.float32)
        torso.table = dict(
            y_top=float(torso.outline(z)["y_post"].min()) - trng.uniform(2.0, 30.0),
            thickness=float(trng.uniform(5.0, 10.0)),
            radius=float(trng.uniform(450.0, 900.0)),
            width=float(trng.uniform(420.0, 500.0)),
            hu=float(trng.uniform(*A.TISSUE_HU["table"])),
        )
    if feat.arms:
        arng = stream(seed, "arms")
        torso.arms = dict(
            gap=float(arng.uniform(5.0, 40.0)), rx=float(arng.uniform(38.0, 50.0)),
            ry=float(arng.uniform(42.0, 55.0)), fat=float(min(fat, 25.0)) * 0.6,
            z_elbow=col.z_of(20) + arng.uniform(-30.0, 20.0), dy=float(arng.uniform(-20, 20)),
        )  # fmt: skip
    return torso


def _psoas_radius(t: Torso, lev):
    r = np.interp(lev, [18.5, 20.0, 22.0, 24.0, 25.0, 27.0, 29.0],
                  [0.0, 9.0, 16.0, 21.0, 22.0, 20.0, 0.0])  # fmt: skip
    return (r * t.muscle).astype(np.float32)


# --- drawing ---------------------------------------------------------------------------------


def _body_window(canvas: Canvas, t: Torso, pad: float = 2.0):
    z = canvas.axes[2]
    o = t.outline(z)
    lo = (-float(o["a"].max()), float(o["y_post"].min()), float(z[0]))
    hi = (float(o["a"].max()), float(o["y_ant"].max()), float(z[-1]))
    return canvas.window(lo, hi, pad)


def draw_outline(canvas: Canvas, t: Torso) -> np.ndarray | None:
    """Skin, subcutaneous fat, the muscle wall and the cavity's visceral fat; returns the
    body's signed distance over the whole grid (for the noise mask), or None."""
    sl = _body_window(canvas, t)
    if sl is None:
        return None
    x, y, z = canvas.grid(sl)
    o = {k: v[None, None, sl[2]] for k, v in t.outline(canvas.axes[2]).items()}
    d = t.body_sdf(x, y, z, o)
    canvas.paint(sl, d, t.hu["fat"])
    front = np.clip((y - o["y_c"]) / (o["y_ant"] - o["y_c"]), 0.0, 1.0)
    d_wall = d + o["fat"] + (o["fat_ant"] - o["fat"]) * front
    canvas.paint(sl, d_wall, t.muscle_hu(canvas, sl))
    # Cavity: mesenteric / mediastinal fat and soft tissue, mixed at ~9 mm grain.
    n = t.organs["visceral"].window(canvas, sl)
    frac = np.clip((n + 1.6 * (t.visceral - 0.5)) * 1.5 + 0.5, 0.0, 1.0)
    cav = np.float32(t.hu["organ"]) + frac * np.float32(t.hu["fat"] - t.hu["organ"])
    canvas.paint(sl, d_wall + o["wall"], cav)
    full = np.full(canvas.shape, 1e4, np.float32)
    full[sl] = d
    return full


def draw_muscles(canvas: Canvas, t: Torso) -> None:
    """Psoas, quadratus lumborum, erector spinae and multifidus, kept inside the fat."""
    sl = _body_window(canvas, t)
    if sl is None:
        return
    col = t.col
    z = canvas.axes[2][sl[2]]
    pr = col.profile(z)
    o = t.outline(z)
    lev = t.level(z)
    e = lambda a: np.asarray(a, np.float32)[None, None, :]
    x, y, _ = canvas.grid(sl)
    inside = e(o["y_post"] + o["fat"])  # stay in front of the back's fat
    # Back muscles: behind the transverse processes, beside the spinous processes.
    back_front = np.minimum(pr["y"] - pr["half_d"] - 4.0, pr["tip_y"] + 4.0)
    half = pr["tip_x"] + 18.0 * t.muscle
    depth = (back_front - (o["y_post"] + o["fat"])) / 2 + 3.0
    m = t.muscle_hu(canvas, sl)
    d = superellipse(x - e(pr["x"]), y - e(back_front - depth), e(half), e(np.maximum(depth, 1)),
                     p=3.0)  # fmt: skip
    d = np.maximum(d, inside - y)
    d = np.where(e(depth) > 2.0, d, np.float32(1e4))
    canvas.paint(sl, d, m)
    # Psoas (T12-L5 and on into the pelvis as iliopsoas) and quadratus lumborum.
    r_ps = _psoas_radius(t, lev)
    pelvis = np.clip(lev - 24.5, 0.0, None)
    for side in (-1.0, 1.0):
        px = pr["x"] + side * (pr["half_w"] + 0.6 * r_ps + 12.0 * pelvis)
        py = pr["y"] - 3.0 + 15.0 * pelvis
        dp = superellipse(x - e(px), y - e(py), e(np.maximum(r_ps, 0.5)),
                          e(np.maximum(0.9 * r_ps, 0.5)))  # fmt: skip
        canvas.paint(sl, np.where(e(r_ps) > 1.0, dp, np.float32(1e4)), m)
        r_ql = np.interp(lev, [19.5, 20.5, 23.0, 24.0], [0.0, 1.0, 1.0, 0.0]).astype(np.float32)
        qx = pr["x"] + side * (pr["tip_x"] + 12.0)
        dq = superellipse(x - e(qx), y - e(pr["tip_y"] + 4.0), e(np.maximum(16 * r_ql, 0.5)),
                          e(np.maximum(8 * r_ql * t.muscle, 0.5)))  # fmt: skip
        canvas.paint(sl, np.where(e(r_ql) > 0.2, dq, np.float32(1e4)), m)


def draw_outside(canvas: Canvas, t: Torso) -> None:
    """The CT table under the back and the arms beside the body (outside the trunk)."""
    if t.table is not None:
        tb = t.table
        half = tb["width"] / 2
        lo = (-half, tb["y_top"] - tb["thickness"] - 2, canvas.lo[2])
        hi = (half, tb["y_top"] + half**2 / (2 * tb["radius"]) + 2, canvas.hi[2])
        sl = canvas.window(lo, hi, 2.0)
        if sl is not None:
            x, y, _ = canvas.grid(sl)
            top = np.float32(tb["y_top"]) + x * x / np.float32(2 * tb["radius"])  # concave up
            d = np.abs(y - (top - tb["thickness"] / 2)) - tb["thickness"] / 2
            d = np.maximum(d, np.abs(x) - half) + 0 * canvas.grid(sl)[2]
            canvas.paint(sl, d, tb["hu"])
    if t.arms is not None:
        ar = t.arms
        z = canvas.axes[2]
        o = t.outline(z)
        for side in (-1.0, 1.0):
            cx = side * (o["a"] + ar["gap"] + ar["rx"])
            cy = o["y_c"] + ar["dy"]
            lo = (float(cx.min()) - ar["rx"], float(cy.min()) - ar["ry"], float(z[0]))
            hi = (float(cx.max()) + ar["rx"], float(cy.max()) + ar["ry"], float(z[-1]))
            sl = canvas.window(lo, hi, 2.0)
            if sl is None:
                continue
            x, y, zz = canvas.grid(sl)
            dx = x - np.asarray(cx, np.float32)[None, None, sl[2]]
            dy = y - np.asarray(cy, np.float32)[None, None, sl[2]]
            d = superellipse(dx, dy, ar["rx"], ar["ry"])
            canvas.paint(sl, d, t.hu["fat"])
            canvas.paint(sl, d + ar["fat"], t.muscle_hu(canvas, sl))
            upper = zz > ar["z_elbow"]
            # Humerus above the elbow, radius and ulna below: cortex around fatty marrow.
            for bx, by, r, cort in ((0.0, 0.0, 11.0, 4.0), (0.0, 12.0, 7.0, 2.5),
                                    (0.0, -12.0, 7.0, 2.5)):  # fmt: skip
                db = np.sqrt((dx - bx) ** 2 + (dy - by) ** 2) - r
                keep = upper if r > 10 else ~upper
                db = np.where(keep, db, np.float32(1e4))
                canvas.paint_bone(sl, db, t.hu["cortical"], np.float32(t.hu["fat"] + 60.0),
                                  cort)  # fmt: skip
