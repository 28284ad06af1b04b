"""Procedural spine phantom: determinism, tissue values, labels, placement, command line.
(Measured anatomy: test_data_phantom_anatomy.py.)"""

import numpy as np
import pytest
from scipy import ndimage

from x2ct.data import DISC_LABEL, PhantomOptions, load_ct, spine_centre, spine_phantom
from x2ct.data.phantom import main, whole_body_grid

SHAPE, SPACING = (48, 48, 48), (3.0, 3.0, 3.0)
PLAIN = PhantomOptions(metal=False, arms=False)  # no metal: HU stays on the CT scale


@pytest.fixture(scope="module")
def lumbar():
    return spine_phantom(SHAPE, SPACING, seed=3, region="lumbar", options=PLAIN)


@pytest.fixture(scope="module")
def thoracic():
    return spine_phantom(SHAPE, SPACING, seed=3, region="thoracic", options=PLAIN)


def _vertebra_ids(labels):
    return sorted(int(i) for i in np.unique(labels) if 0 < i < DISC_LABEL)


def test_deterministic_per_seed(lumbar):
    again = spine_phantom(SHAPE, SPACING, seed=3, region="lumbar", options=PLAIN)
    assert np.array_equal(again.hu, lumbar.hu)
    assert np.array_equal(again.labels, lumbar.labels)
    assert again.info == lumbar.info
    other = spine_phantom(SHAPE, SPACING, seed=4, region="lumbar", options=PLAIN)
    assert np.abs(other.hu - lumbar.hu).mean() > 10.0
    assert not np.array_equal(other.labels, lumbar.labels)


def test_types_and_shapes():
    ph = spine_phantom((24, 28, 20), (3.0, 2.5, 4.0), seed=0)
    assert ph.hu.shape == ph.labels.shape == ph.metal.shape == (24, 28, 20)
    assert ph.hu.dtype == np.float32 and ph.labels.dtype == np.int16
    assert ph.metal.dtype == bool and isinstance(ph.info, dict)
    assert ph.spacing == (3.0, 2.5, 4.0)
    assert np.isfinite(ph.hu).all()


def test_tissue_values(lumbar):
    hu, labels = lumbar.hu, lumbar.labels
    vert = labels[(labels > 0) & (labels < DISC_LABEL)]
    assert vert.size > 0
    assert 150.0 <= np.median(hu[(labels > 0) & (labels < DISC_LABEL)]) <= 1900.0
    assert 40.0 <= np.median(hu[labels == DISC_LABEL]) <= 150.0
    # A 144 mm field lies inside a real-size body: no air at its lateral borders, where
    # the old shrunken body put it (the body is 280-380 mm wide).
    assert (hu[[0, -1], :, :] > -900).mean() > 0.9
    assert hu.max() <= 2100.0 and hu.min() >= -1100.0
    # Bone: cortical shell brighter than the cancellous core of the vertebrae.
    bone = (labels > 0) & (labels < DISC_LABEL)
    core = ndimage.binary_erosion(bone, iterations=2)
    shell = bone & ~ndimage.binary_erosion(bone)
    assert core.sum() > 20
    assert hu[shell].mean() > hu[core].mean() + 150.0
    assert 100.0 <= np.median(hu[core]) <= 450.0


def test_labels_lumbar_and_thoracic(lumbar, thoracic):
    ids = _vertebra_ids(lumbar.labels)
    assert len(ids) >= 3
    assert set(ids) <= set(range(17, 25)) | {26}
    assert {21, 22, 23} <= set(ids)  # L2-L4 around the centre of the view
    assert (lumbar.labels == DISC_LABEL).any()
    t_ids = _vertebra_ids(thoracic.labels)
    assert len(t_ids) >= 4
    assert set(t_ids) <= set(range(8, 21))
    # Consecutive levels: the labels form a contiguous run (sacrum 26 follows L5 = 24).
    run = [i for i in ids if i != 26]
    assert run == list(range(run[0], run[-1] + 1))
    assert t_ids == list(range(t_ids[0], t_ids[-1] + 1))


def test_column_is_ordered_superior_to_inferior(lumbar):
    # Superior is +Z: higher VerSe ids (more caudal) sit lower.
    labels = lumbar.labels
    ids = [i for i in _vertebra_ids(labels) if i != 26]
    z_means = [np.nonzero(labels == i)[2].mean() for i in ids]
    assert all(a > b for a, b in zip(z_means, z_means[1:]))


def test_air_outside_the_body_on_a_whole_body_grid():
    shape, offset = whole_body_grid(3, "lumbar", spacing=6.0, z_extent_mm=120.0)
    ph = spine_phantom(shape, 6.0, seed=3, offset_mm=offset, options=PLAIN)
    border = np.concatenate([ph.hu[[0, -1]].ravel(), ph.hu[:, [0, -1]].ravel()])
    assert np.all(border == -1000.0)  # no noise in air
    assert (ph.hu > -500).mean() > 0.3  # and the body fills much of it


def test_spine_is_centred(lumbar, thoracic):
    for ph in (lumbar, thoracic):
        c = spine_centre(ph.hu)  # centroid of bone, voxels
        offset_mm = (c - (np.array(SHAPE) - 1) / 2) * np.array(SPACING)
        assert np.all(np.abs(offset_mm[:2]) < 15.0), offset_mm


def test_offset_moves_the_whole_anatomy(lumbar):
    """A whole-voxel offset moves every structure by that many voxels (labels exactly;
    the noise texture stays on the grid) and nothing else."""
    moved = spine_phantom(SHAPE, SPACING, seed=3, region="lumbar", offset_mm=(6.0, -3.0, 9.0),
                          options=PLAIN)
    rolled = np.roll(lumbar.labels, (2, -1, 3), axis=(0, 1, 2))
    inner = (slice(4, -4),) * 3
    assert np.array_equal(moved.labels[inner], rolled[inner])
    assert not np.array_equal(moved.labels, lumbar.labels)
    zero = spine_phantom(SHAPE, SPACING, seed=3, region="lumbar", offset_mm=0.0, options=PLAIN)
    assert np.array_equal(zero.hu, lumbar.hu)
    with pytest.raises(ValueError, match="offset_mm"):
        spine_phantom(SHAPE, SPACING, seed=3, offset_mm=(1.0, float("nan"), 0.0))


def test_dataset_places_each_phantom_at_its_own_offset():
    import torch

    from x2ct.data import PhantomDataset, phantom_offset

    # max_shift_mm moves the anatomy of field-only phantoms (whole-body ones are placed by
    # ``placement``: tests/test_scene.py)
    plain = PhantomDataset(3, seed=10, shape=SHAPE, spacing=SPACING, whole_body=False)
    shifted = PhantomDataset(3, seed=10, shape=SHAPE, spacing=SPACING, max_shift_mm=6.0,
                             whole_body=False)
    offsets = np.array([phantom_offset(s, 6.0) for s in shifted.seeds])
    assert np.all(np.abs(offsets) <= 6.0) and len({tuple(o) for o in offsets}) == 3
    assert phantom_offset(10, 6.0) == phantom_offset(10, 6.0) and phantom_offset(10, 0) == (0, 0, 0)
    for i, offset in enumerate(offsets):
        a, b = plain[i]["labels"][0].numpy(), shifted[i]["labels"][0].numpy()
        # L3 (VerSe 22), in the middle of a lumbar phantom: wholly inside either way
        moved = np.argwhere(b == 22).mean(0) - np.argwhere(a == 22).mean(0)  # voxels
        np.testing.assert_allclose(moved * np.array(SPACING), offset, atol=0.5 * SPACING[0])
        assert not torch.equal(plain[i]["xrays"], shifted[i]["xrays"])
    with pytest.raises(ValueError, match="max_shift_mm"):
        PhantomDataset(1, max_shift_mm=-1.0)


def test_posterior_elements():
    ph = spine_phantom((64, 64, 48), (1.5, 1.5, 2.0), seed=1)
    labels, spacing = ph.labels, np.array(ph.spacing)
    ids = _vertebra_ids(labels)
    mid = ids[len(ids) // 2]
    idx = np.nonzero(labels == mid)
    x_mm = (idx[0] - (labels.shape[0] - 1) / 2) * spacing[0]
    y_mm = (idx[1] - (labels.shape[1] - 1) / 2) * spacing[1]
    # The body is anterior; the spinous process reaches far posterior (-Y), the
    # transverse processes far to both sides (+-X).
    assert y_mm.max() > 10.0 and y_mm.min() < -30.0
    assert x_mm.max() > 30.0 and x_mm.min() < -30.0
    # The arch is closed around the canal: in some axial slice the non-bone region has a
    # hole (the canal) not connected to the border.
    closed = False
    for z in np.unique(idx[2]):
        free, n = ndimage.label(labels[:, :, z] != mid)
        border = set(np.unique(np.concatenate([free[0], free[-1], free[:, 0], free[:, -1]])))
        sizes = ndimage.sum(np.ones_like(free), free, index=range(1, n + 1))
        if any(k + 1 not in border and s >= 20 for k, s in enumerate(sizes)):
            closed = True
            break
    assert closed


def test_thoracic_has_ribs_and_lungs(thoracic):
    hu, labels = thoracic.hu, thoracic.labels
    x_mm = (np.arange(SHAPE[0]) - (SHAPE[0] - 1) / 2) * SPACING[0]
    lateral = np.abs(x_mm) > 45.0
    ribs = (hu > 350) & (labels == 0) & lateral[:, None, None]
    assert ribs.sum() > 20
    assert (hu < -600).sum() > (hu == -1000).sum()  # lung inside the body besides air


def test_large_volume_runs():
    ph = spine_phantom(128, 2.0, seed=0)
    assert ph.hu.shape == (128, 128, 128)
    assert len(_vertebra_ids(ph.labels)) >= 5


def test_bad_arguments():
    with pytest.raises(ValueError, match="region"):
        spine_phantom(SHAPE, SPACING, region="cervical")
    with pytest.raises(ValueError, match="spacing"):
        spine_phantom(SHAPE, (2.0, 0.0, 2.0))
    with pytest.raises(ValueError, match="shape"):
        spine_phantom((32, 32), SPACING)
    with pytest.raises(TypeError, match="options"):
        spine_phantom(SHAPE, SPACING, options={"metal": True})
    for bad, field in [({"bmd": 5.0}, "bmd"), ({"contrast": "oral"}, "contrast"),
                       ({"fracture_grade": 4}, "fracture_grade"), ({"metal": 1}, "metal"),
                       ({"noise_std": float("nan")}, "noise_std"),
                       ({"fracture": False, "fracture_grade": 2}, "fracture_grade")]:
        with pytest.raises(ValueError, match=f"PhantomOptions.{field}"):
            PhantomOptions(**bad)


def test_command_line_writes_pairs(tmp_path, capsys):
    out = tmp_path / "phantoms"
    main(["--n", "2", "--out", str(out), "--shape", "24", "--spacing", "4", "--seed", "5",
          "--no-metal"])
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "phantom_0005_ct.nii.gz",
        "phantom_0005_seg-vert_msk.nii.gz",
        "phantom_0006_ct.nii.gz",
        "phantom_0006_seg-vert_msk.nii.gz",
    ]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[1].startswith("phantom_0006:")
    assert "phantom_0006_ct.nii.gz" in printed[1]
    assert printed[2] == f"wrote 2 phantom(s) phantom_0005 .. phantom_0006 in {out}"
    ref = spine_phantom(24, 4.0, seed=6, options=PhantomOptions(metal=False))
    ct = load_ct(out / "phantom_0006_ct.nii.gz")
    msk = load_ct(out / "phantom_0006_seg-vert_msk.nii.gz")
    assert np.array_equal(ct.hu, ref.hu)
    assert np.array_equal(msk.hu, ref.labels)
    assert ct.spacing == (4.0, 4.0, 4.0)


def test_command_line_defaults_whole_body_and_metal(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "(default: 90000)" in text and "--whole-body" in text and "--no-metal" in text
    out = tmp_path / "wb"
    main(["--n", "1", "--out", str(out), "--whole-body", "--spacing", "8", "--z-extent", "96",
          "--metal", "--no-ct-noise"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["phantom_90000_ct.nii.gz", "phantom_90000_metal_msk.nii.gz",
                     "phantom_90000_seg-vert_msk.nii.gz"]
    ct = load_ct(out / "phantom_90000_ct.nii.gz")
    shape, _ = whole_body_grid(90000, spacing=8.0, z_extent_mm=96.0,
                               options=PhantomOptions(metal=True, ct_noise=False))
    assert ct.hu.shape == shape and ct.hu.shape[0] * 8 >= 280  # the whole width
    assert np.all(ct.hu[[0, -1]] == -1000.0)
    assert load_ct(out / "phantom_90000_metal_msk.nii.gz").hu.max() == 1
    with pytest.raises(SystemExit):
        main(["--n", "1", "--out", str(out), "--bmd", "1"])


@pytest.mark.parametrize("region", ["lumbar", "thoracic"])
def test_many_seeds_are_finite_and_labelled(region):
    """Random draws across seeds (features, shallow bodies, short bowel segments) never
    give NaN, and every phantom keeps its column in view."""
    for seed in range(600, 612):
        ph = spine_phantom(16, 8.0, seed=seed, region=region)
        assert np.isfinite(ph.hu).all(), seed
        assert len(_vertebra_ids(ph.labels)) >= 3, seed
