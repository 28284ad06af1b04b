"""The iliac wings and the gluteal muscles around them (private).

Each wing is a curved bony plate along an ellipse around the pelvis in every axial
section: from the sacroiliac joint (beside the sacral ala, posterior) laterally and round
to the anterior superior iliac spine (ASIS, ~100-125 mm from the midline). The iliac crest
rises highest at about the L4-L5 disc (the intercristal line), lower at the posterior and
anterior spines; the plate is 2-4 mm thin in the iliac fossa, thick (10-15 mm) near the
sacroiliac joint and along the crest, and narrows toward the acetabulum below S1.
"""

from __future__ import annotations

import math

import numpy as np

from x2ct.data.phantom import anatomy as A
from x2ct.data.phantom.body import Torso
from x2ct.data.phantom.draw import Canvas
from x2ct.data.phantom.texture import stream

__all__ = ["build_pelvis", "draw_gluteal", "draw_ilium"]


def build_pelvis(seed: int, t: Torso) -> dict:
    rng = stream(seed, "pelvis")
    col = t.col
    s1 = col.by_label(A.SACRUM_LABEL)
    a = 0.42 * t.lean_w * rng.uniform(0.95, 1.05)
    x_si = s1.p["body_w"] / 2 + 26.0  # lateral edge of the ala + joint space
    psi_post = -math.acos(min(x_si / a, 0.95))
    return dict(
        xc=float(s1.centre[0]),
        yc=float(s1.centre[1]) + 40.0,
        a=a,
        b=float(rng.uniform(68.0, 82.0)),
        psi_post=psi_post,
        psi_ant=math.radians(rng.uniform(20.0, 30.0)),
        z_top=(col.z_of(23) + col.z_of(24)) / 2 + rng.uniform(-12.0, 8.0),
        z_s1=float(s1.centre[2]),
        z_bottom=float(s1.centre[2]) - 110.0,
    )


def _section(pv: dict, canvas: Canvas, sl):
    """Per voxel: elliptic angle psi (0 lateral, -pi/2 back), radial offset dr (mm)."""
    x, y, z = canvas.grid(sl)
    dx = np.abs(x - np.float32(pv["xc"])) / np.float32(pv["a"])
    dy = (y - np.float32(pv["yc"])) / np.float32(pv["b"])
    rho = np.sqrt(dx * dx + dy * dy)
    psi = np.arctan2(dy, dx)
    radius = np.sqrt((pv["a"] * np.cos(psi)) ** 2 + (pv["b"] * np.sin(psi)) ** 2)
    return x, y, z, rho, psi, (rho - 1.0) * radius, radius


def draw_gluteal(canvas: Canvas, t: Torso, pv: dict) -> None:
    """Gluteal muscles outside the pelvic ring, below the crest, inside the fat."""
    lo = (-pv["a"] - 80, pv["yc"] - pv["b"] - 90, pv["z_bottom"] - 60)
    hi = (pv["a"] + 80, pv["yc"] + pv["b"], pv["z_top"])
    sl = canvas.window(lo, hi)
    if sl is None:
        return
    x, y, z, rho, psi, dr, _ = _section(pv, canvas, sl)
    d_body = t.body_sdf(x, y, z)
    o = t.outline(canvas.axes[2][sl[2]])
    d = np.maximum(np.maximum(-dr - 2.0, d_body + o["fat"][None, None, :]), z - pv["z_top"] + 15.0)
    d = np.maximum(d, (y - np.float32(pv["yc"] + 0.3 * pv["b"])))  # posterolateral
    canvas.paint(sl, d, t.muscle_hu(canvas, sl))


def draw_ilium(canvas: Canvas, t: Torso, pv: dict, bone: dict) -> None:
    lo = (-pv["a"] - 12, pv["yc"] - pv["b"] - 12, pv["z_bottom"] - 5)
    hi = (pv["a"] + 12, pv["yc"] + pv["b"] + 12, pv["z_top"] + 5)
    sl = canvas.window(lo, hi)
    if sl is None:
        return
    x, y, z, rho, psi, dr, radius = _section(pv, canvas, sl)
    below = np.clip((pv["z_s1"] - 30.0 - z) / (pv["z_s1"] - 30.0 - pv["z_bottom"]), 0.0, 1.0)
    p0 = pv["psi_post"] + 0.35 * below  # the greater sciatic notch
    p1 = pv["psi_ant"] - 0.9 * below  # below the anterior spines
    mid = 0.5 * (pv["psi_post"] + pv["psi_ant"]) - 0.15
    half = 0.5 * (pv["psi_ant"] - pv["psi_post"])
    crest = pv["z_top"] - 32.0 * ((psi - mid) / half) ** 2
    thick = 3.0 + 11.0 * np.exp(-(((psi - pv["psi_post"]) / 0.3) ** 2))
    thick = thick + 7.0 * np.exp(-(((crest - z) / 7.0) ** 2)) + 6.0 * below
    along = np.maximum(p0 - psi, psi - p1) * radius
    d = np.maximum(np.maximum(np.abs(dr) - thick / 2, along),
                   np.maximum(z - crest, pv["z_bottom"] - z))  # fmt: skip
    canvas.paint_bone(sl, d, bone["cortical"], bone["pelvis"], 1.2)
