"""The field cut from a body and X-rays through the whole body (x2ct.data.scene)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from x2ct.data.scene import (
    Placement,
    antialias,
    body_truncation,
    field_affine,
    random_placement,
    render_drr,
    sample_field,
)
from x2ct.projector import Geometry, hu_to_mu, project

SPACING = (2.0, 2.0, 2.0)


def _body(shape=(40, 36, 30), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1000, 1500, shape).astype(np.float32)


def test_identity_placement_returns_the_volume():
    body = _body()
    out = sample_field(body, SPACING, Placement((0.0, 0.0, 0.0)), body.shape, SPACING)
    np.testing.assert_allclose(out.numpy(), body, atol=0.05)  # float32 grid coordinates


def test_shift_by_whole_voxels_is_a_crop():
    body = _body()
    place = Placement((4.0, -6.0, 2.0))  # (2, -3, 1) voxels
    out = sample_field(body, SPACING, place, (20, 20, 16), SPACING).numpy()
    # field voxel k sits at body index k - (n_f - 1)/2 + (n_b - 1)/2 + shift
    start = [(nb - nf) // 2 + s for nb, nf, s in zip(body.shape, (20, 20, 16), (2, -3, 1))]
    ref = body[start[0] : start[0] + 20, start[1] : start[1] + 20, start[2] : start[2] + 16]
    np.testing.assert_allclose(out, ref, atol=0.05)  # float32 grid coordinates


def test_quarter_turn_about_the_body_axis_is_rot90():
    body = _body((30, 30, 10))
    place = Placement.from_angles((0.0, 0.0, 0.0), turn_deg=90.0)
    out = sample_field(body, SPACING, place, body.shape, SPACING).numpy()
    # p_body = Rz(90) p_field: field (x, y) samples the body at (-y, x)
    ref = np.rot90(body, k=-1, axes=(0, 1))
    np.testing.assert_allclose(out, ref, atol=0.05)  # float32 grid coordinates


def test_outside_the_body_is_air_and_nearest_keeps_labels():
    labels = np.zeros((20, 20, 20), np.float32)
    labels[8:12, 8:12, 8:12] = 22
    place = Placement((3.0, 0.0, 0.0))
    out = sample_field(labels, SPACING, place, (30, 20, 20), SPACING, mode="nearest", fill=0.0)
    assert set(np.unique(out.numpy())) <= {0.0, 22.0}
    hu = sample_field(_body((20, 20, 20)), SPACING, place, (30, 20, 20), SPACING)
    assert float(hu[0].max()) == -1000.0 and float(hu[-1].max()) == -1000.0


def test_whole_body_xray_is_the_sum_of_field_and_rest():
    body = _body((48, 40, 30))
    inside = np.zeros_like(body, dtype=bool)
    inside[12:36, 10:30, 5:25] = True
    field_part = np.where(inside, body, -1000.0)  # mu 0 outside
    rest = np.where(inside, -1000.0, body)
    g = Geometry.fit((24, 20, 20), SPACING, (16, 16))
    place = Placement.from_angles((1.0, -2.0, 3.0), turn_deg=7.0, tilt_x_deg=3.0)
    whole = render_drr(body, SPACING, place, g)
    parts = render_drr(field_part, SPACING, place, g) + render_drr(rest, SPACING, place, g)
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-5)
    assert float((whole - render_drr(field_part, SPACING, place, g)).abs().max()) > 0.1


def test_xrays_through_a_placed_body_equal_xrays_of_the_cut_field():
    # anatomy well inside the field: rendering the body along the placed views must equal
    # rendering the field cut from it along the nominal views (a whole-voxel shift, so the
    # cut is exact)
    body = np.full((50, 50, 40), -1000.0, np.float32)
    body[20:34, 16:30, 12:26] = 400.0
    body[24:28, 20:24, 15:22] = 1500.0
    place = Placement((6.0, 4.0, 2.0))
    shape = (24, 24, 20)
    field = sample_field(body, SPACING, place, shape, SPACING)
    g = Geometry.fit(shape, SPACING, (20, 20))
    a = render_drr(body, SPACING, place, g)
    b = project(hu_to_mu(field)[None, None], g, SPACING)[0]
    assert float((a - b).abs().max()) < 1e-3 * float(b.max())


def test_random_placement_stays_in_its_ranges_and_is_seeded():
    draws = [random_placement((1.0, 2.0, 3.0), np.random.default_rng(s), 20.0, 10.0, 5.0)
             for s in range(50)]
    shifts = np.array([p.centre for p in draws]) - np.array([1.0, 2.0, 3.0])
    assert np.abs(shifts).max() <= 20.0 and np.abs(shifts).max() > 15.0
    # the field's z axis tilts by at most the combined tilt; its x axis turns within 10 deg
    for p in draws:
        z_axis = p.matrix[:, 2]
        assert np.degrees(np.arccos(np.clip(z_axis[2], -1, 1))) <= 5.0 * np.sqrt(2) + 1e-6
    again = random_placement((1.0, 2.0, 3.0), np.random.default_rng(7), 20.0, 10.0, 5.0)
    assert again == draws[7]


def test_field_affine_places_the_field_in_the_scanner_frame():
    body_shape, body_spacing = (40, 36, 30), (1.5, 1.5, 3.0)
    body_affine = np.diag([1.5, 1.5, 3.0, 1.0])
    body_affine[:3, 3] = (-100.0, 50.0, 20.0)
    place = Placement.from_angles((5.0, -3.0, 6.0), turn_deg=30.0)
    aff = field_affine(body_affine, body_shape, body_spacing, place, (8, 8, 8), (2.0, 2.0, 2.0))
    centre_voxel = np.array([3.5, 3.5, 3.5, 1.0])
    body_index = (np.array(body_shape) - 1) / 2 + np.array(place.centre) / np.array(body_spacing)
    expected = body_affine @ np.append(body_index, 1.0)
    np.testing.assert_allclose(aff @ centre_voxel, expected, atol=1e-9)
    # one field voxel along x moves 2 mm along the field's turned x axis
    step = aff @ np.array([4.5, 3.5, 3.5, 1.0]) - aff @ centre_voxel
    np.testing.assert_allclose(step[:3], 2.0 * place.matrix[:, 0], atol=1e-9)


def test_antialias_only_when_coarser_and_truncation_measure():
    v = _body((20, 20, 20))
    assert antialias(v, (2.0, 2.0, 2.0), (2.0, 2.0, 2.0)) is v
    smooth = antialias(v, (0.5, 0.5, 2.0), (2.0, 2.0, 2.0))
    assert smooth.std() < v.std()
    air = np.full((20, 20, 10), -1000.0, np.float32)
    air[5:15, 5:15] = 40.0
    assert body_truncation(air) == 0.0
    cut = air.copy()
    cut[:, 5:15] = 40.0  # body reaches the y faces
    assert body_truncation(cut) > 0.1


def test_placement_rejects_non_rotations():
    with pytest.raises(ValueError, match="rotation"):
        Placement((0.0, 0.0, 0.0), ((1, 0, 0), (0, 1, 0), (0, 0, -1)))
    p = Placement.from_angles((1.0, 2.0, 3.0), 10.0, 2.0, -3.0)
    assert Placement.from_dict(p.to_dict()) == p
