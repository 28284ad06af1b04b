"""Random textures: fields fixed in the patient (tissue texture) and CT noise fixed on the
grid (private).

:class:`LatticeNoise` is a smooth random field of unit variance defined everywhere in
anatomy millimetres: i.i.d. values on a lattice of spacing ``L`` (hashed from the seed,
the feature's name and the lattice index, so any window of any grid sees the same field)
interpolated by cubic B-splines, separably (three small matrix products per window). Its
correlation length is about ``L``. Sampled on voxels larger than ``L`` the field is taken
at lattice spacing = voxel size and its amplitude scaled by ``(L / s)^1.5``: the standard
deviation of the field averaged over a voxel (the texture's partial volume).

:func:`ct_noise` is reconstruction noise: white Gaussian noise shaped in each axial slice
by the noise power spectrum of filtered back-projection, ramp-like ``NPS(f) ~ f`` times
the reconstruction kernel's roll-off, peaking at mid frequencies with a small floor at
f = 0 from aliasing (Kijewski & Judy, Phys Med Biol 1987;32:565; Riederer et al., Radiology
1978;127:123), and correlated along z by the slice sensitivity profile.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import scipy.fft

__all__ = ["LatticeNoise", "ct_noise", "stream"]


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent random stream per (seed, part of the phantom): forcing one feature
    on or off never changes the draws of another."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _bspline_weights(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights (n, 4) of the lattice points floor(t) - 1 .. floor(t) + 2."""
    f = t - np.floor(t)
    return np.stack(
        [(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6,
         f**3 / 6], axis=1,
    )  # fmt: skip


# Mean over a lattice cell of the sum of squared 1-D weights: the variance of one axis's
# interpolation of unit-variance values (the field is normalised by its cube root).
_VAR_1D = float(np.mean(np.sum(_bspline_weights(np.linspace(0, 1, 4001)[:-1]) ** 2, axis=1)))


def _hash_uniform(key: int, i, j, k) -> np.ndarray:
    """Unit-variance uniform values from integer lattice indices (lowbias32 hash)."""
    h = (
        (np.asarray(i, np.int64).astype(np.uint32) * np.uint32(0x8DA6B343))
        ^ (np.asarray(j, np.int64).astype(np.uint32) * np.uint32(0xD8163841))
        ^ (np.asarray(k, np.int64).astype(np.uint32) * np.uint32(0xCB1AB31F))
        ^ np.uint32(key & 0xFFFFFFFF)
    )
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    u = (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 2**24)
    return (u - np.float32(0.5)) * np.float32(math.sqrt(12.0))


class LatticeNoise:
    """Smooth unit-variance random field in anatomy millimetres.

    Args:
        seed, name: the field's identity (the same pair gives the same field).
        scale: lattice spacing (lx, ly, lz) in mm (a float for isotropic), about the
            correlation length.
    """

    def __init__(self, seed: int, name: str, scale):
        self.key = zlib.crc32(f"{int(seed)}/{name}".encode())
        self.scale = np.broadcast_to(np.asarray(scale, np.float64), (3,)).copy()

    def sample(self, x, y, z, voxel=(0.0, 0.0, 0.0)) -> np.ndarray:
        """The field on the grid of 1-D axes ``x, y, z`` (mm): (len(x), len(y), len(z))
        float32. ``voxel``: the voxel size, for the texture's partial volume."""
        mats, gain = [], 1.0
        for c, lat, s in zip((x, y, z), self.scale, voxel):
            spacing = max(lat, s)
            gain *= (lat / spacing) ** 0.5
            t = np.asarray(c, np.float64).ravel() / spacing
            base = np.floor(t).astype(np.int64) - 1
            i0 = int(base.min())
            n = int(base.max()) - i0 + 4
            m = np.zeros((t.size, n), np.float32)
            rows = np.arange(t.size)
            w = _bspline_weights(t)
            for q in range(4):
                m[rows, base - i0 + q] = w[:, q]
            mats.append((m, i0, n, spacing))
        (mx, ix, nx, sx), (my, iy, ny, sy), (mz, iz, nz, sz) = mats
        # The lattice index is in units of the scale actually used on each axis; a field
        # sampled at another voxel size is a different (averaged) realisation.
        ii = np.arange(ix, ix + nx)[:, None, None] + np.int64(round(sx * 1000)) * 7919
        jj = np.arange(iy, iy + ny)[None, :, None] + np.int64(round(sy * 1000)) * 104729
        kk = np.arange(iz, iz + nz)[None, None, :] + np.int64(round(sz * 1000)) * 1299709
        lattice = _hash_uniform(self.key, ii, jj, kk)  # (nx, ny, nz)
        out = np.tensordot(mx, lattice, axes=(1, 0))  # (X, ny, nz)
        out = np.tensordot(out, my, axes=(1, 1))  # (X, nz, Y)
        out = np.tensordot(out, mz, axes=(1, 1))  # (X, Y, Z)
        out *= np.float32(gain / _VAR_1D**1.5)
        return np.ascontiguousarray(out, dtype=np.float32)

    def window(self, canvas, sl) -> np.ndarray:
        """The field on the voxels of ``canvas`` in window ``sl``."""
        return self.sample(
            canvas.axes[0][sl[0]], canvas.axes[1][sl[1]], canvas.axes[2][sl[2]], canvas.spacing
        )


def ct_noise(rng: np.random.Generator, shape, spacing, std: float, peak: float) -> np.ndarray:
    """CT reconstruction noise (X, Y, Z) float32 with standard deviation ``std`` (HU).

    In-plane NPS(f) = f exp(-(f / f0)^2) + 3% of its peak (f0 = peak * sqrt(2), so the
    spectrum peaks at ``peak`` cycles/mm, capped at 0.6 of the grid's Nyquist frequency);
    along z a Gaussian slice profile of 0.6 voxel. Periodic boundaries (FFT).
    """
    sx, sy, sz = spacing
    nyquist = 0.5 / max(sx, sy)
    peak = min(peak, 0.6 * nyquist)
    f0 = peak * math.sqrt(2.0)
    white = rng.standard_normal(shape, dtype=np.float32)
    spec = scipy.fft.rfftn(white, axes=(0, 1, 2), workers=1)
    fx = np.fft.fftfreq(shape[0], d=sx).astype(np.float32)[:, None, None]
    fy = np.fft.fftfreq(shape[1], d=sy).astype(np.float32)[None, :, None]
    fz = np.fft.rfftfreq(shape[2], d=sz).astype(np.float32)[None, None, :]
    fr = np.sqrt(fx * fx + fy * fy)
    nps = fr * np.exp(-((fr / f0) ** 2)) + np.float32(0.03 * peak * math.exp(-0.5))
    sigma_z = 0.6 * sz  # mm
    slice_mtf = np.exp(-2.0 * (math.pi * sigma_z) ** 2 * fz * fz)
    spec *= np.sqrt(nps) * slice_mtf
    noise = scipy.fft.irfftn(spec, s=shape, axes=(0, 1, 2), workers=1).astype(np.float32)
    noise *= np.float32(std / (float(noise.std()) + 1e-12))
    return noise
