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


def _chunks(num_rays: int, max_samples: int, channels: int, element_size: int, max_bytes: int):
    # Per sample: 3 grid coordinates plus ``channels`` sampled values (and one as many
    # again for grid_sample's own temporaries).
    per_ray = max(1, max_samples) * (3 + 2 * channels) * element_size
    size = max(1, min(num_rays, max_bytes // per_ray))
    return range(0, num_rays, size), size


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

    Rays are processed in chunks so that temporaries stay under ``max_chunk_bytes``.
    The computation runs in ``mu``'s dtype if it is float32/float64, else float32.
    """
    work = mu.dtype if mu.dtype in (torch.float32, torch.float64) else torch.float32
    batch, volume_shape = mu.shape[0], tuple(mu.shape[1:])
    views = views.to(device=mu.device, dtype=work)
    origin, direction, t_near, n, dt = ray_setup(
        views, detector_shape, volume_shape, spacing, step_mm, parallel
    )
    g0, gk = _grid_params(origin, direction, t_near, dt, volume_shape, spacing)
    volume = mu.to(work)[None]  # (1, B, X, Y, Z): batch as channels, one grid for all
    num_views, num_rays = n.shape
    out = torch.zeros(batch, num_views, num_rays, dtype=work, device=mu.device)
    max_n = int(n.max()) if n.numel() else 0
    if max_n == 0:
        return out.view(batch, num_views, *detector_shape)
    starts, size = _chunks(num_rays, max_n, batch, volume.element_size(), max_chunk_bytes)
    for v in range(num_views):
        for start in starts:
            sl = slice(start, start + size)
            m = int(n[v, sl].max())
            if m == 0:
                continue
            k = torch.arange(m, dtype=work, device=mu.device)
            weight = dt[v, sl, None] * (k[None, :] < n[v, sl, None])  # (r, m)
            grid = torch.addcmul(g0[v, sl, None, :], k[None, :, None], gk[v, sl, None, :])
            samples = F.grid_sample(
                volume, grid[None, None], mode="bilinear", padding_mode="zeros",
                align_corners=True,
            )  # (1, B, 1, r, m)
            out[:, v, sl] = (samples[0, :, 0] * weight).sum(-1)
    return out.view(batch, num_views, *detector_shape)


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

    Each chunk scatters ``grad * dt`` with the trilinear weights of the very same sample
    points (grid_sample's own backward), so ``<A x, y> = <x, A^T y>`` to rounding.
    """
    work = grad.dtype if grad.dtype in (torch.float32, torch.float64) else torch.float32
    batch, num_views, height, width = grad.shape
    views = views.to(device=grad.device, dtype=work)
    origin, direction, t_near, n, dt = ray_setup(
        views, (height, width), volume_shape, spacing, step_mm, parallel
    )
    g0, gk = _grid_params(origin, direction, t_near, dt, volume_shape, spacing)
    grad = grad.to(work).reshape(batch, num_views, height * width)
    out = torch.zeros(1, batch, *volume_shape, dtype=work, device=grad.device)
    max_n = int(n.max()) if n.numel() else 0
    if max_n == 0:
        return out[0]
    element = torch.finfo(work).bits // 8
    starts, size = _chunks(height * width, max_n, batch, element, max_chunk_bytes)
    for v in range(num_views):
        for start in starts:
            sl = slice(start, start + size)
            m = int(n[v, sl].max())
            if m == 0:
                continue
            k = torch.arange(m, dtype=work, device=grad.device)
            weight = dt[v, sl, None] * (k[None, :] < n[v, sl, None])  # (r, m)
            grid = torch.addcmul(g0[v, sl, None, :], k[None, :, None], gk[v, sl, None, :])
            upstream = (grad[:, v, sl, None] * weight)[None, :, None]  # (1, B, 1, r, m)
            # aten's grid sampler backward with output_mask=(input, not grid).
            grad_input, _ = torch.ops.aten.grid_sampler_3d_backward(
                upstream, out, grid[None, None], 0, 0, True, [True, False]
            )
            out += grad_input
    return out[0]
