"""Triton ray-marching kernels and their launchers (no autograd here; see x2ct.projector).

``HAS_TRITON`` says whether Triton imported; the launchers raise if it did not.
"""

try:  # Triton is Linux-only and optional at import time.
    import triton  # noqa: F401

    HAS_TRITON = True
    TRITON_IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the platform
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = repr(exc)


def raymarch_forward(volume, views, detector_shape, spacing, step_mm, parallel, *, splits=None):
    """(B, X, Y, Z) volume -> (B, V, H, W) float32 line integrals. See kernels/raymarch.py."""
    from x2ct.kernels.raymarch import raymarch_forward as _fwd

    return _fwd(volume, views, detector_shape, spacing, step_mm, parallel, splits=splits)


def raymarch_backward(grad, volume_shape, views, spacing, step_mm, parallel, *, splits=None):
    """(B, V, H, W) -> (B, X, Y, Z) float32 adjoint. See kernels/raymarch.py."""
    from x2ct.kernels.raymarch import raymarch_backward as _bwd

    return _bwd(grad, volume_shape, views, spacing, step_mm, parallel, splits=splits)
