"""The canvas the phantom is drawn on: a voxel grid that samples anatomy given in patient
millimetres, painted shape by shape inside each shape's bounding box (private).

Coordinates: the grid is centred on the origin (DESIGN.md); anatomy coordinates are world
coordinates less ``offset`` (the anatomy sits ``offset`` mm off the grid's centre). Every
shape is a signed distance ``d`` (mm, negative inside) evaluated only in the window of
voxels its bounding box covers, so a shape costs what it covers, not the whole volume.

Partial volume: a boundary is painted with the fraction ``clip(0.5 - d / w, 0, 1)``, ``w``
the mean voxel size: the exact box-filtered occupancy of a voxel cut by a plane parallel
to its faces, first-order otherwise (the analytic signed-distance ramp). A thin layer
(a 0.35 mm cortex in a 2 mm voxel) gets its exact share of the voxel in the same way:
``fraction(d) - fraction(d + t)``.
"""

from __future__ import annotations

import math

import numpy as np

from x2ct.data.phantom._shapes import capsule, fraction

__all__ = ["Canvas", "ellipsoid", "rotation"]


def rotation(x_deg: float = 0.0, y_deg: float = 0.0, z_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix Rx(x) @ Ry(y) @ Rz(z) (degrees, right-handed)."""
    a, b, c = (math.radians(v) for v in (x_deg, y_deg, z_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz


def ellipsoid(u, v, w, a: float, b: float, c: float):
    """Signed distance (first order, exact on the surface) to the ellipsoid with semi-axes
    (a, b, c) in its own frame: ``k0 (k0 - 1) / k1`` with k0 = |q / r|, k1 = |q / r^2|."""
    k0 = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
    k1 = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2 + (w / (c * c)) ** 2)
    return np.where(k1 > 1e-9, k0 * (k0 - 1.0) / np.maximum(k1, 1e-9), -min(a, b, c))


class Canvas:
    """HU, label and metal volumes on a grid; shapes are painted window by window.

    Args:
        shape: (X, Y, Z) voxels.
        spacing: (sx, sy, sz) mm.
        offset: (x, y, z) mm by which the anatomy sits off the grid's centre.
    """

    def __init__(self, shape, spacing, offset=(0.0, 0.0, 0.0)):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.axes = [
            ((np.arange(n) - (n - 1) / 2) * s - o).astype(np.float32)
            for n, s, o in zip(self.shape, self.spacing, offset)
        ]
        self.width = float(np.mean(self.spacing))  # partial-volume ramp, mm
        self.hu = np.full(self.shape, -1000.0, np.float32)
        self.labels = np.zeros(self.shape, np.int16)
        self.metal = np.zeros(self.shape, bool)
        self.lo = np.array([ax[0] for ax in self.axes], np.float64)
        self.hi = np.array([ax[-1] for ax in self.axes], np.float64)

    # --- windows ---------------------------------------------------------------------------

    def window(self, lo, hi, pad: float = 0.0):
        """Index slices of the voxels inside the anatomy box [lo - pad, hi + pad], or None."""
        sl = []
        for ax, lo_i, hi_i, s in zip(self.axes, lo, hi, self.spacing):
            i0 = max(int(math.floor((lo_i - pad - ax[0]) / s)), 0)
            i1 = min(int(math.ceil((hi_i + pad - ax[0]) / s)) + 1, len(ax))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return tuple(sl)

    def box_window(self, centre, frame, lo_local, hi_local):
        """Window of a box given in a local frame (columns u, v, w) at ``centre``."""
        corners = np.array(
            [[a, b, c] for a in (lo_local[0], hi_local[0])
             for b in (lo_local[1], hi_local[1]) for c in (lo_local[2], hi_local[2])]
        )  # fmt: skip
        world = np.asarray(centre) + corners @ np.asarray(frame).T
        return self.window(world.min(0), world.max(0))

    def grid(self, sl):
        """Anatomy coordinates of the voxels in ``sl``: (n,1,1), (1,m,1), (1,1,k) float32."""
        return (
            self.axes[0][sl[0]][:, None, None],
            self.axes[1][sl[1]][None, :, None],
            self.axes[2][sl[2]][None, None, :],
        )

    def local(self, sl, centre, frame):
        """Local coordinates (u, v, w) of the voxels in ``sl`` for a frame at ``centre``."""
        x, y, z = self.grid(sl)
        px, py, pz = x - np.float32(centre[0]), y - np.float32(centre[1]), z - np.float32(centre[2])
        f = np.asarray(frame, np.float32)
        return tuple(px * f[0, i] + py * f[1, i] + pz * f[2, i] for i in range(3))

    # --- painting --------------------------------------------------------------------------

    def paint(self, sl, d, value) -> None:
        """hu <- hu + f (value - hu) in window ``sl``, f the partial-volume fraction of d."""
        h = self.hu[sl]
        h += fraction(d, self.width) * (np.asarray(value, np.float32) - h)

    def paint_bone(self, sl, d, cortical, trabecular, shell: float, label: int = 0) -> None:
        """Bone with a cortical shell ``shell`` mm thick around trabecular bone:
        hu <- hu (1 - f_out) + cortical (f_out - f_in) + trabecular f_in, f_out the
        fraction inside the outer surface, f_in inside the shell. Voxels whose centre is
        inside (d <= 0) get ``label`` when it is non-zero."""
        f_out = fraction(d, self.width)
        f_in = fraction(d + np.asarray(shell, np.float32), self.width)
        h = self.hu[sl]
        h += (f_out - f_in) * (np.float32(cortical) - h) + f_in * (trabecular - h)
        if label:
            lab = self.labels[sl]
            lab[d <= 0] = label

    def paint_capsule(self, a, b, radius: float, value, scale_z: float = 1.0,
                      metal: bool = False, clip=None) -> None:
        """A segment a-b (anatomy mm) thickened by ``radius``; ``scale_z`` < 1 stretches the
        cross-section along z by 1/scale_z (first-order distance)."""
        a, b = np.asarray(a, float), np.asarray(b, float)
        r_z = radius / scale_z
        lo = np.minimum(a, b) - np.array([radius, radius, r_z]) - self.width
        hi = np.maximum(a, b) + np.array([radius, radius, r_z]) + self.width
        sl = self.window(lo, hi)
        if sl is None:
            return
        x, y, z = self.grid(sl)
        k = np.float32(scale_z)
        az, bz = a.copy(), b.copy()
        az[2] *= scale_z
        bz[2] *= scale_z
        d = capsule((x, y, z * k), az, bz, radius)
        if clip is not None:
            d = np.maximum(d, clip(sl))
        self.paint(sl, d, value)
        if metal:
            self.metal[sl] |= d <= 0
