"""Per-case view vectors: detector offsets, stacked geometries, rigid motions, rescaling."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from x2ct.diffusion.backprojection import rescale_geometry
from x2ct.projector import (
    Geometry,
    backproject_views,
    project,
    project_posed,
    project_views,
    rescale_views,
    stack_views,
    transform_views,
    view_vectors,
)

SHAPE = (24, 20, 16)
SPACING = (2.0, 2.0, 2.5)


def _blob(centre_mm, sigma=5.0, shape=SHAPE, spacing=SPACING) -> torch.Tensor:
    axes = [
        (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s for n, s in zip(shape, spacing)
    ]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    c = centre_mm
    r2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
    return torch.exp(-r2 / (2 * sigma**2))[None, None] * 0.02


def _centroid(img: torch.Tensor) -> tuple[float, float]:
    h, w = img.shape
    ii = torch.arange(h, dtype=img.dtype)[:, None]
    jj = torch.arange(w, dtype=img.dtype)[None, :]
    m = img.sum()
    return float((img * ii).sum() / m), float((img * jj).sum() / m)


def _geometry(**kw) -> Geometry:
    base = dict(sad=400.0, sdd=700.0, detector_shape=(28, 32), pixel_spacing=(3.0, 3.0))
    return Geometry(**{**base, **kw})


def test_detector_offset_moves_the_image_toward_column_and_row_zero():
    g = _geometry(angles=(0.0,))
    mu = _blob((0.0, 0.0, 0.0))
    moved = dataclasses.replace(g, detector_offset=(6.0, 9.0))  # (o_v, o_u) mm
    i0, j0 = _centroid(project(mu, g, SPACING)[0, 0])
    i1, j1 = _centroid(project(mu, moved, SPACING)[0, 0])
    assert j1 - j0 == pytest.approx(-9.0 / 3.0, abs=0.02)
    assert i1 - i0 == pytest.approx(-6.0 / 3.0, abs=0.02)


def test_detector_offset_equals_pose_shift():
    g = _geometry()
    mu = _blob((3.0, -4.0, 2.0))
    moved = dataclasses.replace(g, detector_offset=(2.5, -4.0))
    pose = torch.tensor([[0.0, -4.0, 2.5], [0.0, -4.0, 2.5]], dtype=torch.float64)
    a = project(mu, moved, SPACING, backend="torch")
    b = project_posed(mu, g, pose, SPACING)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_geometry_round_trips_with_offset_and_old_dicts_load():
    g = _geometry(detector_offset=(1.0, -2.0))
    assert Geometry.from_dict(g.to_dict()) == g
    old = g.to_dict()
    del old["detector_offset"]
    assert Geometry.from_dict(old).detector_offset == (0.0, 0.0)
    with pytest.raises(ValueError, match="detector_offset"):
        _geometry(detector_offset=(math.nan, 0.0))


def test_stack_views_of_different_distances_equals_separate_projections():
    ap = _geometry(angles=(0.0,), sad=400.0, sdd=700.0)
    lat = _geometry(angles=(90.0,), sad=600.0, sdd=1000.0, pixel_spacing=(2.5, 2.0))
    mu = _blob((4.0, 2.0, -3.0))
    stacked = project_views(mu, stack_views([ap, lat]), ap.detector_shape, SPACING)
    torch.testing.assert_close(stacked[:, :1], project(mu, ap, SPACING))
    torch.testing.assert_close(stacked[:, 1:], project(mu, lat, SPACING))
    with pytest.raises(ValueError, match="detector_shape"):
        stack_views([ap, dataclasses.replace(lat, detector_shape=(10, 10))])


def test_per_case_views_equal_per_case_projections():
    g1, g2 = _geometry(), _geometry(sad=500.0, sdd=900.0, angles=(10.0, 95.0))
    mu = torch.cat([_blob((2.0, 0.0, 0.0)), _blob((-3.0, 1.0, 2.0))])
    views = torch.stack([view_vectors(g1), view_vectors(g2)])  # (2, V, 15)
    out = project_views(mu, views, g1.detector_shape, SPACING)
    torch.testing.assert_close(out[:1], project(mu[:1], g1, SPACING))
    torch.testing.assert_close(out[1:], project(mu[1:], g2, SPACING))
    # the adjoint identity holds per case
    y = torch.rand_like(out, dtype=torch.float64)
    lhs = (project_views(mu, views, g1.detector_shape, SPACING) * y).sum()
    rhs = (mu * backproject_views(y, views, SHAPE, SPACING)).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-9)


def test_translated_views_see_the_inversely_translated_volume():
    g = _geometry()
    t = torch.tensor([6.0, -4.0, 5.0], dtype=torch.float64)
    # views moved by +t see a volume whose content sits at -t relative to them
    moved = transform_views(view_vectors(g), torch.eye(3, dtype=torch.float64), t)
    a = project_views(_blob((0.0, 0.0, 0.0), sigma=3.0), moved, g.detector_shape, SPACING)
    b = project(_blob(tuple((-t).tolist()), sigma=3.0), g, SPACING)
    # both blobs lie well inside the volume (>= 4 sigma from its faces); the rays sample
    # them at other points along each ray, so they agree to the trilinear interpolation
    # error (0.2% measured; a wrong sign or axis is off by the whole blob)
    assert float((a - b).abs().max()) < 1e-2 * float(b.max())


def test_rotated_views_see_the_inversely_rotated_volume():
    # a 90-degree turn about +Z maps voxels exactly onto voxels on a square grid
    shape, spacing = (20, 20, 12), (2.0, 2.0, 2.0)
    g = _geometry(angles=(0.0, 90.0, 30.0))
    mu = _blob((8.0, -3.0, 4.0), sigma=4.0, shape=shape, spacing=spacing) + _blob(
        (-5.0, 6.0, -2.0), sigma=3.0, shape=shape, spacing=spacing
    )
    r = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    # content rotated by r^T: new(p) = old(r p); on the grid, p = (x, y) -> r p = (-y, x)
    rotated = torch.rot90(mu, k=-1, dims=(2, 3))  # new[i, j] = old[n-1-j, i], checked below
    x = (torch.arange(20, dtype=torch.float64) - 9.5) * 2.0
    xx, yy = torch.meshgrid(x, x, indexing="ij")
    ref = mu[0, 0, :, :, 0]
    # the oracle itself: new(p) = old(r p) at one voxel
    i, j = 3, 11
    rp = r @ torch.tensor([xx[i, j], yy[i, j], 0.0], dtype=torch.float64)
    ii = int(round(float(rp[0] / 2.0 + 9.5)))
    jj = int(round(float(rp[1] / 2.0 + 9.5)))
    assert float(rotated[0, 0, i, j, 0]) == pytest.approx(float(ref[ii, jj]))
    moved = transform_views(view_vectors(g), r, torch.zeros(3, dtype=torch.float64))
    a = project_views(mu, moved, g.detector_shape, spacing)
    b = project(rotated, g, spacing)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_rescale_views_matches_rescale_geometry():
    g = _geometry(detector_offset=(1.5, -2.0))
    a = rescale_views(view_vectors(g), g.detector_shape, (7, 8))
    b = view_vectors(rescale_geometry(g, (7, 8)))
    torch.testing.assert_close(a, b)


def test_pose_views_of_a_geometry_equal_posed_view_vectors():
    from x2ct.projector import pose_views, posed_view_vectors

    g = _geometry(detector_offset=(1.0, 2.0))
    pose = torch.tensor([[2.5, -3.0, 1.5], [-1.0, 4.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(pose_views(view_vectors(g), pose), posed_view_vectors(g, pose))
    pose.requires_grad_(True)
    pose_views(view_vectors(g), pose).sum().backward()
    assert pose.grad is not None and bool(torch.isfinite(pose.grad).all())


def test_feature_backprojection_along_per_case_views_equals_the_nominal_path():
    from x2ct.diffusion.backprojection import FeatureBackprojector

    g = Geometry.fit((16, 16, 16), (4.0, 4.0, 4.0), (16, 16))
    fb = FeatureBackprojector(g, (4, 4), (4, 4, 4), (16.0, 16.0, 16.0))
    feats = torch.randn(3, 2, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    nominal = view_vectors(g, torch.float32).expand(3, 2, 15)
    torch.testing.assert_close(fb(feats, nominal), fb(feats), rtol=1e-4, atol=1e-5)
    # another case's acquisition changes that case only
    other = nominal.clone()
    other[1] = view_vectors(dataclasses.replace(g, sad=700.0, sdd=1000.0, pixel_spacing=(
        g.pixel_spacing[0] * (1000 / 700) / g.magnification,) * 2), torch.float32)
    out = fb(feats, other)
    torch.testing.assert_close(out[0], fb(feats)[0], rtol=1e-4, atol=1e-5)
    assert float((out[1] - fb(feats)[1]).abs().max()) > 1e-3
