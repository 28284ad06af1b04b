"""Hounsfield units to linear attenuation, and the scale of network-facing X-rays."""

from __future__ import annotations

import torch

__all__ = ["MU_WATER", "DRR_SCALE", "hu_to_mu", "mu_to_hu"]

MU_WATER = 0.02
"""Linear attenuation of water in 1/mm (about 70 keV)."""

DRR_SCALE = 8.0
"""Networks see ``drr / DRR_SCALE``: a line integral of 8 (about 40 cm of water) maps to 1.
Image files written by x2ct store that normalised value over their full dtype range."""


def hu_to_mu(hu, mu_water: float = MU_WATER):
    """``mu = mu_water * max(0, 1 + hu / 1000)`` in 1/mm; works on tensors and arrays."""
    if isinstance(hu, torch.Tensor):
        return mu_water * torch.clamp(1.0 + hu / 1000.0, min=0.0)
    import numpy as np

    return mu_water * np.maximum(0.0, 1.0 + np.asarray(hu) / 1000.0)


def mu_to_hu(mu, mu_water: float = MU_WATER):
    """Inverse of :func:`hu_to_mu` for ``mu >= 0`` (air, HU <= -1000, maps back to -1000)."""
    return 1000.0 * (mu / mu_water - 1.0)
