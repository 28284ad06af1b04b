"""A spine CT crop (``x2ct.data.crop_around_spine``): a CT reconstructed on a small field
around the spine, as VerSe and CTSpine1K crops are; evaluate.py --crop-mm scores models on
such CTs."""

import numpy as np
import pytest

from x2ct.data import crop_around_spine, phantom_body


@pytest.fixture(scope="module")
def body():
    return phantom_body(90003, "lumbar", (2.0, 2.0, 2.0), (64, 64, 64))


def test_crop_keeps_every_voxel_where_it_lay_and_centres_the_spine(body):
    ct, labels = body
    crop, cut = crop_around_spine(ct, 136.0, labels)
    assert crop.hu.shape == (68, 68, ct.hu.shape[2]) and crop.spacing == ct.spacing
    # each crop voxel's world position (its affine) is the same voxel's in the whole CT
    start = np.linalg.solve(ct.affine, crop.affine @ [0, 0, 0, 1])[:3]
    np.testing.assert_allclose(start, np.round(start), atol=1e-6)
    a, b, c = (int(v) for v in np.round(start))
    assert c == 0
    np.testing.assert_array_equal(crop.hu, ct.hu[a:a + 68, b:b + 68])
    np.testing.assert_array_equal(cut, labels[a:a + 68, b:b + 68])
    # the labels' centroid in the middle of the crop, to half a voxel
    centroid = np.array([i.mean() for i in np.nonzero(cut > 0)])
    np.testing.assert_allclose(centroid[:2], (np.array(crop.hu.shape[:2]) - 1) / 2, atol=0.51)
    # the column lies inside (all but the widest tips: sacral alae, transverse processes)
    assert (cut > 0).sum() >= 0.99 * (labels > 0).sum()


def test_crop_without_labels_finds_the_spine_in_the_image(body):
    ct, labels = body
    by_labels, _ = crop_around_spine(ct, 120.0, labels)
    by_image, none = crop_around_spine(ct, 120.0)
    assert none is None
    shift_mm = (by_image.affine[:3, 3] - by_labels.affine[:3, 3])
    assert np.abs(shift_mm).max() <= 6.0  # the localiser's documented accuracy


def test_crop_wider_than_the_ct_keeps_it_whole_and_bad_widths_are_refused(body):
    ct, labels = body
    crop, _ = crop_around_spine(ct, 1e4, labels)
    assert crop.hu.shape == ct.hu.shape
    np.testing.assert_allclose(crop.affine, ct.affine)
    for bad in (0.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match="width_mm"):
            crop_around_spine(ct, bad, labels)
