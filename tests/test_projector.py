"""Projector tests on the CPU: analytic line integrals, the DESIGN.md conventions, the
adjoint identity, gradcheck of the float64 torch path, and bad input.

The oracles here are independent of projector/reference.py: pixel positions come straight
from DESIGN.md's formulas and chord lengths from closed-form ray/sphere and ray/box
intersections.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from x2ct.cli import InputError
from x2ct.projector import (
    Geometry,
    backproject,
    hu_to_mu,
    mu_to_hu,
    project,
    resolve_backend,
)


# --- an independent model of the geometry --------------------------------------------------
def design_rays(g: Geometry):
    """Ray origins and unit directions per view and pixel, (V, H, W, 3), from DESIGN.md."""
    height, width = g.detector_shape
    dv, du = g.pixel_spacing
    origins, dirs = [], []
    for angle in g.angles:
        t = math.radians(angle)
        s = np.array([-math.sin(t), math.cos(t), 0.0])
        u = np.array([-math.cos(t), -math.sin(t), 0.0])
        v = np.array([0.0, 0.0, -1.0])
        centre = -(g.sdd - g.sad) * s
        j = np.arange(width)[None, :, None] - (width - 1) / 2
        i = np.arange(height)[:, None, None] - (height - 1) / 2
        pixel = centre + j * du * u + i * dv * v  # (H, W, 3)
        if g.parallel:
            origins.append(pixel)
            dirs.append(np.broadcast_to(s, pixel.shape))
        else:
            d = pixel - g.sad * s
            origins.append(np.broadcast_to(g.sad * s, pixel.shape))
            dirs.append(d / np.linalg.norm(d, axis=-1, keepdims=True))
    return np.stack(origins), np.stack(dirs)


def world_grid(shape, spacing):
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return np.meshgrid(*axes, indexing="ij")


def ball_volume(shape, spacing, centre, radius):
    """Partial-volume ball: a one-voxel linear ramp across the surface."""
    x, y, z = world_grid(shape, spacing)
    dist = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    h = min(spacing)
    return np.clip(0.5 - (dist - radius) / h, 0.0, 1.0)


def sphere_chord(origin, direction, centre, radius):
    """Chord length of each ray through a sphere, and the ray's distance to its centre."""
    oc = np.asarray(centre) - origin
    along = (oc * direction).sum(-1)
    b2 = (oc**2).sum(-1) - along**2
    b = np.sqrt(np.maximum(b2, 0.0))
    return 2.0 * np.sqrt(np.maximum(radius**2 - b2, 0.0)), b


def box_chord(origin, direction, lo, hi):
    """Chord length through an axis-aligned box, and the distance of each ray's entry and
    exit points from the box's edges (to leave out rays that graze an edge)."""
    d = np.where(np.abs(direction) < 1e-12, 1e-12, direction)
    t1 = (np.asarray(lo) - origin) / d
    t2 = (np.asarray(hi) - origin) / d
    t_near = np.minimum(t1, t2).max(-1)
    t_far = np.maximum(t1, t2).min(-1)
    return np.maximum(t_far - t_near, 0.0), t_near, t_far


GEOMETRIES = {
    "cone": dict(sad=300.0, sdd=500.0),
    "parallel": dict(parallel=True),
}


@pytest.mark.parametrize("beam", ["cone", "parallel"])
def test_ball_line_integrals_match_chord_lengths(beam):
    shape, spacing = (72, 64, 60), (0.5, 0.55, 0.6)
    centre, radius = (3.0, -2.0, 1.5), 9.0
    g = Geometry.fit(shape, spacing, (40, 44), angles=(0.0, 90.0, 30.0), **GEOMETRIES[beam])
    vol = torch.from_numpy(ball_volume(shape, spacing, centre, radius))[None, None].float()
    drr = project(vol, g, spacing, step=0.25, backend="torch")[0].numpy()
    origin, direction = design_rays(g)
    chord, b = sphere_chord(origin, direction, centre, radius)
    # Away from the rim the sharp surface is resolved; at the rim the chord's slope is
    # infinite and any voxelisation differs, so that band is left out.
    h = max(spacing)
    keep = (b < radius - 2 * h) | (b > radius + 2 * h)
    assert keep.sum() > 0.7 * keep.size
    assert (chord[keep] > 0).sum() > 200
    err = np.abs(drr - chord)[keep].max()
    assert err < 0.01 * chord.max(), err


@pytest.mark.parametrize("beam", ["cone", "parallel"])
def test_box_line_integrals_match_chord_lengths(beam):
    shape, spacing = (60, 56, 64), (0.6, 0.5, 0.5)
    # A box whose faces sit on voxel boundaries: voxels of index a..b are 1, so the
    # zero-padded trilinear interpolant integrates to the box [a - 1/2, b + 1/2] exactly
    # along axis-parallel rays, and to within the edge bands along oblique ones.
    lo_idx, hi_idx = np.array([10, 20, 8]), np.array([40, 45, 30])
    vol = np.zeros(shape)
    vol[lo_idx[0] : hi_idx[0] + 1, lo_idx[1] : hi_idx[1] + 1, lo_idx[2] : hi_idx[2] + 1] = 1
    n, s = np.array(shape), np.array(spacing)
    lo = (lo_idx - 0.5 - (n - 1) / 2) * s
    hi = (hi_idx + 0.5 - (n - 1) / 2) * s
    g = Geometry.fit(shape, spacing, (36, 40), angles=(0.0, 90.0, 20.0), **GEOMETRIES[beam])
    drr = project(torch.from_numpy(vol)[None, None], g, spacing, step=0.25, backend="torch")
    origin, direction = design_rays(g)
    chord, t_near, t_far = box_chord(origin, direction, lo, hi)
    # Leave out rays that pass within two voxels of an edge of the box.
    h = 2 * s.max()
    keep = np.ones(chord.shape, bool)
    for t in (t_near, t_far):
        p = origin + t[..., None] * direction
        near_face = np.abs(p[..., :, None] - np.stack([lo, hi], -1)) < h  # (..., 3, 2)
        keep &= near_face.any(-1).sum(-1) <= 1
    keep |= chord == 0
    keep &= ~((chord == 0) & (box_chord(origin, direction, lo - h, hi + h)[0] > 0))
    assert (keep & (chord > 0)).sum() > 200
    err = np.abs(drr[0].numpy() - chord)[keep].max()
    assert err < 0.01 * chord.max(), err


def test_gaussian_blob_matches_analytic_integral_everywhere():
    """A smooth blob has a closed-form line integral, sqrt(2 pi) sigma exp(-b^2 / 2 sigma^2),
    so every pixel, rim included, can be checked."""
    shape, spacing = (64, 60, 56), (0.5, 0.5, 0.6)
    centre, sigma = np.array([2.0, -1.0, 1.0]), 3.0
    x, y, z = world_grid(shape, spacing)
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    vol = torch.from_numpy(np.exp(-r2 / (2 * sigma**2)))[None, None]
    g = Geometry.fit(shape, spacing, (32, 32), sad=250.0, sdd=400.0, angles=(0.0, 90.0, 45.0))
    drr = project(vol, g, spacing, step=0.25, backend="torch")[0].numpy()
    origin, direction = design_rays(g)
    _, b = sphere_chord(origin, direction, centre, 0.0)
    expected = math.sqrt(2 * math.pi) * sigma * np.exp(-(b**2) / (2 * sigma**2))
    assert np.abs(drr - expected).max() < 0.01 * expected.max()


# --- conventions ---------------------------------------------------------------------------
def _blob_image(centre, geometry, shape=(40, 40, 40), spacing=(1.0, 1.0, 1.0)):
    vol = ball_volume(shape, spacing, centre, 3.0)
    return project(torch.from_numpy(vol)[None, None].float(), geometry, spacing)[0]


def _centroid(img):
    img = img.numpy()
    i, j = np.indices(img.shape)
    return (i * img).sum() / img.sum(), (j * img).sum() / img.sum()


@pytest.mark.parametrize("parallel", [False, True])
def test_patient_right_superior_anterior_land_where_radiographs_show_them(parallel):
    g = Geometry.fit((40, 40, 40), (1.0, 1.0, 1.0), (33, 33), parallel=parallel)
    mid = (33 - 1) / 2
    right = _blob_image((10.0, 0.0, 0.0), g)  # +X is the patient's right
    assert _centroid(right[0])[1] < mid - 2  # AP: left half of the image
    assert _centroid(right[1])[1] == pytest.approx(mid, abs=0.5)  # lateral: on the axis
    superior = _blob_image((0.0, 0.0, 10.0), g)
    assert _centroid(superior[0])[0] < mid - 2  # upper half in both views
    assert _centroid(superior[1])[0] < mid - 2
    anterior = _blob_image((0.0, 10.0, 0.0), g)
    assert _centroid(anterior[1])[1] < mid - 2  # lateral: left half
    assert _centroid(anterior[0])[1] == pytest.approx(mid, abs=0.5)


def test_magnification_follows_sdd_over_sad():
    g = Geometry(sad=400.0, sdd=800.0, detector_shape=(41, 61), pixel_spacing=(1.0, 1.0))
    offset = 8.0  # mm toward the patient's right, in the isocentre plane of the AP view
    img = _blob_image((offset, 0.0, 0.0), g, shape=(48, 48, 48))
    _, col = _centroid(img[0])
    # The blob's centre projects at offset * sdd / (sad - y) from the centre; y = 0 here.
    assert (30.0 - col) * 1.0 == pytest.approx(offset * g.sdd / g.sad, rel=0.02)
    gp = Geometry(detector_shape=(41, 61), pixel_spacing=(1.0, 1.0), parallel=True)
    _, col_p = _centroid(_blob_image((offset, 0.0, 0.0), gp, shape=(48, 48, 48))[0])
    assert 30.0 - col_p == pytest.approx(offset, rel=0.02)


def test_fit_covers_the_volume():
    """Nothing of the volume's shadow falls outside the fitted detector: a detector twice
    as large with the same pixels sees nothing beyond the fitted one."""
    shape, spacing = (40, 36, 30), (1.0, 1.2, 1.5)
    for angle in (0.0, 45.0, 90.0):
        g = Geometry.fit(shape, spacing, (24, 22), angles=(angle,))
        big = Geometry(detector_shape=(48, 44), pixel_spacing=g.pixel_spacing, angles=(angle,))
        ones = torch.ones(1, 1, *shape)
        small_img = project(ones, g, spacing)[0, 0]
        big_img = project(ones, big, spacing)[0, 0]
        inner = big_img[12:36, 11:33]
        assert torch.allclose(inner, small_img, atol=1e-4)
        assert big_img.sum() == pytest.approx(inner.sum().item(), rel=1e-6)
        # ... and the fit is tight: the shadow reaches the outer pixels of the detector.
        assert small_img[:, 0].max() > 0 or small_img[0].max() > 0
    g = Geometry.fit((64, 48, 32), (2.0, 2.0, 2.0))
    assert g.detector_shape == (32, 64)  # (Z, max(X, Y)) by default


# --- linear-operator identities ------------------------------------------------------------
@pytest.mark.parametrize("parallel", [False, True])
def test_adjoint_identity(parallel):
    shape, spacing = (13, 11, 9), (1.0, 1.3, 0.8)
    g = Geometry.fit(shape, spacing, (7, 9), angles=(0.0, 90.0, 17.0), parallel=parallel)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, *shape, generator=gen, dtype=torch.float64)
    y = torch.rand(2, 3, 7, 9, generator=gen, dtype=torch.float64)
    lhs = (project(x, g, spacing, step=0.4) * y).sum()
    rhs = (x * backproject(y, g, shape, spacing, step=0.4)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10)
    x32, y32 = x.float(), y.float()
    lhs = (project(x32, g, spacing, step=0.4).double() * y).sum()
    rhs = (x * backproject(y32, g, shape, spacing, step=0.4).double()).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-5)


@pytest.mark.parametrize("parallel", [False, True])
def test_gradcheck_float64_torch_path(parallel):
    shape, spacing = (6, 5, 7), (1.0, 1.1, 0.9)
    g = Geometry.fit(shape, spacing, (4, 3), angles=(0.0, 90.0), parallel=parallel)
    mu = torch.rand(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: project(m, g, spacing, 0.5, "torch"), (mu,))
    drr = torch.rand(2, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: backproject(d, g, shape, spacing, 0.5), (drr,))


def test_chunking_does_not_change_the_result():
    shape, spacing = (20, 18, 16), (1.0, 1.0, 1.0)
    g = Geometry.fit(shape, spacing, (16, 12))
    mu = torch.rand(3, 1, *shape)
    whole = project(mu, g, spacing)
    tiny = project(mu, g, spacing, max_chunk_bytes=1)  # one ray per chunk
    assert torch.allclose(whole, tiny, rtol=1e-5, atol=1e-6)
    y = torch.rand_like(whole)
    assert torch.allclose(
        backproject(y, g, shape, spacing), backproject(y, g, shape, spacing, max_chunk_bytes=1),
        rtol=1e-5, atol=1e-6,
    )


def test_torch_compile_traces_around_the_custom_op():
    shape, spacing = (10, 9, 8), (1.0, 1.0, 1.0)
    g = Geometry.fit(shape, spacing, (6, 6))
    mu = torch.rand(1, 1, *shape, requires_grad=True)
    fn = torch.compile(lambda m: project(m, g, spacing).square().sum(), backend="eager",
                       fullgraph=True)
    loss = fn(mu)
    loss.backward()
    mu2 = mu.detach().clone().requires_grad_(True)
    project(mu2, g, spacing).square().sum().backward()
    assert torch.allclose(loss, project(mu2, g, spacing).square().sum())
    assert torch.allclose(mu.grad, mu2.grad)


def test_bfloat16_volume_is_accumulated_in_float32():
    shape, spacing = (16, 16, 16), (1.0, 1.0, 1.0)
    g = Geometry.fit(shape, spacing, (8, 8))
    mu = torch.rand(1, 1, *shape).to(torch.bfloat16)
    out = project(mu, g, spacing)
    assert out.dtype == torch.bfloat16
    ref = project(mu.float(), g, spacing)
    assert torch.allclose(out.float(), ref, rtol=1e-2)


def test_hu_to_mu_and_back():
    hu = torch.tensor([-1000.0, -500.0, 0.0, 1000.0, 2000.0])
    mu = hu_to_mu(hu)
    assert torch.allclose(mu, torch.tensor([0.0, 0.01, 0.02, 0.04, 0.06]))
    assert torch.allclose(mu_to_hu(mu), hu)
    assert hu_to_mu(torch.tensor([-1200.0])).item() == 0.0  # below air clamps to zero
    assert np.allclose(hu_to_mu(np.array([0.0]), mu_water=0.019), 0.019)


# --- bad input -----------------------------------------------------------------------------
def test_bad_input_is_a_clear_error():
    g = Geometry.fit((8, 8, 8), (1.0, 1.0, 1.0), (4, 4))
    mu = torch.rand(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\)"):
        project(mu[0], g)
    with pytest.raises(ValueError, match="spacing"):
        project(mu, g, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        project(mu, g, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="step"):
        project(mu, g, step=0.0)
    with pytest.raises(ValueError, match="step"):
        project(mu, g, step=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        project(mu, g, backend="cuda")
    with pytest.raises(ValueError, match="floating"):
        project(mu.to(torch.int32), g)
    with pytest.raises(ValueError, match="views"):
        backproject(torch.rand(1, 3, 4, 4), g, (8, 8, 8))
    with pytest.raises(ValueError, match="sad"):
        Geometry(sad=float("nan"))
    with pytest.raises(ValueError, match="sdd"):
        Geometry(sad=500.0, sdd=400.0)
    with pytest.raises(ValueError, match="pixel_spacing"):
        Geometry(pixel_spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="detector_shape"):
        Geometry(detector_shape=(0, 4))
    with pytest.raises(ValueError, match="angles"):
        Geometry(angles=(0.0, float("inf")))


def test_triton_on_a_cpu_tensor_without_the_interpreter_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("X2CT_PROJECTOR_BACKEND", raising=False)
    g = Geometry.fit((8, 8, 8), (1.0, 1.0, 1.0), (4, 4))
    with pytest.raises(RuntimeError, match="CUDA tensor|Triton is unavailable"):
        project(torch.rand(1, 1, 8, 8, 8), g, backend="triton")
    assert resolve_backend("auto", torch.zeros(1)) == "torch"
    monkeypatch.setenv("X2CT_PROJECTOR_BACKEND", "torch")
    assert resolve_backend("auto", torch.zeros(1)) == "torch"


def test_geometry_round_trips_through_a_dict():
    g = Geometry.fit((10, 10, 10), (2.0, 2.0, 2.0), (16, 16), angles=(0.0, 90.0))
    assert Geometry.from_dict(g.to_dict()) == g


def test_uniform_volume_integrates_to_its_physical_extent():
    """Voxels are cells: n voxels of size s along a ray add up to n * s, edges included
    (the zero-padded interpolant ramps to 0 one voxel beyond the last centre)."""
    shape, spacing = (9, 12, 10), (1.5, 0.75, 1.0)
    g = Geometry(detector_shape=(3, 3), pixel_spacing=(0.5, 0.5), angles=(0.0, 90.0),
                 parallel=True)
    drr = project(torch.ones(1, 1, *shape, dtype=torch.float64), g, spacing, step=0.05)
    expected = torch.tensor([12 * 0.75, 9 * 1.5], dtype=torch.float64)[:, None, None]
    assert torch.allclose(drr[0], expected.expand(2, 3, 3), rtol=1e-4)


def test_command_line_renders_a_water_box(tmp_path, capsys):
    """The DRR command line (``python -m x2ct.projector``, ``x2ct-drr``; run in-process): a
    20 x 16 x 12 mm box of water (0 HU, the whole CT) in parallel beam integrates
    mu_water = 0.02/mm over its depth, 16 mm along the AP rays (Y) and 20 mm along the
    lateral ones (X); drr.npy is the library's image, the 16-bit PNGs read back as
    drr / DRR_SCALE, geometry.json records the fitted geometry."""
    import json

    from x2ct.data import load_ct, load_xray, save_ct
    from x2ct.projector import DRR_SCALE, hu_to_mu
    from x2ct.projector.__main__ import main

    shape, spacing = (10, 8, 6), (2.0, 2.0, 2.0)
    ct = save_ct(tmp_path / "water.nii.gz", np.zeros(shape, np.float32), spacing=spacing)
    out = tmp_path / "out"
    args = [str(ct), "--out", str(out), "--size", "12", "--parallel", "--backend", "torch",
            "--device", "cpu"]
    assert main(args) == 0
    assert "torch backend on cpu" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "ap.png", "drr.npy", "geometry.json", "lateral.png", "preview.png"]  # fmt: skip
    drr = np.load(out / "drr.npy")
    assert drr.shape == (2, 12, 12)
    assert drr[0].max() == pytest.approx(0.02 * 16.0, rel=1e-3)  # AP: through Y
    assert drr[1].max() == pytest.approx(0.02 * 20.0, rel=1e-3)  # lateral: through X
    g = Geometry.fit(shape, spacing, (12, 12), angles=(0.0, 90.0), parallel=True)
    assert json.loads((out / "geometry.json").read_text())["geometry"] == g.to_dict()
    mu = hu_to_mu(torch.from_numpy(load_ct(ct).hu.astype(np.float32)))[None, None]
    np.testing.assert_allclose(drr, project(mu, g, spacing)[0].numpy(), rtol=1e-6, atol=1e-7)
    for name, img in zip(("ap", "lateral"), drr):
        np.testing.assert_allclose(load_xray(out / f"{name}.png"), img / DRR_SCALE,
                                   atol=1 / 65535)
    with pytest.raises(InputError, match="--size"):
        main([str(ct), "--out", str(tmp_path / "bad"), "--size", "0"])
    assert not (tmp_path / "bad").exists()
