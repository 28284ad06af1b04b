"""Rendering that is differentiable in the geometry, and pose refinement for real radiographs.

Real AP and lateral radiographs are never exactly orthogonal or centred. A view's pose is
described here by three offsets from its nominal :class:`Geometry` view (DESIGN.md,
"Views"), one row per view:

    pose[v] = (d_angle, d_u, d_v)     degrees, mm, mm

    angle        t' = t + d_angle                      (the gantry turns by d_angle)
    detector     centre' = centre(t') + d_u u(t') + d_v v   (shifted in its own plane;
                                                        the source does not move)

A detector shift with a fixed source relabels pixels without changing any ray, so it is an
exact image translation by (d_v / dv, d_u / du) pixels (:func:`shift_to_nominal` undoes it);
an angle offset changes the rays and is carried as a geometry (:func:`posed_geometry`).

:func:`posed_view_vectors` builds the (V, 15) ray vectors of ``view_vectors`` with torch
ops, so gradients flow from the DRRs to the pose: :func:`project_posed` marches them with
the PyTorch reference path (``forward_reference``: ``grid_sample`` is differentiable in its
sampling grid, and every ray's start, step and weight are smooth functions of the vectors;
only the sample count per ray is piecewise constant). :func:`refine_pose` fits the pose by
gradient descent on 1 - NCC (normalised cross-correlation, insensitive to the unknown
gain and offset of a real radiograph) between the X-rays and the DRRs of a CT.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from x2ct.projector.geometry import Geometry
from x2ct.projector.reference import forward_reference

__all__ = [
    "PoseFit",
    "ncc",
    "posed_geometry",
    "pose_views",
    "posed_view_vectors",
    "project_posed",
    "refine_pose",
    "shift_to_nominal",
]


def posed_view_vectors(geometry: Geometry, pose: torch.Tensor) -> torch.Tensor:
    """(V, 15) ray vectors (as :func:`~x2ct.projector.geometry.view_vectors`) of the views
    moved by ``pose`` (V, 3) = (d_angle deg, d_u mm, d_v mm); differentiable in ``pose``."""
    if pose.shape != (geometry.num_views, 3):
        raise ValueError(f"pose must be ({geometry.num_views}, 3), got {tuple(pose.shape)}")
    dtype, device = pose.dtype, pose.device
    nominal = torch.tensor(geometry.angles, dtype=dtype, device=device)
    t = torch.deg2rad(nominal + pose[:, 0])  # (V,)
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    s = torch.stack([-torch.sin(t), torch.cos(t), zero], -1)  # (V, 3) toward the source
    u = torch.stack([-torch.cos(t), -torch.sin(t), zero], -1)  # (V, 3) detector columns
    v = torch.stack([zero, zero, -one], -1)  # (V, 3) detector rows
    dv, du = geometry.pixel_spacing
    height, width = geometry.detector_shape
    source = geometry.sad * s
    o_v, o_u = geometry.detector_offset
    shift_u, shift_v = pose[:, 1:2] + o_u, pose[:, 2:3] + o_v
    centre = -(geometry.sdd - geometry.sad) * s + shift_u * u + shift_v * v
    col_step, row_step = du * u, dv * v
    origin = centre - 0.5 * (width - 1) * col_step - 0.5 * (height - 1) * row_step
    return torch.cat([source, origin, col_step, row_step, s], -1)  # (V, 15)


def pose_views(views: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Any view vectors (V, 15) moved by ``pose`` (V, 3) = (d_angle deg, d_u mm, d_v mm):
    each view turned by d_angle about +Z through the isocentre (source, detector and beam
    together, as a gantry turns), then its detector shifted in its own plane by d_u along
    its column direction and d_v along its row direction. For a Geometry's views this is
    :func:`posed_view_vectors`; differentiable in ``pose``."""
    if views.ndim != 2 or views.shape[1] != 15 or pose.shape != (views.shape[0], 3):
        raise ValueError(f"need views (V, 15) and pose (V, 3), got {tuple(views.shape)}, "
                         f"{tuple(pose.shape)}")
    pose = pose.to(views)
    a = torch.deg2rad(pose[:, 0])
    c, s_ = torch.cos(a), torch.sin(a)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    rot = torch.stack(
        [torch.stack([c, -s_, zero], -1), torch.stack([s_, c, zero], -1),
         torch.stack([zero, zero, one], -1)], -2
    )  # (V, 3, 3)
    p = views.reshape(-1, 5, 3) @ rot.transpose(-1, -2)  # rotate points and directions
    col, row = p[:, 2], p[:, 3]
    shift = (pose[:, 1:2] * col / col.norm(dim=-1, keepdim=True)
             + pose[:, 2:3] * row / row.norm(dim=-1, keepdim=True))
    p = torch.cat([p[:, :1], p[:, 1:2] + shift[:, None], p[:, 2:]], 1)
    return p.reshape(-1, 15)


def project_posed(
    mu: torch.Tensor,
    geometry: Geometry,
    pose: torch.Tensor,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    step: float = 0.5,
    views: torch.Tensor | None = None,
) -> torch.Tensor:
    """DRRs (B, V, H, W) of ``mu`` (B, 1, X, Y, Z) along the posed views, by the PyTorch
    reference path; differentiable in ``mu`` and ``pose`` (V, 3). ``pose`` zero gives
    ``project(mu, geometry, spacing, step, backend="torch")``. ``views`` (V, 15): pose
    these view vectors instead of the geometry's (a case's own acquisition on the
    geometry's detector, :func:`pose_views`)."""
    if mu.ndim != 5 or mu.shape[1] != 1:
        raise ValueError(f"mu must be (B, 1, X, Y, Z), got {tuple(mu.shape)}")
    spacing = tuple(float(s) for s in spacing)
    if views is None:
        views = posed_view_vectors(geometry, pose.to(mu.device))
    else:
        views = pose_views(views.to(mu.device, mu.dtype), pose.to(mu.device))
    step_mm = float(step) * min(spacing)
    return forward_reference(
        mu[:, 0], views, tuple(geometry.detector_shape), spacing, step_mm, geometry.parallel
    )


def posed_geometry(geometry: Geometry, pose: torch.Tensor) -> Geometry:
    """The geometry with each view's angle moved by pose[:, 0] (detector shifts are not a
    Geometry field: undo them on the images with :func:`shift_to_nominal`)."""
    angles = tuple(a + float(d) for a, d in zip(geometry.angles, pose[:, 0].tolist()))
    return dataclasses.replace(geometry, angles=angles)


def shift_to_nominal(xrays: torch.Tensor, geometry: Geometry, pose: torch.Tensor) -> torch.Tensor:
    """X-rays (B, V, H, W) taken with shifted detectors (pose (B, V, 3) or (V, 3)) resampled
    onto the unshifted detectors (bilinear, border values outside).

    The shifted pixel (i, j) sees the ray of the unshifted pixel at (i + d_v/dv, j + d_u/du),
    so the unshifted image at (i, j) is the shifted image at (i - d_v/dv, j - d_u/du)."""
    b, n_views, height, width = xrays.shape
    pose = pose.expand(b, n_views, 3) if pose.ndim == 2 else pose
    dv, du = geometry.pixel_spacing
    # pixel shifts -> grid_sample's normalised units (align_corners=True): 2 / (n - 1)
    sx = -pose[..., 1].to(xrays) / du * 2.0 / max(width - 1, 1)  # (B, V)
    sy = -pose[..., 2].to(xrays) / dv * 2.0 / max(height - 1, 1)
    ys = torch.linspace(-1, 1, height, dtype=xrays.dtype, device=xrays.device)
    xs = torch.linspace(-1, 1, width, dtype=xrays.dtype, device=xrays.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    grid = torch.stack(
        [gx + sx[..., None, None], gy + sy[..., None, None]], -1
    )  # (B, V, H, W, 2)
    out = F.grid_sample(
        xrays.reshape(b * n_views, 1, height, width),
        grid.reshape(b * n_views, height, width, 2),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return out.reshape(b, n_views, height, width)


def ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of images (..., H, W) -> (...), in [-1, 1]."""
    a = a.flatten(-2)
    b = b.flatten(-2)
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


@dataclass
class PoseFit:
    pose: torch.Tensor  # (B, V, 3) fitted (d_angle deg, d_u mm, d_v mm)
    loss_before: torch.Tensor  # (B,) mean over views of 1 - NCC at the starting pose
    loss_after: torch.Tensor  # (B,) the same at the fitted pose


def refine_pose(
    mu: torch.Tensor,
    xrays: torch.Tensor,
    geometry: Geometry,
    spacing: Sequence[float],
    iters: int = 60,
    lr: float = 0.3,
    step: float = 1.0,
    init: torch.Tensor | None = None,
    views: torch.Tensor | None = None,
) -> PoseFit:
    """Fit each view's (d_angle, d_u, d_v) so that the DRRs of ``mu`` (B, 1, X, Y, Z, 1/mm)
    match ``xrays`` (B, V, H, W; any gain and offset) best: Adam on
    ``mean_v 1 - NCC(project_posed(mu)[v], xrays[v])``, one pose per case.

    ``lr`` is in degrees and mm per iteration (Adam's steps are about ``lr`` in size at
    first, so a few tenths suit offsets of a few degrees and millimetres); ``step`` is the
    ray-march step in voxels (coarser than the projector's default: pose needs little
    accuracy per ray and each iteration renders and back-propagates every view). The best
    pose seen is returned (the last iterate can overshoot). ``views`` ((V, 15) or
    (B, V, 15)): each case's own acquisition to pose, instead of the geometry's views."""
    if iters < 0 or lr <= 0:
        raise ValueError(f"need iters >= 0 and lr > 0, got {iters}, {lr}")
    b, n_views = xrays.shape[:2]
    if mu.shape[0] != b or n_views != geometry.num_views:
        raise ValueError(
            f"mu {tuple(mu.shape)} and xrays {tuple(xrays.shape)} do not match "
            f"({geometry.num_views} views)"
        )
    mu = mu.detach().float()
    xrays = xrays.detach().to(mu)
    start = torch.zeros(b, n_views, 3) if init is None else init.detach().float().cpu()
    fitted, before, after = [], [], []
    for i in range(b):
        pose = start[i].clone().to(mu.device).requires_grad_(True)
        opt = torch.optim.Adam([pose], lr=lr)
        best, best_loss, first = pose.detach().clone(), math.inf, None
        for k in range(iters + 1):
            with torch.enable_grad():
                base = None if views is None else (views if views.ndim == 2 else views[i])
                drr = project_posed(mu[i : i + 1], geometry, pose, spacing, step, base)
                loss = (1 - ncc(drr[0], xrays[i])).mean()
            value = float(loss.detach())
            first = value if first is None else first
            if value < best_loss:
                best, best_loss = pose.detach().clone(), value
            if k == iters:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
        fitted.append(best.cpu())
        before.append(first)
        after.append(best_loss)
    return PoseFit(torch.stack(fitted), torch.tensor(before), torch.tensor(after))
