"""Training augmentation of the biplanar X-rays: pose jitter and radiograph-like intensity.

Seeded per (seed, case index, epoch) through :func:`augment_generator`, so a run is
reproducible and every epoch sees new draws. The geometry has no detector offset, so the
pose jitter moves the gantry angles only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from x2ct.projector import Geometry

__all__ = ["XrayAugment", "augment_generator"]


def augment_generator(seed: int, index: int, epoch: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from (seed, index, epoch) through numpy's
    ``SeedSequence`` (well mixed, independent of hash randomisation)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), int(epoch)])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


def _uniform(g: torch.Generator, lo: float, hi: float, n: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


@dataclass(frozen=True)
class XrayAugment:
    """Random changes drawn independently per view (each view is its own exposure).

    Attributes:
        angle_jitter: gantry angle change, uniform in +-``angle_jitter`` degrees (0: off;
            the DRR is then re-projected from the CT).
        gamma: range of the exponent applied to the normalised X-ray (log-uniform).
        gain: range of a multiplicative gain (uniform).
        noise: range of the standard deviation of additive Gaussian noise, in normalised
            units (uniform).
    """

    angle_jitter: float = 1.5
    gamma: tuple[float, float] = (0.85, 1.2)
    gain: tuple[float, float] = (0.9, 1.1)
    noise: tuple[float, float] = (0.0, 0.01)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.angle_jitter) and 0 <= self.angle_jitter <= 45):
            raise ValueError(f"angle_jitter must be in [0, 45] degrees, got {self.angle_jitter}")
        for name in ("gamma", "gain", "noise"):
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi) or (name != "noise" and lo <= 0):
                raise ValueError(
                    f"{name} must be a range (low, high) with 0 < low <= high, got {(lo, hi)}"
                )

    def geometry(self, geometry: Geometry, generator: torch.Generator) -> Geometry:
        """``geometry`` with each gantry angle moved by up to +-angle_jitter degrees."""
        if self.angle_jitter == 0:
            return geometry
        delta = _uniform(generator, -self.angle_jitter, self.angle_jitter, geometry.num_views)
        angles = tuple(a + float(d) for a, d in zip(geometry.angles, delta))
        return dataclasses.replace(geometry, angles=angles)

    def intensity(self, xrays: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(V, H, W) normalised X-rays -> ``gain * max(x, 0) ** gamma + noise``, per view."""
        v = xrays.shape[0]
        lg = _uniform(generator, math.log(self.gamma[0]), math.log(self.gamma[1]), v).exp()
        gain = _uniform(generator, *self.gain, v)
        sigma = _uniform(generator, *self.noise, v)
        shape = (v,) + (1,) * (xrays.ndim - 1)
        out = xrays.clamp_min(0).pow(lg.to(xrays.dtype).view(shape)) * gain.to(xrays.dtype).view(
            shape
        )
        noise = torch.randn(xrays.shape, generator=generator, dtype=xrays.dtype)
        return out + noise * sigma.to(xrays.dtype).view(shape)
