"""Spinal pathology drawn per seed: degeneration and compression fractures (private).

Each has its own random stream, so forcing one on or off leaves the other's draws alone.

- Degeneration at 1-3 levels, mostly L3-S1 (also lower thoracic): disc height loss of
  20-60%, marginal osteophytes (2-7 mm lips at the endplate rims of both neighbours),
  endplate sclerosis (+100-350 HU within 3 mm of the endplates) and, in half the discs
  that lost more than 35%, the vacuum phenomenon (gas in a fissured disc).
- Fractures: one (80%) or two vertebrae, mostly at the thoracolumbar junction (T11-L2)
  and mid-thoracic (T6-T8), wedge (60%, anterior height lost), biconcave (25%, middle
  height) or crush (15%, all heights), the height loss drawn in the Genant grade's range
  (:data:`~x2ct.data.phantom.anatomy.GENANT_GRADES`); compacted trabeculae +40-100 HU.
"""

from __future__ import annotations

import numpy as np

from x2ct.data.phantom import anatomy as A
from x2ct.data.phantom.texture import stream
from x2ct.data.phantom.vertebra import Vertebra

__all__ = ["degenerate", "fracture"]

_DEGENERATION_LEVELS = {20: 0.05, 21: 0.1, 22: 0.2, 23: 0.35, 24: 0.3, 18: 0.05, 19: 0.05,
                        14: 0.05, 15: 0.05, 16: 0.05}  # fmt: skip
_FRACTURE_LEVELS = {13: 0.04, 14: 0.08, 15: 0.08, 16: 0.05, 17: 0.05, 18: 0.1, 19: 0.2,
                    20: 0.2, 21: 0.1, 22: 0.05, 23: 0.05}  # fmt: skip


def _pick(rng: np.random.Generator, weights: dict[int, float], k: int) -> list[int]:
    labels = np.array(list(weights))
    p = np.array(list(weights.values()))
    return [int(v) for v in rng.choice(labels, size=k, replace=False, p=p / p.sum())]


def degenerate(seed: int, vts: list[Vertebra], disc_h: dict[int, float]) -> dict[int, float]:
    """Degenerate 1-3 motion segments in place (``disc_h``: disc height below each level);
    returns {level above a vacuum disc: gas fraction of the disc}."""
    rng = stream(seed, "degeneration")
    labels = [v.label for v in vts]
    vacuum = {}
    for lv in _pick(rng, _DEGENERATION_LEVELS, int(rng.integers(1, 4))):
        loss = rng.uniform(0.2, 0.6)
        disc_h[lv] *= 1.0 - loss
        i = labels.index(lv)
        for vt in (vts[i], vts[i + 1]):
            vt.osteophyte = max(vt.osteophyte, rng.uniform(2.0, 7.0))
            vt.sclerosis = max(vt.sclerosis, rng.uniform(100.0, 350.0))
        if loss > 0.35 and rng.uniform() < 0.5:
            vacuum[lv] = rng.uniform(0.25, 0.5)
    return vacuum


def fracture(seed: int, vts: list[Vertebra], grade: int) -> list[int]:
    """Fracture one or two vertebrae in place (heights, density); returns their labels."""
    rng = stream(seed, "fracture")
    labels = [v.label for v in vts]
    k = 1 if rng.uniform() < 0.8 else 2
    out = []
    for lv in _pick(rng, _FRACTURE_LEVELS, k):
        vt = vts[labels.index(lv)]
        vt.fracture = str(rng.choice(["wedge", "biconcave", "crush"], p=[0.6, 0.25, 0.15]))
        vt.loss = float(rng.uniform(*A.GENANT_GRADES[grade]))
        vt.trabecular += rng.uniform(40.0, 100.0)  # compacted trabeculae
        if vt.fracture in ("wedge", "crush"):
            vt.p["ha"] *= 1.0 - vt.loss
        if vt.fracture == "crush":
            vt.p["hp"] *= 1.0 - vt.loss
        out.append(vt.label)
    return out
