"""Calibrating a radiograph's unknown display curve against a reconstruction.

A radiograph stores ``f(line integral)`` for some unknown increasing ``f`` (log, window
and level, gamma, LUT; plus scatter and noise that no curve undoes). The model reads it
through ranks (diffusion/xray_input.py), which do not need ``f``; projection guidance and
pose refinement compare DRRs with the X-rays and do. Given the DRRs ``d`` of a
reconstruction on the same detector, the least-squares increasing map ``g`` with
``g(display) ~ d`` is an isotonic regression of ``d`` on the display values (pool-adjacent-
violators: scipy.optimize.isotonic_regression), fitted per view; ``g(display)`` is then
the radiograph in the DRRs' units, and alternating it with reconstruction (as pose
refinement alternates poses) refines both.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import isotonic_regression

__all__ = ["fit_display_curve", "isotonic_map"]


def isotonic_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The increasing least-squares fit of ``y`` on ``x`` (1-D arrays of one size),
    evaluated at every ``x``; equal ``x`` get one value (the fit is a function of x)."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=y, minlength=len(values)) / counts
    fitted = isotonic_regression(means, weights=counts.astype(np.float64), increasing=True).x
    del values
    return fitted[inverse]


def fit_display_curve(display: torch.Tensor, drr: torch.Tensor) -> torch.Tensor:
    """Each view of ``display`` (N, V, H, W) mapped through the increasing curve that best
    fits it to the matching view of ``drr`` (N, V, H, W, in the units wanted back):
    (N, V, H, W) in ``drr``'s units, dtype and device."""
    if display.shape != drr.shape:
        raise ValueError(f"display {tuple(display.shape)} and drr {tuple(drr.shape)} differ")
    x = display.detach().double().cpu().flatten(2).numpy()
    y = drr.detach().double().cpu().flatten(2).numpy()
    out = np.empty_like(y)
    for i in range(x.shape[0]):
        for v in range(x.shape[1]):
            out[i, v] = isotonic_map(x[i, v], y[i, v])
    return torch.from_numpy(out).reshape(drr.shape).to(drr)
