"""Posterior instrumentation: titanium pedicle screws joined by rods (private).

Screws enter at the junction of the transverse and superior articular processes, run
along the pedicle's axis into the body, parallel to the endplates and converging medially
at the level's pedicle angle (about 6-12 deg thoracic, 8 deg at L1 to 22 deg at L5), and
stop short of the anterior cortex. Polyaxial heads (13 mm) sit behind the entry point; a
5.5-6.0 mm rod on each side joins the heads of the 3-5 instrumented vertebrae (2-4
levels), commonly lower lumbar (degenerative fusion) or across a fracture.
"""

from __future__ import annotations

import math

import numpy as np

from x2ct.data.phantom import anatomy as A
from x2ct.data.phantom.column import Column
from x2ct.data.phantom.draw import Canvas
from x2ct.data.phantom.texture import stream

__all__ = ["build_metal", "draw_metal"]


def _convergence(label: int) -> float:
    keys = sorted(A.SCREW["convergence_deg"])
    return float(np.interp(label, keys, [A.SCREW["convergence_deg"][k] for k in keys]))


def build_metal(seed: int, col: Column) -> list[dict]:
    """Screws (world entry, tip, radius, head) of phantom ``seed``'s construct."""
    rng = stream(seed, "metal")
    n_levels = int(rng.integers(2, 5))
    fractured = [v.label for v in col.vertebrae if v.fracture and v.sacral == 0]
    if fractured:
        start = fractured[0] - n_levels // 2
    elif rng.uniform() < 0.7:
        start = 25 - n_levels  # lower lumbar down to S1 (label 26 after L5)
    else:
        start = int(rng.integers(14, 24 - n_levels))
    labels = []
    for lv in range(start, start + n_levels + 1):
        labels.append(A.SACRUM_LABEL if lv >= 25 else max(lv, 8))
    labels = sorted(set(labels), key=lambda lv: (lv == A.SACRUM_LABEL, lv))
    diameter = float(rng.uniform(*A.SCREW["diameter"]))
    screws = []
    for lv in labels:
        vt = col.by_label(lv)
        if lv < 20:
            diameter_lv = min(diameter, 6.5)
        else:
            diameter_lv = diameter
        gamma = math.radians(_convergence(min(lv, 24)) + rng.uniform(-3.0, 3.0))
        for side in (-1.0, 1.0):
            p = vt.pedicle_centre(side)
            d = np.array([-side * math.sin(gamma), math.cos(gamma), 0.0])
            pedicle = abs(-0.85 * vt.p["body_d"] / 2 + 3.0 - vt.canal_v)
            entry = p - d * (pedicle / 2 + vt.p["lam_t"] / 2 + 2.0)
            b = vt.p["body_d"] / 2
            # Tip in the anterior third of the body, short of the anterior cortex.
            want = (rng.uniform(0.3, 0.6) * b - entry[1]) / d[1]
            room = (0.85 * b - entry[1]) / d[1]
            length = float(min(np.clip(want, *A.SCREW["length"]), room))
            tip = entry + d * length
            screws.append(dict(label=lv, side=side, entry=vt.to_world(entry),
                               tip=vt.to_world(tip), radius=diameter_lv / 2,
                               head=vt.to_world(entry - d * 9.0),
                               head_a=vt.to_world(entry - d * 3.0),
                               head_b=vt.to_world(entry - d * 15.0)))  # fmt: skip
    return [dict(screws=screws, rod_radius=float(rng.uniform(*A.SCREW["rod_diameter"])) / 2)]


def draw_metal(canvas: Canvas, constructs: list[dict], hu: float) -> None:
    for con in constructs:
        screws = con["screws"]
        for s in screws:
            # Shaft (threads not resolved) with a tapered tip, and the polyaxial head.
            axis = (s["tip"] - s["entry"]) / np.linalg.norm(s["tip"] - s["entry"])
            canvas.paint_capsule(s["entry"], s["tip"] - axis * 2.0, s["radius"], hu, metal=True)
            canvas.paint_capsule(s["tip"] - axis * 2.5, s["tip"], 0.6 * s["radius"], hu,
                                 metal=True)  # fmt: skip
            canvas.paint_capsule(s["head_a"], s["head_b"], 6.5, hu, metal=True)
        for side in (-1.0, 1.0):
            heads = [s["head"] for s in screws if s["side"] == side]
            heads = sorted(heads, key=lambda h: -h[2])
            for a, b in zip(heads[:-1], heads[1:]):
                canvas.paint_capsule(a, b, con["rod_radius"], hu, metal=True)
