"""x2ct.data.locate_spine: the vertebral column found in whole-body CTs with the
distractors real chest and abdominal CTs carry (tests/localise_scenes.py).

The oracle is the phantom's own labels: the centroid of its vertebra voxels (discs left
out) in the slab z +- SLAB_HALF_MM, which the localiser never sees. Tolerance: 6 mm in x
and y (three voxels of the model's 2 mm field).
"""

from __future__ import annotations

import numpy as np
import pytest
from localise_scenes import (
    DISTRACTORS,
    Scene,
    add,
    crop,
    demineralise,
    instrumented_levels,
    make_scene,
    resample,
    true_centre,
)

from x2ct.data import CONFIDENCE_WARN, DISC_LABEL, SpineLocation, locate_spine, spine_phantom
from x2ct.data.localise import SLAB_HALF_MM

TOL_MM = 6.0


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


_BASE: dict[str, Scene] = {}


def scene(region: str, seed: int = 0) -> Scene:
    """A fresh copy of the clean whole-body scene (drawn once per region and seed)."""
    key = f"{region}-{seed}"
    if key not in _BASE:
        _BASE[key] = make_scene(region, seed=seed)
    s = _BASE[key]
    return Scene(s.hu.copy(), s.labels.copy(), s.spacing)


def check(sc: Scene, loc: SpineLocation, tol: float = TOL_MM) -> None:
    """The point and every line point at least a slab inside the found range lie within
    ``tol`` of the labels' centroid at their height."""
    assert loc.method == "image"
    err = loc.centre[:2] - true_centre(sc, loc.centre[2])
    assert np.all(np.abs(err) <= tol), f"point off by {err} mm"
    lo, hi = loc.z_range
    inner = loc.line[(loc.line[:, 2] >= lo + SLAB_HALF_MM) & (loc.line[:, 2] <= hi - SLAB_HALF_MM)]
    assert len(inner) >= 10
    err = np.abs(inner[:, :2] - true_centre(sc, inner[:, 2]))
    worst = np.argmax(err.max(1))
    assert np.all(err <= tol), f"line off by {err[worst]} mm at z = {inner[worst, 2]:.1f}"
    # The voxel coordinates are the same point (DESIGN.md's centred frame).
    n = np.array(sc.hu.shape)
    np.testing.assert_allclose(
        (loc.centre_voxel - (n - 1) / 2) * np.array(sc.spacing), loc.centre, atol=1e-9
    )


@pytest.mark.parametrize("region", ["lumbar", "thoracic"])
def test_clean_phantom(region):
    sc = scene(region)
    loc = locate_spine(sc.hu, sc.spacing)
    check(sc, loc)
    assert loc.confidence >= CONFIDENCE_WARN
    # The column runs through the whole 200 mm field; it is found over most of it.
    assert loc.z_range[1] - loc.z_range[0] >= 150.0
    assert np.all(np.diff(loc.line[:, 2]) > 0)
    assert loc.line.shape[1] == 3
    assert loc.z_range[0] <= loc.centre[2] <= loc.z_range[1]
    np.testing.assert_allclose(loc.centre[2], 0.5 * sum(loc.z_range))


# A known failure on the whole-body phantom (data/phantom), kept visible: osteoporotic
# arches (cortex near 300 HU after demineralise) leave the canal ring open at 250 HU (a
# second, lower ring threshold was tried: no better, and it doubled the search). strict:
# a fix turns this into a failure to remove the mark.
_OSTEO = "osteoporotic arches leave the canal ring open at 250 HU"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DISTRACTORS))
@pytest.mark.parametrize("region", ["lumbar", "thoracic"])
def test_each_distractor(region, name):
    sc = add(scene(region), name)
    if name == "spinal_metal":
        # At the fused levels, where the screws sit in the pedicles and body.
        z = sc.axes()[2]
        levels = instrumented_levels(sc)
        _, _, kk = np.nonzero(np.isin(sc.labels, levels))
        loc = locate_spine(sc.hu, sc.spacing, z_mm=float(z[kk].mean()))
    else:
        loc = locate_spine(sc.hu, sc.spacing)
    check(sc, loc)
    assert loc.confidence >= CONFIDENCE_WARN


@pytest.mark.parametrize("region", ["lumbar", "thoracic"])
def test_all_distractors(region):
    sc = add(scene(region), *DISTRACTORS)
    loc = locate_spine(sc.hu, sc.spacing)
    check(sc, loc)
    assert loc.confidence >= CONFIDENCE_WARN


@pytest.mark.parametrize("name", ["heart", "table"])
def test_today_bone_centroid_is_pulled_away_but_not_the_localiser(name):
    """Today's spine_centre (centroid of all bone > 250 HU) lands between the column and
    the contrast-filled heart, or the table; locate_spine stays on the column."""
    from x2ct.data import spine_centre

    sc = add(scene("lumbar"), name)
    old = (spine_centre(sc.hu) - (np.array(sc.hu.shape) - 1) / 2) * np.array(sc.spacing)
    assert np.abs(old[:2] - true_centre(sc, old[2])).max() > 20.0
    check(sc, locate_spine(sc.hu, sc.spacing))


@pytest.mark.xfail(strict=True, reason=_OSTEO)
@pytest.mark.parametrize("region", ["lumbar", "thoracic"])
def test_osteoporotic_bone(region):
    """Cancellous bone near 100 HU (no brighter than contrast) with the aorta against
    the body: the body's dark core still counts, the aorta does not."""
    sc = add(demineralise(scene(region), 0.35), "aorta")
    vert = (sc.labels > 0) & (sc.labels != DISC_LABEL)
    assert np.median(sc.hu[vert]) < 250.0
    check(sc, locate_spine(sc.hu, sc.spacing))


def test_off_centre():
    sc = make_scene("lumbar", seed=1, offset_mm=(30.0, -25.0, 10.0))
    loc = locate_spine(sc.hu, sc.spacing)
    check(sc, loc)
    # Independent of the mm frame: the labels' voxel centroid in the slab.
    z = sc.axes()[2]
    i, j, _ = np.nonzero(
        (sc.labels > 0)
        & (sc.labels != DISC_LABEL)
        & (np.abs(z - loc.centre[2]) <= SLAB_HALF_MM)[None, None, :]
    )
    np.testing.assert_allclose(loc.centre_voxel[:2], [i.mean(), j.mean()], atol=TOL_MM / 2.0)


@pytest.mark.parametrize("region", ["lumbar", "thoracic"])
def test_anisotropic_spacing(region):
    sc = resample(scene(region), (0.8, 0.8, 3.0))
    assert sc.hu.shape == (600, 425, 66)
    check(sc, locate_spine(sc.hu, sc.spacing))


def test_height_given():
    sc = scene("thoracic")
    for z in (-50.0, 30.0):
        loc = locate_spine(sc.hu, sc.spacing, z_mm=z)
        assert loc.centre[2] == z
        err = loc.centre[:2] - true_centre(sc, z)
        assert np.all(np.abs(err) <= TOL_MM), err
    with pytest.raises(ValueError, match="outside the column"):
        locate_spine(sc.hu, sc.spacing, z_mm=400.0)


@pytest.mark.parametrize("region", ["lumbar", "thoracic"])
def test_body_cut_at_the_skin(region):
    """A field of view narrower than the patient: both flanks cut, asymmetrically."""
    sc = crop(add(scene(region), "table", "aorta"), x_mm=(-130.0, 90.0))
    body = sc.hu > -500
    assert body[0].any() and body[-1].any()  # the body reaches both x borders
    check(sc, locate_spine(sc.hu, sc.spacing))


@pytest.mark.parametrize("region", ["lumbar", "thoracic"])
def test_small_field_of_view(region):
    """A 150 mm spine reconstruction, not centred on the spine: little besides it."""
    sc = crop(add(scene(region), "aorta", "spinal_metal"), x_mm=(-65, 85), y_mm=(-80, 70))
    assert sc.hu.shape[:2] == (76, 75)
    check(sc, locate_spine(sc.hu, sc.spacing))


def test_mask_gives_the_labels_centroid():
    sc = scene("lumbar")
    water = np.where(sc.hu > -500, 0.0, -1000.0).astype(np.float32)  # no bone at all
    for z_mm in (None, -30.0):
        loc = locate_spine(water, sc.spacing, mask=sc.labels, z_mm=z_mm)
        assert loc.method == "mask" and loc.confidence == 1.0
        z = sc.axes()[2]
        vert = (sc.labels > 0) & (sc.labels != DISC_LABEL)
        zz = np.nonzero(vert.any((0, 1)))[0]
        assert loc.z_range == (z[zz[0]], z[zz[-1]])
        z0 = 0.5 * (z[zz[0]] + z[zz[-1]]) if z_mm is None else z_mm
        i, j, k = np.nonzero(vert & (np.abs(z - z0) <= SLAB_HALF_MM)[None, None, :])
        expect = np.array([i.mean(), j.mean()])
        np.testing.assert_allclose(loc.centre_voxel[:2], expect, atol=1e-6)
        assert loc.centre[2] == z0
        assert len(loc.line) == len(zz)


def test_bad_masks():
    sc = scene("lumbar")
    with pytest.raises(ValueError, match="empty"):
        locate_spine(sc.hu, sc.spacing, mask=np.where(sc.labels == DISC_LABEL, DISC_LABEL, 0))
    with pytest.raises(ValueError, match="shape"):
        locate_spine(sc.hu, sc.spacing, mask=sc.labels[:-1])


def _grid(shape, spacing):
    ax = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    return ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]


def test_no_column_raises():
    shape, spacing = (150, 150, 80), (2.0, 2.0, 2.0)
    gx, gy, gz = _grid(shape, spacing)
    ellipse = np.broadcast_to((gx / 120) ** 2 + (gy / 90) ** 2 <= 1, shape)
    water = np.where(ellipse, 0.0, -1000.0).astype(np.float32)
    with pytest.raises(ValueError, match="no bone"):
        locate_spine(water, spacing)
    # A head: a skull around brain, no canal below it.
    r = np.sqrt((gx / 80) ** 2 + (gy / 95) ** 2 + (gz / 75) ** 2)
    head = np.where(r <= 1, np.where(r >= 0.92, 1200.0, 35.0), -1000.0).astype(np.float32)
    with pytest.raises(ValueError, match="no vertebral"):
        locate_spine(head, spacing)
    # Thighs: femoral shafts are bony rings around fatty marrow, with no body in front.
    legs = np.full(shape, -1000.0, np.float32)
    for side in (-1, 1):
        d = np.broadcast_to(np.hypot(gx - side * 60, gy), shape)
        legs[d <= 55] = -100.0
        legs[d <= 45] = 50.0
        legs[d <= 14] = 1300.0
        legs[d <= 8] = -60.0
    with pytest.raises(ValueError, match="no vertebral"):
        locate_spine(legs, spacing)
    with pytest.raises(ValueError, match="no body"):
        locate_spine(np.full(shape, -1000.0, np.float32), spacing)


def test_two_columns_are_not_trusted():
    """Two spines side by side (two patients in one field): either may be returned, but
    the confidence says the answer is ambiguous."""
    sc = crop(scene("lumbar"), x_mm=(-110.0, 110.0))
    twin = np.concatenate([sc.hu, sc.hu], axis=0)
    loc = locate_spine(twin, sc.spacing)
    assert loc.confidence < CONFIDENCE_WARN


def test_bad_input():
    hu = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="spacing"):
        locate_spine(hu, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        locate_spine(hu, (1.0, 1.0))
    with pytest.raises(ValueError, match="volume"):
        locate_spine(hu[0], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="z_mm"):
        locate_spine(hu, (1.0, 1.0, 1.0), z_mm=float("nan"))


@pytest.mark.slow
def test_large_volume():
    """A 512 x 512 x 300 float32 CT (0.67 mm voxels: the phantom upsampled 3x by
    repetition, padded; the centred frame is unchanged) runs on the working copy."""
    ph = spine_phantom((170, 170, 100), 2.0, seed=3, region="lumbar")
    hu = np.full((512, 512, 300), -1000.0, np.float32)
    for a in range(3):
        for b in range(3):
            for c in range(3):
                hu[1 + a : 511 : 3, 1 + b : 511 : 3, c::3] = ph.hu
    loc = locate_spine(hu, (2 / 3, 2 / 3, 2 / 3))
    sc = Scene(ph.hu, ph.labels, ph.spacing)
    err = loc.centre[:2] - true_centre(sc, loc.centre[2])
    assert np.all(np.abs(err) <= TOL_MM), err
