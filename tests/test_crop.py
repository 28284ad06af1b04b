"""A spine CT crop (``x2ct.data.crop_around_spine``): a CT reconstructed on a small field
around the spine, as VerSe and CTSpine1K crops are; evaluate.py --crop-mm scores models on
such CTs with the field where it lay in the whole CT."""

import numpy as np
import pytest

from x2ct.data import crop_around_spine, default_geometry, locate, phantom_body, phantom_case


def _world(image, centred_mm):
    """World (RAS mm) of a point given in an image's centred frame (2 mm voxels)."""
    voxel = np.asarray(centred_mm) / 2.0 + (np.array(image.hu.shape) - 1) / 2
    return image.affine @ [*voxel, 1.0]


@pytest.fixture(scope="module")
def body():
    return phantom_body(90002, "lumbar", (2.0, 2.0, 2.0), (64, 64, 64))


def test_crop_keeps_every_voxel_where_it_lay_and_centres_the_spine(body):
    ct, labels = body
    spine = locate(ct.hu, ct.spacing, labels)
    crop, cut, inside = crop_around_spine(ct, 136.0, spine, labels)
    assert crop.hu.shape == (68, 68, ct.hu.shape[2]) and crop.spacing == ct.spacing
    # each crop voxel's world position (its affine) is the same voxel's in the whole CT
    start = np.linalg.solve(ct.affine, crop.affine @ [0, 0, 0, 1])[:3]
    np.testing.assert_allclose(start, np.round(start), atol=1e-6)
    a, b, c = (int(v) for v in np.round(start))
    assert c == 0
    np.testing.assert_array_equal(crop.hu, ct.hu[a:a + 68, b:b + 68])
    np.testing.assert_array_equal(cut, labels[a:a + 68, b:b + 68])
    # the spine, in the crop's centred frame, within half a voxel of its middle and at the
    # same world position as in the whole CT
    assert np.abs(np.asarray(inside.centre[:2])).max() <= 1.0 + 1e-9
    np.testing.assert_allclose(_world(crop, inside.centre), _world(ct, spine.centre), atol=1e-6)


def test_the_cropped_case_has_the_same_field_and_fainter_x_rays():
    """The user's path, the spine found in the image: the field (the truth) is the whole
    CT's, voxel for voxel; the X-rays miss the body outside the crop."""
    geometry = default_geometry((64, 64, 64), (2.0, 2.0, 2.0))
    kw = dict(locate_by="image")
    whole = phantom_case(90002, "lumbar", (64, 64, 64), (2.0, 2.0, 2.0), geometry, **kw)
    cut = phantom_case(90002, "lumbar", (64, 64, 64), (2.0, 2.0, 2.0), geometry,
                       crop_mm=136.0, **kw)
    np.testing.assert_allclose(cut.affine, whole.affine, atol=1e-6)  # the field, in the world
    np.testing.assert_allclose(cut.hu.numpy(), whole.hu.numpy(), atol=0.05)  # float rounding
    np.testing.assert_array_equal(cut.labels.numpy(), whole.labels.numpy())
    assert float(cut.drr.mean()) < 0.8 * float(whole.drr.mean())
    assert cut.info["truncation"] > 0.5 and whole.info["truncation"] < 0.05


def test_crop_wider_than_the_ct_keeps_it_whole_and_bad_input_is_refused(body):
    ct, labels = body
    spine = locate(ct.hu, ct.spacing, labels)
    crop, _, inside = crop_around_spine(ct, 1e4, spine, labels)
    assert crop.hu.shape == ct.hu.shape
    np.testing.assert_allclose(crop.affine, ct.affine)
    assert inside.centre == pytest.approx(spine.centre)
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match="width_mm"):
            crop_around_spine(ct, bad, spine, labels)
    with pytest.raises(ValueError, match="label mask has shape"):
        crop_around_spine(ct, 136.0, spine, labels[:-1])


def test_crop_range_draws_its_fraction_and_log_uniform_widths():
    """CropRange cuts its fraction of cases, to widths log-uniform in its range."""
    from x2ct.data import CropRange

    rng = np.random.default_rng(0)
    crops = CropRange(0.3, 136.0, 360.0)
    widths = [crops.draw(rng) for _ in range(4000)]
    cut = np.array([w for w in widths if w is not None])
    assert abs(len(cut) / 4000 - 0.3) < 0.03  # binomial sd 0.007
    assert cut.min() >= 136.0 and cut.max() <= 360.0
    u = np.log(cut / 136.0) / np.log(360.0 / 136.0)  # uniform on [0, 1] if log-uniform
    assert abs(u.mean() - 0.5) < 0.03 and abs(u.var() - 1 / 12) < 0.01
    assert all(CropRange(0.0).draw(rng) is None for _ in range(50))
    assert all(CropRange(1.0, 200.0, 200.0).draw(rng) == pytest.approx(200.0) for _ in range(50))
    for bad in ((1.5, 136.0, 360.0), (-0.1, 136.0, 360.0), (0.3, 0.0, 360.0),
                (0.3, 360.0, 136.0), (0.3, 136.0, float("nan"))):
        with pytest.raises(ValueError, match="CropRange"):
            CropRange(*bad)


def test_training_crops_cut_the_x_rays_and_keep_the_field():
    """A dataset with crops makes the same cases (field, placement, views) as without,
    with X-rays of the cut CT alone: nowhere brighter in line integral, and fainter in all;
    a width that holds the field after its shift and turn keeps the target unchanged."""
    from x2ct.data import CropRange, PhantomDataset, PlacementRange
    from x2ct.projector import AcquisitionRange

    kw = dict(n=2, seed=90010, shape=(32, 32, 32), spacing=(4.0, 4.0, 4.0),
              placement=PlacementRange(), placements=2, cache_dir=False, cache_size=0,
              acquisitions=AcquisitionRange((600.0, 1200.0), (1.2, 1.6), 3.0))
    whole = PhantomDataset(**kw)
    cut = PhantomDataset(**kw, crops=CropRange(1.0, 240.0, 240.0))  # cut below a torso's width
    for i in range(len(whole)):
        a, b = whole[i], cut[i]
        np.testing.assert_allclose(b["ct"].numpy(), a["ct"].numpy(), atol=1e-4)
        np.testing.assert_array_equal(b["views"].numpy(), a["views"].numpy())
        np.testing.assert_allclose(b["drr_field"].numpy(), a["drr_field"].numpy(), atol=1e-4)
        assert float((b["drr"] - a["drr"]).max()) < 1e-3
        assert float(b["drr"].mean()) < 0.95 * float(a["drr"].mean())
    with pytest.raises(ValueError, match="CropRange"):
        PhantomDataset(**kw, crops=(0.3, 136.0, 360.0))
    with pytest.raises(ValueError, match="whole_body"):
        PhantomDataset(**{**kw, "whole_body": False}, crops=CropRange(0.3))


def test_latent_crops_flag_is_checked(capsys):
    """train/latent.py --crops: a fraction outside [0, 1] or widths out of order are refused
    by name, with or without a fraction; 0 (the default) cuts nothing, so runs and caches
    made before the flag keep theirs."""
    from x2ct.train.latent import crop_range, parse_args

    for bad in (["1.5", "136", "360"], ["-0.1", "136", "360"], ["nan", "136", "360"],
                ["0.3", "360", "136"], ["0", "360", "136"]):
        with pytest.raises(SystemExit):
            parse_args(["--crops", *bad])
        assert "CropRange" in capsys.readouterr().err
    assert crop_range(parse_args([])) is None
    # no crops, whatever the widths, is the default's run (resumable as it)
    assert parse_args(["--crops", "0", "100", "200"]).crops == parse_args([]).crops
    assert crop_range(parse_args(["--crops", "0.3", "136", "360"])).fraction == 0.3
