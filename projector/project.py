"""``project`` and ``backproject``: the public, differentiable projector.

Both are registered as ``torch.library`` custom ops (``x2ct::project`` and
``x2ct::backproject``) with fake implementations, so ``torch.compile`` traces around them,
and each is the other's backward (the projector is linear in ``mu``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch

from x2ct import kernels
from x2ct.projector.geometry import Geometry, view_vectors
from x2ct.projector.reference import (
    DEFAULT_MAX_CHUNK_BYTES,
    backward_reference,
    forward_reference,
)

__all__ = [
    "BACKENDS",
    "backproject",
    "backproject_views",
    "project",
    "project_views",
    "resolve_backend",
    "use_triton",
]

logger = logging.getLogger("x2ct.projector")

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV = "X2CT_PROJECTOR_BACKEND"
"""Set to ``torch`` to force the reference path wherever ``backend="auto"``."""

_announced: set[tuple[str, str]] = set()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: torch.Tensor) -> bool:
    """The one predicate that decides ``backend="auto"``: Triton is installed, not forced
    off by ``X2CT_PROJECTOR_BACKEND=torch``, and ``x`` is a CUDA tensor (or the Triton
    interpreter is on, ``TRITON_INTERPRET=1``, and ``X2CT_PROJECTOR_BACKEND=triton``)."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced == "torch" or not kernels.HAS_TRITON:
        return False
    if x.is_cuda:
        return True
    return forced == "triton" and _interpreting()


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """Turn ``"auto"`` into ``"torch"`` or ``"triton"`` for tensor ``x``; check that a
    backend asked for by name can run. Logs the choice once per backend and device."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if use_triton(x) else "torch"
    elif backend == "triton":
        if not kernels.HAS_TRITON:
            raise RuntimeError(
                f"backend='triton' was asked for but Triton is unavailable "
                f"({kernels.TRITON_IMPORT_ERROR}); use backend='torch' or 'auto'"
            )
        if not (x.is_cuda or _interpreting()):
            raise RuntimeError(
                f"backend='triton' needs a CUDA tensor, got one on {x.device}; "
                "set TRITON_INTERPRET=1 to run the kernels on the CPU (slow; for tests)"
            )
    key = (backend, x.device.type)
    if key not in _announced:
        _announced.add(key)
        logger.info("x2ct.projector: %s backend on %s", backend, x.device.type)
    return backend


# --- custom ops --------------------------------------------------------------------------


@torch.library.custom_op("x2ct::project", mutates_args=())
def _project_op(
    mu: torch.Tensor,
    views: torch.Tensor,
    detector_shape: Sequence[int],
    spacing: Sequence[float],
    step_mm: float,
    parallel: bool,
    backend: str,
    max_chunk_bytes: int,
) -> torch.Tensor:
    detector_shape, spacing = tuple(detector_shape), tuple(spacing)
    if backend == "triton":
        out = kernels.raymarch_forward(mu, views, detector_shape, spacing, step_mm, parallel)
    else:
        out = forward_reference(
            mu, views, detector_shape, spacing, step_mm, parallel, max_chunk_bytes
        )
    return out.to(mu.dtype)


@_project_op.register_fake
def _(mu, views, detector_shape, spacing, step_mm, parallel, backend, max_chunk_bytes):
    return mu.new_empty(mu.shape[0], views.shape[0], *detector_shape)


@torch.library.custom_op("x2ct::backproject", mutates_args=())
def _backproject_op(
    drr: torch.Tensor,
    volume_shape: Sequence[int],
    views: torch.Tensor,
    spacing: Sequence[float],
    step_mm: float,
    parallel: bool,
    backend: str,
    max_chunk_bytes: int,
) -> torch.Tensor:
    volume_shape, spacing = tuple(volume_shape), tuple(spacing)
    if backend == "triton":
        out = kernels.raymarch_backward(drr, volume_shape, views, spacing, step_mm, parallel)
    else:
        out = backward_reference(
            drr, volume_shape, views, spacing, step_mm, parallel, max_chunk_bytes
        )
    return out.to(drr.dtype)


@_backproject_op.register_fake
def _(drr, volume_shape, views, spacing, step_mm, parallel, backend, max_chunk_bytes):
    return drr.new_empty(drr.shape[0], *volume_shape)


def _project_setup(ctx, inputs, output):
    mu, views, _, spacing, step_mm, parallel, backend, max_chunk_bytes = inputs
    ctx.volume_shape = tuple(mu.shape[1:])
    ctx.args = (spacing, step_mm, parallel, backend, max_chunk_bytes)
    ctx.save_for_backward(views)


def _project_backward(ctx, grad):
    (views,) = ctx.saved_tensors
    grad_mu = _backproject_op(grad.contiguous(), ctx.volume_shape, views, *ctx.args)
    return grad_mu, None, None, None, None, None, None, None


def _backproject_setup(ctx, inputs, output):
    drr, _, views, spacing, step_mm, parallel, backend, max_chunk_bytes = inputs
    ctx.detector_shape = tuple(drr.shape[2:])
    ctx.args = (spacing, step_mm, parallel, backend, max_chunk_bytes)
    ctx.save_for_backward(views)


def _backproject_backward(ctx, grad):
    (views,) = ctx.saved_tensors
    grad_drr = _project_op(grad.contiguous(), views, ctx.detector_shape, *ctx.args)
    return grad_drr, None, None, None, None, None, None, None


_project_op.register_autograd(_project_backward, setup_context=_project_setup)
_backproject_op.register_autograd(_backproject_backward, setup_context=_backproject_setup)


# --- public API --------------------------------------------------------------------------


def _check_geometry(geometry) -> None:
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be an x2ct.projector.Geometry, got {type(geometry)}")


def _check_spacing_step(spacing, step) -> tuple[tuple[float, float, float], float]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive finite mm values, got {spacing}")
    step = float(step)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive number of voxels, got {step}")
    return spacing, step * min(spacing)


def _check_views(views: torch.Tensor, n_batch: int) -> torch.Tensor:
    if not isinstance(views, torch.Tensor) or views.ndim not in (2, 3) or views.shape[-1] != 15:
        raise ValueError(
            "views must be (V, 15) or (B, V, 15) view vectors (x2ct.projector.view_vectors), "
            f"got shape {tuple(getattr(views, 'shape', ()))}"
        )
    if views.ndim == 3 and views.shape[0] != n_batch:
        raise ValueError(f"views are for {views.shape[0]} cases but the batch holds {n_batch}")
    return views


def project_views(
    mu: torch.Tensor,
    views: torch.Tensor,
    detector_shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    step: float = 0.5,
    parallel: bool = False,
    backend: str = "auto",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> torch.Tensor:
    """:func:`project` along explicit view vectors: (V, 15) shared by the batch, or
    (B, V, 15), one acquisition per case (each case's views can have their own distances,
    pixel size, detector offset or patient pose: ``stack_views``, ``transform_views``).
    Returns (B, V, H, W); differentiable in ``mu``."""
    if not isinstance(mu, torch.Tensor) or mu.ndim != 5 or mu.shape[1] != 1:
        raise ValueError(
            f"mu must be a (B, 1, X, Y, Z) tensor, got shape {tuple(getattr(mu, 'shape', ()))}"
        )
    if not mu.is_floating_point():
        raise ValueError(f"mu must be a floating-point tensor, got {mu.dtype}")
    if min(mu.shape[2:]) < 2:
        raise ValueError(f"each spatial size of mu must be at least 2, got {tuple(mu.shape)}")
    views = _check_views(views, mu.shape[0])
    spacing, step_mm = _check_spacing_step(spacing, step)
    backend = resolve_backend(backend, mu)
    dtype = torch.float64 if mu.dtype == torch.float64 else torch.float32
    views = views.to(device=mu.device, dtype=dtype)
    args = (list(int(n) for n in detector_shape), list(spacing), step_mm, bool(parallel),
            backend, int(max_chunk_bytes))
    if views.ndim == 2:
        return _project_op(mu[:, 0].contiguous(), views.contiguous(), *args)
    return torch.cat([
        _project_op(mu[i : i + 1, 0].contiguous(), views[i].contiguous(), *args)
        for i in range(mu.shape[0])
    ])


def backproject_views(
    drr: torch.Tensor,
    views: torch.Tensor,
    volume_shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    step: float = 0.5,
    parallel: bool = False,
    backend: str = "auto",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> torch.Tensor:
    """The adjoint of :func:`project_views`: (B, V, H, W) -> (B, 1, X, Y, Z), along view
    vectors (V, 15) shared by the batch or (B, V, 15) per case."""
    if not isinstance(drr, torch.Tensor) or drr.ndim != 4:
        raise ValueError(
            f"drr must be a (B, V, H, W) tensor, got shape {tuple(getattr(drr, 'shape', ()))}"
        )
    if not drr.is_floating_point():
        raise ValueError(f"drr must be a floating-point tensor, got {drr.dtype}")
    views = _check_views(views, drr.shape[0])
    if views.shape[-2] != drr.shape[1]:
        raise ValueError(f"drr has {drr.shape[1]} views but {views.shape[-2]} view vectors")
    spacing, step_mm = _check_spacing_step(spacing, step)
    volume_shape = tuple(int(n) for n in volume_shape)
    if len(volume_shape) != 3 or min(volume_shape) < 2:
        raise ValueError(f"volume_shape must be three sizes >= 2, got {volume_shape}")
    backend = resolve_backend(backend, drr)
    dtype = torch.float64 if drr.dtype == torch.float64 else torch.float32
    views = views.to(device=drr.device, dtype=dtype)
    args = (list(spacing), step_mm, bool(parallel), backend, int(max_chunk_bytes))
    if views.ndim == 2:
        out = _backproject_op(drr.contiguous(), list(volume_shape), views.contiguous(), *args)
    else:
        out = torch.cat([
            _backproject_op(drr[i : i + 1].contiguous(), list(volume_shape),
                            views[i].contiguous(), *args)
            for i in range(drr.shape[0])
        ])
    return out[:, None]


def project(
    mu: torch.Tensor,
    geometry: Geometry,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    step: float = 0.5,
    backend: str = "auto",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> torch.Tensor:
    """Digitally reconstructed radiographs: line integrals of ``mu`` along each view's rays.

    Args:
        mu: linear attenuation in 1/mm, (B, 1, X, Y, Z), RAS voxel order, centred on the
            isocentre (DESIGN.md). float32/float64, or bfloat16/float16 (accumulated in
            float32).
        geometry: the views (:class:`Geometry`).
        spacing: voxel size (sx, sy, sz) in mm.
        step: sample spacing along each ray, in units of the smallest voxel spacing; each
            ray's clipped length is split into equal parts no longer than that.
        backend: "triton", "torch" or "auto" (Triton for CUDA tensors, else torch; see
            :func:`use_triton`).
        max_chunk_bytes: bound on the torch path's temporaries.
    Returns:
        (B, V, H, W) line integrals (dimensionless) in ``mu``'s dtype; differentiable in
        ``mu``. The Triton backward uses atomics: its gradient can differ run to run in the
        last bits; the torch backend is deterministic.
    """
    _check_geometry(geometry)
    return project_views(
        mu, view_vectors(geometry), geometry.detector_shape, spacing, step, geometry.parallel,
        backend, max_chunk_bytes,
    )


def backproject(
    drr: torch.Tensor,
    geometry: Geometry,
    volume_shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    step: float = 0.5,
    backend: str = "auto",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> torch.Tensor:
    """The adjoint of :func:`project`: (B, V, H, W) -> (B, 1, X, Y, Z).

    ``<project(x), y> == <x, backproject(y)>`` for the same geometry, spacing and step.
    Each voxel receives the sum over rays of ``drr * dt`` times its trilinear weight.
    """
    _check_geometry(geometry)
    if isinstance(drr, torch.Tensor) and drr.ndim == 4 and (
        tuple(drr.shape[1:]) != (geometry.num_views, *geometry.detector_shape)
    ):
        raise ValueError(
            f"drr has shape {tuple(drr.shape)} but the geometry has {geometry.num_views} "
            f"views of {geometry.detector_shape}"
        )
    return backproject_views(
        drr, view_vectors(geometry), volume_shape, spacing, step, geometry.parallel, backend,
        max_chunk_bytes,
    )
