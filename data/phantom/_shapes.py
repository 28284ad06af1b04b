"""Signed-distance-like shapes on millimetre grids, for the phantom (private).

Every function returns a distance in mm, negative inside, exact or first-order accurate
near the surface (what partial-volume rendering and shell thickness need); arguments are
numpy arrays that broadcast, float32 in, float32 out.
"""

from __future__ import annotations

import numpy as np

__all__ = ["box", "capsule", "fraction", "prism", "smin", "superellipse", "upsample_linear"]


def prism(d_xy, d_z):
    """Intersection of a 2-D shape (signed distance ``d_xy``) with a slab (``d_z``, e.g.
    ``|z| - h``): the exact signed distance of the extrusion when both inputs are exact."""
    out = np.sqrt(np.maximum(d_xy, 0) ** 2 + np.maximum(d_z, 0) ** 2)
    return out + np.minimum(np.maximum(d_xy, d_z), 0)


def superellipse(x, y, a, b, p: float = 2.0):
    """Signed distance to ``|x/a|^p + |y/b|^p = 1`` to first order, ``(r - 1) / |grad r|``
    (r is the superellipse norm); exact on the boundary and along the axes."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)  # float32 throughout
    ax = np.abs(x) / a
    ay = np.abs(y) / b
    if p == 2.0:
        r = np.sqrt(ax * ax + ay * ay)
        rr = np.maximum(r, 1e-6)
        g = np.sqrt((ax / (rr * a)) ** 2 + (ay / (rr * b)) ** 2)
    else:  # three powers: |x|^(p-1), |y|^(p-1), then r = (sum)^(1/p)
        pa, pb = ax ** (p - 1), ay ** (p - 1)
        sp = np.maximum(pa * ax + pb * ay, 1e-18)
        r = sp ** (1.0 / p)
        rp = sp / np.maximum(r, 1e-6)  # r^(p-1)
        g = np.sqrt((pa / (rp * a)) ** 2 + (pb / (rp * b)) ** 2)
    # |grad r| depends only on the direction; at the centre use its smallest value.
    g = np.maximum(g, 1.0 / np.maximum(a, b))
    return (r - 1.0) / g


def box(q1, q2, q3, e1, e2, e3, rounding):
    """Exact signed distance to a box with half extents (e1, e2, e3) in its own frame
    (q1, q2, q3), edges rounded by ``rounding``."""
    k1 = np.abs(q1) - (e1 - rounding)
    k2 = np.abs(q2) - (e2 - rounding)
    k3 = np.abs(q3) - (e3 - rounding)
    out = np.sqrt(np.maximum(k1, 0) ** 2 + np.maximum(k2, 0) ** 2 + np.maximum(k3, 0) ** 2)
    return out + np.minimum(np.maximum(np.maximum(k1, k2), k3), 0) - rounding


def capsule(q, a, b, radius: float):
    """Exact signed distance to the segment a-b thickened by ``radius``; ``q`` is a tuple
    of three coordinate arrays, ``a``, ``b`` points (3,)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    ab = b - a
    t = sum((q[i] - a[i]) * ab[i] for i in range(3)) / np.float32(max(float(ab @ ab), 1e-12))
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt(sum((q[i] - a[i] - t * ab[i]) ** 2 for i in range(3))) - radius


def smin(a, b, k: float):
    """Polynomial smooth minimum: the union of two shapes with a fillet of size ~k."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def fraction(d, width: float):
    """Partial-volume fraction of a voxel of size ``width`` inside the shape (linear ramp
    across the boundary): 1 deep inside, 0 outside, 0.5 on the surface."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation from n_in samples spanning the same extent."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1.0 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def upsample_linear(small: np.ndarray, shape) -> np.ndarray:
    """Trilinear upsampling of a coarse 3-D grid to ``shape`` (both span the same extent),
    as three small matrix products: much faster than ``scipy.ndimage.zoom``."""
    mx, my, mz = (_interp_matrix(n, m) for n, m in zip(shape, small.shape))
    out = np.tensordot(mx, small, axes=(1, 0))  # (X, b, c)
    out = np.tensordot(out, my, axes=(1, 1))  # (X, c, Y)
    out = np.tensordot(out, mz, axes=(1, 1))  # (X, Y, Z)
    return np.ascontiguousarray(out, dtype=np.float32)
