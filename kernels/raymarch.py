"""Fused Triton ray march: DRR forward projection and its exact adjoint (no autograd here;
``x2ct.projector.project`` wraps these launchers in custom ops).

Sampling rule (identical to ``x2ct.projector.reference``, DESIGN.md conventions): a ray
starts at the source (cone) or at its pixel centre (parallel), runs along the unit
direction ``d``, is clipped (slab test) to the support of the zero-padded trilinear
interpolant, world ``[-(n+1)/2 s, (n+1)/2 s]`` per axis, and its clipped length ``L`` is
split into ``N = ceil(L / step_mm)`` parts of ``dt = L / N``; sample ``k`` sits at
``t_near + (k + 1/2) dt`` and ``DRR = sum_k mu(p_k) dt``.

Design (KERNEL_NOTES.md techniques in brackets):

- One program marches a ``BLOCK_H x BLOCK_W`` tile of detector pixels of one view and one
  batch element [1, 3]; neighbouring rays gather neighbouring voxels, so L1/L2 serve most
  of the eight trilinear gathers. The ray setup (pixel, direction, slab clip, ``N``,
  ``dt``) runs once per ray in registers and is written with the reference's operation
  order (IEEE ``div_rn``/``sqrt_rn``, the fma chain of torch's CPU ``vector_norm``) so
  that ``N = ceil(L / step)`` agrees with the torch path (bit for bit under the
  interpreter; compiled, Triton contracts mul+add into fma, so a ray whose ``L / step``
  falls within rounding of an integer may get one sample more or less).
- Each ray is turned into an index-space line ``idx(k) = a + k b`` (voxel units), so a
  sample costs three fmas before the gathers [5]; coordinates and sums are fp32 whatever
  the volume dtype.
- The loop bound is the tile's largest ``N`` (``tl.max``); finished rays are masked [2].
- Batch is a grid axis, grid ``(tiles * chunks, V, B)``: the setup is O(1) per ray
  against O(N) gathers, batch elements share no voxels, and few views times few volumes
  is exactly the case where the GPU lacks programs, so ``B`` programs beat one program
  looping over ``B``.
- Few programs: the sample range ``[0, N)`` is cut into ``chunks`` of ``k_chunk`` samples
  run by separate programs [4]. Forward writes one fp32 partial image per chunk, summed
  afterwards (deterministic); backward needs nothing extra, it scatters with atomics anyway.
- Backward recomputes the very same samples and scatters ``grad * dt * w`` with fp32
  ``tl.atomic_add`` (relaxed) into a zeroed fp32 volume [7, 8]. Atomics make the gradient
  non-deterministic in the last bits; the torch backend is the deterministic path.
- Masked lanes never load or add: their addresses are clamped into the volume and their
  masks are off [6]. Voxel offsets are int32 unless one volume has 2**31 voxels or more
  (``INDEX_64``); the per-batch base pointer is always computed in int64 [6].
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["raymarch_forward", "raymarch_backward"]

VIEW_VECTOR_SIZE = 15
"""Floats per view: source, pixel (0,0) centre, column step, row step, beam direction (mm).
Mirrors ``x2ct.projector.geometry.VIEW_VECTOR_SIZE`` (kernels import nothing of ours)."""

_INT32_LIMIT = 2**31
"""Volumes with at least this many voxels per batch element use int64 voxel offsets."""

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_GRID_YZ = 65535  # CUDA limit on grid axes 1 (views) and 2 (batch)
_NOMINAL_TILE = 128  # rays per program assumed when choosing the sample split
_PROGRAMS_PER_SM = 8  # split the samples until about this many programs per SM (tune)
_MIN_CHUNK_SAMPLES = 64  # never split a ray into chunks shorter than this


def _configs() -> list[triton.Config]:
    """Tile shapes to autotune on a GPU; one fixed small tile under the interpreter
    (``TRITON_INTERPRET=1``), where benchmarking configs would only cost test time and a
    small tile makes tiny test detectors span several, partly filled tiles."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return [triton.Config({"BLOCK_H": 4, "BLOCK_W": 8}, num_warps=1)]
    return [
        triton.Config({"BLOCK_H": 8, "BLOCK_W": 16}, num_warps=4),
        triton.Config({"BLOCK_H": 16, "BLOCK_W": 16}, num_warps=4),
        triton.Config({"BLOCK_H": 16, "BLOCK_W": 16}, num_warps=8),
        triton.Config({"BLOCK_H": 8, "BLOCK_W": 32}, num_warps=4),
        triton.Config({"BLOCK_H": 4, "BLOCK_W": 32}, num_warps=4),
    ]


_AUTOTUNE_KEY = ["H", "W", "X", "Y", "Z", "n_chunks"]


# --- device code -------------------------------------------------------------------------


@triton.jit
def _ray_tile(
    views_ptr,  # (V, 15) fp32 view vectors, world mm
    v,  # view index
    tile,  # tile index, row-major over the (cdiv(H, BLOCK_H), cdiv(W, BLOCK_W)) tiles
    H, W,  # detector rows, columns
    half_x, half_y, half_z,  # box half extent (n + 1) / 2 * s per axis, mm
    inv_sx, inv_sy, inv_sz,  # 1 / voxel spacing, 1/mm
    c_x, c_y, c_z,  # (n - 1) / 2: index of the world origin per axis
    step_mm,  # longest sample spacing along a ray, mm
    PARALLEL: tl.constexpr,  # parallel beam (rays along the beam) instead of a cone
    BLOCK_H: tl.constexpr,  # detector rows per tile
    BLOCK_W: tl.constexpr,  # detector columns per tile (a power of two)
):
    """Set up the tile's rays as index-space lines ``a + k b`` with ``n`` samples of
    ``dt`` mm. Returns a, b (three each), n (int32), dt, the pixel offset ``i * W + j``
    and the in-detector mask, all (BLOCK_H * BLOCK_W,)."""
    r = tl.arange(0, BLOCK_H * BLOCK_W)
    tiles_w = tl.cdiv(W, BLOCK_W)
    i = (tile // tiles_w) * BLOCK_H + r // BLOCK_W  # detector row
    j = (tile % tiles_w) * BLOCK_W + r % BLOCK_W  # detector column
    on = (i < H) & (j < W)

    vp = views_ptr + v * 15
    src_x = tl.load(vp + 0)
    src_y = tl.load(vp + 1)
    src_z = tl.load(vp + 2)
    p0_x = tl.load(vp + 3)
    p0_y = tl.load(vp + 4)
    p0_z = tl.load(vp + 5)
    col_x = tl.load(vp + 6)
    col_y = tl.load(vp + 7)
    col_z = tl.load(vp + 8)
    row_x = tl.load(vp + 9)
    row_y = tl.load(vp + 10)
    row_z = tl.load(vp + 11)

    # pixel centre (pix0 + j col) + i row, in the reference's order
    fi = i.to(tl.float32)
    fj = j.to(tl.float32)
    px = p0_x + fj * col_x + fi * row_x
    py = p0_y + fj * col_y + fi * row_y
    pz = p0_z + fj * col_z + fi * row_z

    if PARALLEL:
        o_x = px
        o_y = py
        o_z = pz
        zero = tl.zeros_like(px)
        d_x = zero + tl.load(vp + 12)
        d_y = zero + tl.load(vp + 13)
        d_z = zero + tl.load(vp + 14)
    else:
        r_x = px - src_x
        r_y = py - src_y
        r_z = pz - src_z
        # |pixel - source|, accumulated by fma like torch's CPU vector_norm
        t_max = tl.sqrt_rn(tl.fma(r_z, r_z, tl.fma(r_y, r_y, r_x * r_x)))
        d_x = tl.div_rn(r_x, t_max)
        d_y = tl.div_rn(r_y, t_max)
        d_z = tl.div_rn(r_z, t_max)
        zero = tl.zeros_like(px)
        o_x = zero + src_x
        o_y = zero + src_y
        o_z = zero + src_z

    # slab test against [-half, half]; |d| < 1e-12 counts as 1e-12 (parallel to the slab)
    e_x = tl.where(tl.abs(d_x) < 1e-12, 1e-12, d_x)
    e_y = tl.where(tl.abs(d_y) < 1e-12, 1e-12, d_y)
    e_z = tl.where(tl.abs(d_z) < 1e-12, 1e-12, d_z)
    t1_x = tl.div_rn(-half_x - o_x, e_x)
    t2_x = tl.div_rn(half_x - o_x, e_x)
    t1_y = tl.div_rn(-half_y - o_y, e_y)
    t2_y = tl.div_rn(half_y - o_y, e_y)
    t1_z = tl.div_rn(-half_z - o_z, e_z)
    t2_z = tl.div_rn(half_z - o_z, e_z)
    t_near = tl.maximum(
        tl.maximum(tl.minimum(t1_x, t2_x), tl.minimum(t1_y, t2_y)), tl.minimum(t1_z, t2_z)
    )
    t_far = tl.minimum(
        tl.minimum(tl.maximum(t1_x, t2_x), tl.maximum(t1_y, t2_y)), tl.maximum(t1_z, t2_z)
    )
    if not PARALLEL:
        t_near = tl.maximum(t_near, 0.0)  # nothing behind the source
        t_far = tl.minimum(t_far, t_max)  # nor beyond the detector
    length = tl.maximum(t_far - t_near, 0.0)  # L, mm
    n_f = tl.where(on, tl.ceil(tl.div_rn(length, step_mm)), 0.0)  # N = ceil(L / step)
    dt = tl.where(n_f > 0.0, tl.div_rn(length, tl.maximum(n_f, 1.0)), 0.0)  # dt = L / N

    # index coordinate of sample k: (o + (t_near + (k + 1/2) dt) d) / s + (n - 1) / 2
    live = n_f > 0.0  # rays with no sample get a = b = 0 so that dead lanes stay finite
    t0 = t_near + 0.5 * dt
    a_x = tl.where(live, (o_x + t0 * d_x) * inv_sx + c_x, 0.0)
    a_y = tl.where(live, (o_y + t0 * d_y) * inv_sy + c_y, 0.0)
    a_z = tl.where(live, (o_z + t0 * d_z) * inv_sz + c_z, 0.0)
    b_x = tl.where(live, (dt * d_x) * inv_sx, 0.0)
    b_y = tl.where(live, (dt * d_y) * inv_sy, 0.0)
    b_z = tl.where(live, (dt * d_z) * inv_sz, 0.0)
    return a_x, a_y, a_z, b_x, b_y, b_z, n_f.to(tl.int32), dt, i * W + j, on


@triton.jit
def _taps(
    f,  # (R,) fp32 index coordinate along one axis
    n,  # voxels along the axis
    stride,  # elements between neighbours along the axis
    live,  # (R,) lanes that hold a real sample
    INDEX_64: tl.constexpr,  # int64 offsets (volumes of 2**31 voxels or more)
):
    """Linear interpolation taps along one axis: offsets of the two neighbouring voxels
    (clamped into the volume), their weights, and whether each neighbour exists (a
    neighbour outside [0, n-1] counts as 0: it is masked, never read)."""
    f0 = tl.floor(f)
    w1 = f - f0
    w0 = 1.0 - w1
    i0 = f0.to(tl.int32)
    i1 = i0 + 1
    m0 = live & (i0 >= 0) & (i0 < n)
    m1 = live & (i1 >= 0) & (i1 < n)
    i0 = tl.minimum(tl.maximum(i0, 0), n - 1)
    i1 = tl.minimum(tl.maximum(i1, 0), n - 1)
    if INDEX_64:
        i0 = i0.to(tl.int64)
        i1 = i1.to(tl.int64)
    return i0 * stride, i1 * stride, w0, w1, m0, m1


@triton.autotune(configs=_configs(), key=_AUTOTUNE_KEY)
@triton.jit
def _raymarch_fwd_kernel(
    vol_ptr,  # (B, X, Y, Z) volume, fp32/bf16/fp16, contiguous
    views_ptr,  # (V, 15) fp32 view vectors, world mm
    out_ptr,  # (n_chunks, B, V, H, W) fp32 partial line integrals, one image per chunk
    B, V, H, W,  # batch, views, detector rows, detector columns
    X, Y, Z,  # volume size in voxels
    XYZ, YZ,  # X*Y*Z and Y*Z: strides of batch and X
    half_x, half_y, half_z,  # box half extent (n + 1) / 2 * s per axis, mm
    inv_sx, inv_sy, inv_sz,  # 1 / voxel spacing, 1/mm
    c_x, c_y, c_z,  # (n - 1) / 2 per axis
    step_mm,  # longest sample spacing along a ray, mm
    k_chunk,  # samples per chunk
    n_chunks,  # chunks per ray (the last one runs to the tile's last sample)
    PARALLEL: tl.constexpr,  # parallel beam instead of a cone beam
    INDEX_64: tl.constexpr,  # int64 voxel offsets
    BLOCK_H: tl.constexpr,  # detector rows per program
    BLOCK_W: tl.constexpr,  # detector columns per program (a power of two)
):
    """DRR[b, v, i, j] (the part from samples of one chunk) = sum_k mu(p_k) dt."""
    pid = tl.program_id(0)
    v = tl.program_id(1)
    b = tl.program_id(2)
    tiles = tl.cdiv(H, BLOCK_H) * tl.cdiv(W, BLOCK_W)
    chunk = pid // tiles  # chunk-major: programs running together march the same depth
    tile = pid % tiles

    a_x, a_y, a_z, b_x, b_y, b_z, n, dt, pix, on = _ray_tile(
        views_ptr, v, tile, H, W, half_x, half_y, half_z, inv_sx, inv_sy, inv_sz,
        c_x, c_y, c_z, step_mm, PARALLEL, BLOCK_H, BLOCK_W,
    )
    n_max = tl.max(n, axis=0)  # the tile's loop bound
    k_lo = chunk * k_chunk
    k_hi = tl.where(chunk == n_chunks - 1, n_max, tl.minimum(k_lo + k_chunk, n_max))

    vol = vol_ptr + b.to(tl.int64) * XYZ  # this batch element's volume
    acc = tl.zeros([BLOCK_H * BLOCK_W], dtype=tl.float32)  # sum_k mu(p_k)
    for k in range(k_lo, k_hi):
        live = k < n
        fk = tl.cast(k, tl.float32)
        x0, x1, wx0, wx1, mx0, mx1 = _taps(a_x + fk * b_x, X, YZ, live, INDEX_64)
        y0, y1, wy0, wy1, my0, my1 = _taps(a_y + fk * b_y, Y, Z, live, INDEX_64)
        z0, z1, wz0, wz1, mz0, mz1 = _taps(a_z + fk * b_z, Z, 1, live, INDEX_64)
        p00 = vol + x0 + y0
        p01 = vol + x0 + y1
        p10 = vol + x1 + y0
        p11 = vol + x1 + y1
        m00 = mx0 & my0
        m01 = mx0 & my1
        m10 = mx1 & my0
        m11 = mx1 & my1
        v000 = tl.load(p00 + z0, mask=m00 & mz0, other=0.0).to(tl.float32)
        v001 = tl.load(p00 + z1, mask=m00 & mz1, other=0.0).to(tl.float32)
        v010 = tl.load(p01 + z0, mask=m01 & mz0, other=0.0).to(tl.float32)
        v011 = tl.load(p01 + z1, mask=m01 & mz1, other=0.0).to(tl.float32)
        v100 = tl.load(p10 + z0, mask=m10 & mz0, other=0.0).to(tl.float32)
        v101 = tl.load(p10 + z1, mask=m10 & mz1, other=0.0).to(tl.float32)
        v110 = tl.load(p11 + z0, mask=m11 & mz0, other=0.0).to(tl.float32)
        v111 = tl.load(p11 + z1, mask=m11 & mz1, other=0.0).to(tl.float32)
        # trilinear: along z, then y, then x
        v00 = wz0 * v000 + wz1 * v001
        v01 = wz0 * v010 + wz1 * v011
        v10 = wz0 * v100 + wz1 * v101
        v11 = wz0 * v110 + wz1 * v111
        acc += wx0 * (wy0 * v00 + wy1 * v01) + wx1 * (wy0 * v10 + wy1 * v11)

    out = out_ptr + ((chunk * B + b) * V + v).to(tl.int64) * (H * W)
    tl.store(out + pix, acc * dt, mask=on)


@triton.autotune(configs=_configs(), key=_AUTOTUNE_KEY, reset_to_zero=["grad_vol_ptr"])
@triton.jit
def _raymarch_bwd_kernel(
    grad_ptr,  # (B, V, H, W) upstream gradient, fp32/bf16/fp16, contiguous
    views_ptr,  # (V, 15) fp32 view vectors, world mm
    grad_vol_ptr,  # (B, X, Y, Z) fp32 gradient volume, zeroed, accumulated by atomics
    B, V, H, W,  # batch, views, detector rows, detector columns
    X, Y, Z,  # volume size in voxels
    XYZ, YZ,  # X*Y*Z and Y*Z: strides of batch and X
    half_x, half_y, half_z,  # box half extent (n + 1) / 2 * s per axis, mm
    inv_sx, inv_sy, inv_sz,  # 1 / voxel spacing, 1/mm
    c_x, c_y, c_z,  # (n - 1) / 2 per axis
    step_mm,  # longest sample spacing along a ray, mm
    k_chunk,  # samples per chunk
    n_chunks,  # chunks per ray (the last one runs to the tile's last sample)
    PARALLEL: tl.constexpr,  # parallel beam instead of a cone beam
    INDEX_64: tl.constexpr,  # int64 voxel offsets
    BLOCK_H: tl.constexpr,  # detector rows per program
    BLOCK_W: tl.constexpr,  # detector columns per program (a power of two)
):
    """grad_mu[b, voxel] += sum over rays and samples of grad[b, v, i, j] * dt * w, with
    w the trilinear weight of the voxel at sample k: the adjoint of the forward kernel."""
    pid = tl.program_id(0)
    v = tl.program_id(1)
    b = tl.program_id(2)
    tiles = tl.cdiv(H, BLOCK_H) * tl.cdiv(W, BLOCK_W)
    chunk = pid // tiles
    tile = pid % tiles

    a_x, a_y, a_z, b_x, b_y, b_z, n, dt, pix, on = _ray_tile(
        views_ptr, v, tile, H, W, half_x, half_y, half_z, inv_sx, inv_sy, inv_sz,
        c_x, c_y, c_z, step_mm, PARALLEL, BLOCK_H, BLOCK_W,
    )
    n_max = tl.max(n, axis=0)
    k_lo = chunk * k_chunk
    k_hi = tl.where(chunk == n_chunks - 1, n_max, tl.minimum(k_lo + k_chunk, n_max))

    g_row = grad_ptr + (b * V + v).to(tl.int64) * (H * W)
    g = tl.load(g_row + pix, mask=on, other=0.0).to(tl.float32) * dt  # grad * dt per ray
    gvol = grad_vol_ptr + b.to(tl.int64) * XYZ
    for k in range(k_lo, k_hi):
        live = k < n
        fk = tl.cast(k, tl.float32)
        x0, x1, wx0, wx1, mx0, mx1 = _taps(a_x + fk * b_x, X, YZ, live, INDEX_64)
        y0, y1, wy0, wy1, my0, my1 = _taps(a_y + fk * b_y, Y, Z, live, INDEX_64)
        z0, z1, wz0, wz1, mz0, mz1 = _taps(a_z + fk * b_z, Z, 1, live, INDEX_64)
        g0 = g * wx0
        g1 = g * wx1
        g00 = g0 * wy0
        g01 = g0 * wy1
        g10 = g1 * wy0
        g11 = g1 * wy1
        p00 = gvol + x0 + y0
        p01 = gvol + x0 + y1
        p10 = gvol + x1 + y0
        p11 = gvol + x1 + y1
        m00 = mx0 & my0
        m01 = mx0 & my1
        m10 = mx1 & my0
        m11 = mx1 & my1
        tl.atomic_add(p00 + z0, g00 * wz0, mask=m00 & mz0, sem="relaxed")
        tl.atomic_add(p00 + z1, g00 * wz1, mask=m00 & mz1, sem="relaxed")
        tl.atomic_add(p01 + z0, g01 * wz0, mask=m01 & mz0, sem="relaxed")
        tl.atomic_add(p01 + z1, g01 * wz1, mask=m01 & mz1, sem="relaxed")
        tl.atomic_add(p10 + z0, g10 * wz0, mask=m10 & mz0, sem="relaxed")
        tl.atomic_add(p10 + z1, g10 * wz1, mask=m10 & mz1, sem="relaxed")
        tl.atomic_add(p11 + z0, g11 * wz0, mask=m11 & mz0, sem="relaxed")
        tl.atomic_add(p11 + z1, g11 * wz1, mask=m11 & mz1, sem="relaxed")


# --- launchers ---------------------------------------------------------------------------


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check_device(name: str, x: torch.Tensor) -> None:
    if not (x.is_cuda or _interpreting()):
        raise ValueError(
            f"{name} must be a CUDA tensor for the Triton kernels, got one on {x.device} "
            "(set TRITON_INTERPRET=1 to run them on the CPU, slowly, for tests)"
        )


def _check_float(name: str, x, ndim: int, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != ndim:
        raise ValueError(f"{name} must be a {what} tensor, got {_shape(x)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    _check_device(name, x)


def _shape(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"


def _check_views(views, device: torch.device) -> torch.Tensor:
    if (
        not isinstance(views, torch.Tensor)
        or views.ndim != 2
        or views.shape[1] != VIEW_VECTOR_SIZE
    ):
        raise ValueError(f"views must be a (V, {VIEW_VECTOR_SIZE}) tensor, got {_shape(views)}")
    if not views.is_floating_point():
        raise ValueError(f"views must be floating point, got {views.dtype}")
    if views.shape[0] > _MAX_GRID_YZ:
        raise ValueError(f"at most {_MAX_GRID_YZ} views per call, got {views.shape[0]}")
    return views.to(device=device, dtype=torch.float32).contiguous()


def _check_ints(name: str, values, count: int) -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != count or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in values
    ):
        raise ValueError(f"{name} must be {count} positive integers, got {values!r}")
    return values


def _check_geometry(spacing, step_mm) -> tuple[tuple[float, float, float], float]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive finite mm values, got {spacing!r}")
    step_mm = float(step_mm)
    if not (math.isfinite(step_mm) and step_mm > 0):
        raise ValueError(f"step_mm must be a positive finite number of mm, got {step_mm!r}")
    return spacing, step_mm


def _chunks(volume_shape, spacing, step_mm, rays, device, splits) -> tuple[int, int]:
    """Split of each ray's samples over programs: (n_chunks, k_chunk).

    A ray has at most ``ceil(diagonal / step)`` samples (its clipped length cannot exceed
    the box diagonal); on CUDA, when the grid would have fewer than ``_PROGRAMS_PER_SM``
    programs per SM, cut that range into up to as many chunks as make up the difference,
    none shorter than ``_MIN_CHUNK_SAMPLES``. The last chunk always runs to the tile's
    last sample, so the split is exact whatever the bound.
    """
    diagonal = math.sqrt(sum(((n + 1) * s) ** 2 for n, s in zip(volume_shape, spacing)))
    max_samples = math.ceil(diagonal / step_mm) + 1
    if splits is None:
        if device.type != "cuda":
            splits = 1
        else:
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            programs = max(1, rays // _NOMINAL_TILE)
            want = math.ceil(_PROGRAMS_PER_SM * sms / programs)
            splits = max(1, min(want, max_samples // _MIN_CHUNK_SAMPLES))
    elif not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
        raise ValueError(f"splits must be a positive integer or None, got {splits!r}")
    n_chunks = max(1, min(splits, max_samples))
    return n_chunks, math.ceil(max_samples / n_chunks)


def _scalars(volume_shape, spacing) -> list[float]:
    half = [0.5 * (n + 1) * s for n, s in zip(volume_shape, spacing)]
    inv = [1.0 / s for s in spacing]
    centre = [0.5 * (n - 1) for n in volume_shape]
    return [*half, *inv, *centre]


def _grid(height: int, width: int, n_chunks: int, num_views: int, batch: int):
    return lambda meta: (
        triton.cdiv(height, meta["BLOCK_H"]) * triton.cdiv(width, meta["BLOCK_W"]) * n_chunks,
        num_views,
        batch,
    )


def raymarch_forward(
    volume: torch.Tensor,
    views: torch.Tensor,
    detector_shape: tuple[int, int],
    spacing: tuple[float, float, float],
    step_mm: float,
    parallel: bool,
    *,
    splits: int | None = None,
) -> torch.Tensor:
    """Line integrals of ``volume`` along every ray (DRRs).

    Args:
        volume: (B, X, Y, Z) attenuation in 1/mm, float32/bfloat16/float16, contiguous, on
            CUDA (or on the CPU under ``TRITON_INTERPRET=1``).
        views: (V, 15) view vectors (``x2ct.projector.view_vectors``), world mm; cast to
            float32 on the volume's device.
        detector_shape: (H, W) pixels.
        spacing: voxel size (sx, sy, sz), mm.
        step_mm: longest sample spacing along a ray, mm.
        parallel: parallel beam instead of a cone beam.
        splits: programs per ray along its samples (None: chosen from the grid size and
            the GPU's SM count; 1 off CUDA). Any value gives the same samples.
    Returns:
        (B, V, H, W) float32 line integrals.
    """
    _check_float("volume", volume, 4, "(B, X, Y, Z)")
    views = _check_views(views, volume.device)
    height, width = _check_ints("detector_shape", detector_shape, 2)
    spacing, step_mm = _check_geometry(spacing, step_mm)
    batch, *shape = volume.shape
    _check_ints("volume spatial shape", shape, 3)
    if batch > _MAX_GRID_YZ:
        raise ValueError(f"at most {_MAX_GRID_YZ} volumes per call, got {batch}")
    num_views = views.shape[0]
    n_chunks, k_chunk = _chunks(
        shape, spacing, step_mm, height * width * num_views * batch, volume.device, splits
    )
    out = torch.empty(
        n_chunks, batch, num_views, height, width, dtype=torch.float32, device=volume.device
    )
    if out.numel() == 0:
        return out.new_zeros(batch, num_views, height, width)
    x, y, z = shape
    _raymarch_fwd_kernel[_grid(height, width, n_chunks, num_views, batch)](
        volume, views, out,
        batch, num_views, height, width,
        x, y, z, x * y * z, y * z,
        *_scalars(shape, spacing),
        step_mm, k_chunk, n_chunks,
        PARALLEL=bool(parallel),
        INDEX_64=x * y * z >= _INT32_LIMIT,
    )
    return out[0] if n_chunks == 1 else out.sum(0)


def raymarch_backward(
    grad: torch.Tensor,
    volume_shape: tuple[int, int, int],
    views: torch.Tensor,
    spacing: tuple[float, float, float],
    step_mm: float,
    parallel: bool,
    *,
    splits: int | None = None,
) -> torch.Tensor:
    """The exact adjoint of :func:`raymarch_forward`: (B, V, H, W) -> (B, X, Y, Z).

    Each voxel receives the sum over rays and samples of ``grad * dt`` times its trilinear
    weight at the very same sample points. Accumulated with fp32 atomics: the result can
    differ from run to run in the last bits.

    Args:
        grad: (B, V, H, W) upstream gradient, float32/bfloat16/float16, contiguous.
        volume_shape: (X, Y, Z) voxels.
        views, spacing, step_mm, parallel, splits: as for :func:`raymarch_forward`.
    Returns:
        (B, X, Y, Z) float32.
    """
    _check_float("grad", grad, 4, "(B, V, H, W)")
    views = _check_views(views, grad.device)
    shape = _check_ints("volume_shape", volume_shape, 3)
    spacing, step_mm = _check_geometry(spacing, step_mm)
    batch, num_views, height, width = grad.shape
    if views.shape[0] != num_views:
        raise ValueError(f"grad has {num_views} views but views has {views.shape[0]} rows")
    if batch > _MAX_GRID_YZ:
        raise ValueError(f"at most {_MAX_GRID_YZ} volumes per call, got {batch}")
    out = torch.zeros(batch, *shape, dtype=torch.float32, device=grad.device)
    if grad.numel() == 0:
        return out
    n_chunks, k_chunk = _chunks(
        shape, spacing, step_mm, height * width * num_views * batch, grad.device, splits
    )
    x, y, z = shape
    _raymarch_bwd_kernel[_grid(height, width, n_chunks, num_views, batch)](
        grad, views, out,
        batch, num_views, height, width,
        x, y, z, x * y * z, y * z,
        *_scalars(shape, spacing),
        step_mm, k_chunk, n_chunks,
        PARALLEL=bool(parallel),
        INDEX_64=x * y * z >= _INT32_LIMIT,
    )
    return out
