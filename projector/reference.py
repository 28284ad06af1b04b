"""The PyTorch ray march: the reference the Triton kernels are tested against, and the
CPU path.

Both backends sample the same points with the same weights (DESIGN.md conventions):

1. Each ray starts at the source (cone beam) or at its pixel (parallel beam) and runs along
   a unit direction ``d`` in world mm.
2. It is clipped (slab test) to the box where the zero-padded trilinear interpolant can be
   non-zero: voxel index -1 to n along each axis, i.e. world [-(n+1)/2 s, (n+1)/2 s].
3. The clipped length ``L`` is split into ``N = ceil(L / (step * min(spacing)))`` equal
   parts of ``dt = L / N`` mm; samples sit at the midpoints ``t_near + (k + 1/2) dt``.
4. ``DRR = sum_k mu(p_k) dt`` with ``mu`` interpolated trilinearly between voxel centres
   and 0 outside (``grid_sample(..., align_corners=True, padding_mode="zeros")``).

A uniform block therefore integrates to its exact chord length, and the adjoint is exact:
backward scatters the same weights to the same points.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ray_setup", "forward_reference", "backward_reference", "DEFAULT_MAX_CHUNK_BYTES"]

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
"""Upper bound for the torch path's per-chunk temporaries (sample grid and values)."""

_EPS = 1e-12  # a direction component below this counts as parallel to the slab


def ray_setup(
    views: torch.Tensor,
    detector_shape: tuple[int, int],
    volume_shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    step_mm: float,
    parallel: bool,
):
    """Rays of every view and pixel, clipped to the volume's support.

    Args:
        views: (V, 15) from :func:`x2ct.projector.geometry.view_vectors`.
    Returns:
        origin (V, R, 3) and unit direction (V, R, 3) in world mm, ``t_near`` (V, R) in mm,
        number of samples ``n`` (V, R) int64 and sample length ``dt`` (V, R) in mm,
        with ``R = H * W`` in row-major pixel order.
    """
    height, width = detector_shape
    dtype, device = views.dtype, views.device
    source, pix0, col, row, beam = views.view(-1, 5, 3).unbind(1)  # each (V, 3)
    jj = torch.arange(width, dtype=dtype, device=device)
    ii = torch.arange(height, dtype=dtype, device=device)
    # (V, H, W, 3) pixel centres
    pixel = (
        pix0[:, None, None, :]
        + jj[None, None, :, None] * col[:, None, None, :]
        + ii[None, :, None, None] * row[:, None, None, :]
    ).reshape(views.shape[0], height * width, 3)
    if parallel:
        origin = pixel
        direction = beam[:, None, :].expand_as(pixel)
        t_max = torch.full(pixel.shape[:2], math.inf, dtype=dtype, device=device)
    else:
        ray = pixel - source[:, None, :]
        t_max = torch.linalg.vector_norm(ray, dim=-1)  # source to pixel, mm
        direction = ray / t_max[..., None]
        origin = source[:, None, :].expand_as(pixel)

    half = torch.tensor(
        [0.5 * (n + 1) * s for n, s in zip(volume_shape, spacing)], dtype=dtype, device=device
    )
    d_safe = torch.where(direction.abs() < _EPS, torch.full_like(direction, _EPS), direction)
    t1 = (-half - origin) / d_safe
    t2 = (half - origin) / d_safe
    t_near = torch.minimum(t1, t2).amax(-1)
    t_far = torch.maximum(t1, t2).amin(-1)
    if not parallel:
        t_near = t_near.clamp(min=0.0)
        t_far = torch.minimum(t_far, t_max)
    length = (t_far - t_near).clamp(min=0.0)
    n = torch.ceil(length / step_mm)
    dt = torch.where(n > 0, length / n.clamp(min=1.0), torch.zeros_like(length))
    return origin, direction, t_near, n.to(torch.int64), dt


def _grid_params(origin, direction, t_near, dt, volume_shape, spacing):
    """Rays in grid_sample's normalised coordinates (align_corners=True), in its axis order
    (z, y, x): the sample k of a ray is at ``g0 + k * gk``."""
    dtype, device = origin.dtype, origin.device
    n = torch.tensor(volume_shape, dtype=dtype, device=device)
    s = torch.tensor(spacing, dtype=dtype, device=device)
    # world -> index: p / s + (n - 1) / 2 ; index -> normalised: 2 i / (n - 1) - 1
    scale = 2.0 / (s * (n - 1))
    first = origin + (t_near + 0.5 * dt)[..., None] * direction
    g0 = first * scale
    gk = (dt[..., None] * direction) * scale
    return g0.flip(-1), gk.flip(-1)


def _ray_batches(n: torch.Tensor, budget: int, waste: float = 0.2, least: int = 2**16):
    """Split rays into batches of similar length: (indices, samples per ray) pairs.

    Rays are sorted by sample count, longest first; a batch holds at most ``budget``
    samples (at least one ray) and, once it holds ``least`` samples, only rays within
    ``waste`` of its longest, so short rays are not marched as far as long ones while
    batches stay large enough to amortise each call. Rays that miss the volume are skipped.
    """
    order = torch.argsort(n, descending=True, stable=True)
    counts = n[order].cpu().numpy()
    ascending = counts[::-1]
    batches, start, total = [], 0, int((counts > 0).sum())
    while start < total:
        m = int(counts[start])
        # first position whose count falls below (1 - waste) m
        similar = len(counts) - int(np.searchsorted(ascending, (1 - waste) * m, side="left"))
        stop = min(total, start + max(1, budget // m), max(similar, start + least // m, start + 1))
        batches.append((order[start:stop], m))
        start = stop
    return batches


def _samples_per_batch(channels: int, element_size: int, max_bytes: int) -> int:
    # Per sample: 3 grid coordinates, a weight, and ``channels`` sampled values (and as
    # many again for grid_sample's own temporaries). Batches of about a million samples
    # keep the temporaries near the cache and the loop overhead small.
    per_sample = (4 + 2 * channels) * element_size
    return max(1, min(2**20, max_bytes // per_sample))


def _march(g0, gk, dt, n, m):
    """Sample points (r, m, 3) and weights (r, m) of a batch of rays with ``m`` samples."""
    k = torch.arange(m, dtype=g0.dtype, device=g0.device)
    grid = torch.addcmul(g0[:, None, :], k[None, :, None], gk[:, None, :])
    weight = dt[:, None] * (k[None, :] < n[:, None])
    return grid, weight


def _flat_rays(views, detector_shape, volume_shape, spacing, step_mm, parallel):
    """Every ray of every view in one list: grid start and step (V*R, 3), dt and n (V*R)."""
    origin, direction, t_near, n, dt = ray_setup(
        views, detector_shape, volume_shape, spacing, step_mm, parallel
    )
    g0, gk = _grid_params(origin, direction, t_near, dt, volume_shape, spacing)
    return g0.reshape(-1, 3), gk.reshape(-1, 3), dt.reshape(-1), n.reshape(-1)


def forward_reference(
    mu: torch.Tensor,
    views: torch.Tensor,
    detector_shape: tuple[int, int],
    spacing: tuple[float, float, float],
    step_mm: float,
    parallel: bool,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> torch.Tensor:
    """Line integrals of ``mu`` (B, X, Y, Z) along every ray: (B, V, H, W).

    Rays are marched in batches of similar length whose temporaries stay under
    ``max_chunk_bytes``. Runs in ``mu``'s dtype if float32/float64, else float32.
    """
    work = mu.dtype if mu.dtype in (torch.float32, torch.float64) else torch.float32
    batch, volume_shape = mu.shape[0], tuple(mu.shape[1:])
    views = views.to(device=mu.device, dtype=work)
    g0, gk, dt, n = _flat_rays(views, detector_shape, volume_shape, spacing, step_mm, parallel)
    volume = mu.to(work)[None]  # (1, B, X, Y, Z): the batch as channels, one grid for all
    out = torch.zeros(batch, n.numel(), dtype=work, device=mu.device)
    budget = _samples_per_batch(batch, volume.element_size(), max_chunk_bytes)
    # grid_sample parallelises over its batch dimension only: split each ray batch into
    # one part per thread, with the volume expanded (not copied) to match.
    parts = max(1, torch.get_num_threads()) if mu.device.type == "cpu" else 1
    for idx, m in _ray_batches(n, budget):
        grid, weight = _march(g0[idx], gk[idx], dt[idx], n[idx], m)
        r = idx.numel()
        p = parts if r >= 2 * parts else 1
        pad = (-r) % p
        if pad:
            grid = torch.cat([grid, grid[:pad]])
        samples = F.grid_sample(
            volume.expand(p, -1, -1, -1, -1), grid.view(p, 1, (r + pad) // p, m, 3),
            mode="bilinear", padding_mode="zeros", align_corners=True,
        )  # (p, B, 1, r / p, m)
        samples = samples.permute(1, 0, 2, 3, 4).reshape(batch, r + pad, m)[:, :r]
        out[:, idx] = (samples * weight).sum(-1)
    return out.view(batch, views.shape[0], *detector_shape)


def _trilinear_scatter(target, grid, values, volume_shape):
    """Adjoint of trilinear sampling: add ``values`` (B, S) at normalised points ``grid``
    (S, 3), in grid_sample's (z, y, x) order, into ``target`` (B, X*Y*Z) with zero
    padding; the same arithmetic as ``grid_sample(align_corners=True)``."""
    sizes = volume_shape[::-1]  # (Z, Y, X) to match the grid's axis order
    strides = (1, volume_shape[2], volume_shape[1] * volume_shape[2])
    index = []
    for axis, (size, stride) in enumerate(zip(sizes, strides)):
        x = (grid[:, axis] + 1) * 0.5 * (size - 1)  # unnormalise, align_corners=True
        x0 = torch.floor(x)
        frac = x - x0
        i0 = x0.to(torch.int64)
        pair = []
        for i, w in ((i0, 1 - frac), (i0 + 1, frac)):
            inside = (i >= 0) & (i < size)
            pair.append((i.clamp(0, size - 1) * stride, w * inside))
        index.append(pair)
    for iz, wz in index[0]:
        for iy, wy in index[1]:
            izy, wzy = iz + iy, wz * wy
            for ix, wx in index[2]:
                target.index_add_(1, izy + ix, values * (wzy * wx))


def backward_reference(
    grad: torch.Tensor,
    volume_shape: tuple[int, int, int],
    views: torch.Tensor,
    spacing: tuple[float, float, float],
    step_mm: float,
    parallel: bool,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> torch.Tensor:
    """The exact adjoint of :func:`forward_reference`: (B, V, H, W) -> (B, X, Y, Z).

    Each ray scatters ``grad * dt`` with the trilinear weights of the very same sample
    points, so ``<A x, y> = <x, A^T y>`` to rounding. Deterministic (no atomics).
    """
    work = grad.dtype if grad.dtype in (torch.float32, torch.float64) else torch.float32
    batch, num_views, height, width = grad.shape
    views = views.to(device=grad.device, dtype=work)
    g0, gk, dt, n = _flat_rays(views, (height, width), volume_shape, spacing, step_mm, parallel)
    grad = grad.to(work).reshape(batch, -1)
    out = torch.zeros(batch, math.prod(volume_shape), dtype=work, device=grad.device)
    element = torch.finfo(work).bits // 8
    # The scatter holds 8 corner indices and weights per sample: a smaller batch.
    budget = max(1, _samples_per_batch(batch, element, max_chunk_bytes) // 8)
    for idx, m in _ray_batches(n, budget):
        grid, weight = _march(g0[idx], gk[idx], dt[idx], n[idx], m)
        values = (grad[:, idx, None] * weight).reshape(batch, -1)  # (B, r * m)
        _trilinear_scatter(out, grid.reshape(-1, 3), values, volume_shape)
    return out.view(batch, *volume_shape)
