"""Radiographs onto the model's detector by their declared geometry; input checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from x2ct.data.radiographs import area_sample, check_views, resample_radiograph
from x2ct.projector import Geometry, on_model_detector, project

SPACING = (2.0, 2.0, 2.0)
NOMINAL = Geometry.fit((40, 40, 40), SPACING, (32, 32))  # a model's detector


def _ball(centre=(10.0, -6.0, 8.0), sigma=7.0, n=40) -> torch.Tensor:
    """A smooth ball (a Gaussian of ``sigma`` mm): point samples of its DRR equal pixel
    averages up to a small blur, so images of other pixel sizes can be compared."""
    ax = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * 2.0
    x, y, z = torch.meshgrid(ax, ax, ax, indexing="ij")
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return (0.02 * torch.exp(-r2 / (2 * sigma**2)))[None, None]


def _centroid(img) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    ii, jj = np.indices(img.shape)
    return np.array([(img * ii).sum(), (img * jj).sum()]) / img.sum()


@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_a_ball_lands_where_the_geometry_says(angle):
    # a radiograph at other distances, with 0.6 mm pixels on a larger detector whose centre
    # is offset from the isocentre's shadow
    taken = Geometry(sad=800.0, sdd=1100.0, detector_shape=(260, 300), pixel_spacing=(0.6, 0.6),
                     angles=(angle,), detector_offset=(4.0, -6.0))
    image = project(_ball(), taken, SPACING)[0, 0].numpy()
    view = resample_radiograph(image, taken, NOMINAL)
    direct = on_model_detector(NOMINAL, angle, 800.0, 1100.0)
    assert view.geometry == direct and view.coverage == 1.0
    ref = project(_ball(), direct, SPACING)[0, 0].numpy()
    assert np.abs(_centroid(view.image) - _centroid(ref)).max() < 0.1  # pixels
    # the same line integrals, up to the smoothing of the finer image
    assert np.abs(view.image - ref).max() < 0.05 * ref.max()  # 3% measured
    assert abs(view.image.sum() - ref.sum()) < 0.01 * ref.sum()


def test_area_sampling_is_the_mean_over_each_model_pixel():
    rng = np.random.default_rng(3)
    img = rng.random((40, 60))
    # boxes on whole pixels: the block means
    ii, jj = np.meshgrid(np.arange(10) * 4 + 1.5, np.arange(15) * 4 + 1.5, indexing="ij")
    blocks = img.reshape(10, 4, 15, 4).mean((1, 3))
    np.testing.assert_allclose(area_sample(img, ii, jj, (4.0, 4.0)), blocks, atol=1e-12)
    # a box of 2.5 pixels at 10.3 over rows valued by their index: 0.45 of row 9, rows 10
    # and 11, 0.05 of row 12
    rows = np.repeat(np.arange(40.0)[:, None], 60, axis=1)
    box = area_sample(rows, np.array([[10.3]]), np.array([[20.0]]), (2.5, 2.5))
    assert box[0, 0] == pytest.approx((0.45 * 9 + 10 + 11 + 0.05 * 12) / 2.5)
    # boxes narrower than a pixel: bilinear interpolation through the pixel centres
    ii, jj = np.meshgrid(np.linspace(0, 39, 77), np.linspace(0, 59, 91), indexing="ij")
    np.testing.assert_allclose(area_sample(img, ii, jj, (0.5, 0.5)),
                               ndimage.map_coordinates(img, [ii, jj], order=1), atol=1e-12)
    # outside the image its edge values continue
    corners = area_sample(img, np.array([[-20.0, -20.0], [50.0, 50.0]]),
                          np.array([[-30.0, 90.0], [-30.0, 90.0]]), (3.0, 3.0))
    np.testing.assert_allclose(corners, [[img[0, 0], img[0, -1]], [img[-1, 0], img[-1, -1]]])


def test_area_resampling_bins_noise_as_a_coarser_detector_does():
    # white noise on 0.5 mm pixels onto model pixels f = 9.9 times wider: a detector with
    # the model's pixels counts the quanta of f^2 fine pixels, so the variance falls
    # f^2-fold (a Gaussian of sigma (f - 1) / 2 fine pixels removes more, 4 pi sigma^2 =
    # 250-fold, as it blurs more: by 0.45 model pixels where a box blurs by 0.29)
    taken = Geometry(sad=NOMINAL.sad, sdd=NOMINAL.sdd, detector_shape=(520, 520),
                     pixel_spacing=(0.5, 0.5), angles=(0.0,))
    factor = NOMINAL.pixel_spacing[0] / 0.5
    noise = np.random.default_rng(4).normal(size=(520, 520))
    area = resample_radiograph(noise, taken, NOMINAL).image
    gauss = resample_radiograph(noise, taken, NOMINAL, antialias="gaussian").image
    assert area.var() * factor**2 == pytest.approx(1.0, rel=0.2)
    assert gauss.var() * factor**2 < 0.6
    with pytest.raises(ValueError, match="antialias"):
        resample_radiograph(noise, taken, NOMINAL, antialias="box")


def test_a_small_radiograph_is_padded_not_squeezed():
    taken = Geometry(sad=541.0, sdd=949.0, detector_shape=(60, 60), pixel_spacing=(1.0, 1.0),
                     angles=(0.0,))
    image = np.random.default_rng(0).random((60, 60))
    view = resample_radiograph(image, taken, NOMINAL)
    iso = NOMINAL.pixel_spacing[0] / NOMINAL.magnification  # mm per model pixel, isocentre
    covered = 60 * 1.0 / NOMINAL.magnification / iso  # model pixels the image spans
    assert view.coverage == pytest.approx((covered / 32) ** 2, rel=0.15)
    with pytest.raises(ValueError, match="detector"):
        resample_radiograph(image, dataclasses.replace(taken, detector_shape=(50, 60)), NOMINAL)


def test_blank_and_constant_images_are_refused():
    good = np.random.default_rng(1).random((32, 32))
    with pytest.raises(ValueError, match="lateral.png: the image is blank or constant"):
        check_views([good, np.full((32, 32), 7.0)], ["ap.png", "lateral.png"])
    with pytest.raises(ValueError, match="ap.png"):
        check_views([np.zeros((32, 32)), good], ["ap.png", "lateral.png"])
    check_views([good, good.T], ["ap.png", "lateral.png"])  # fine


def test_swapped_files_are_refused_by_their_declared_views(tmp_path):
    """AP and lateral files given in each other's place: their geometry.json says which
    view each is, and the model's order refuses them, naming the file."""
    from x2ct.data import (
        RadiographView,
        prepare_radiographs,
        write_geometry_json,
        write_radiograph_png,
        x2ct_orientation,
    )

    entries = []
    for name, angle in (("ap", 0.0), ("lateral", 90.0)):
        img = np.random.default_rng(int(angle)).random((200, 200)) * 255
        write_radiograph_png(tmp_path / f"{name}.png", img, 8)
        g = Geometry(sad=700.0, sdd=1000.0, detector_shape=(200, 200),
                     pixel_spacing=(0.8, 0.8), angles=(angle,))
        entries.append(RadiographView(name, f"{name}.png", g, "display", 8, "MONOCHROME2",
                                      x2ct_orientation(angle)))
    write_geometry_json(tmp_path / "geometry.json", entries)
    ok = prepare_radiographs([tmp_path / "ap.png", tmp_path / "lateral.png"], NOMINAL)
    assert ok.xrays.shape == (1, 2, 32, 32) and ok.intensity == "display"
    assert [g.angles[0] for g in ok.geometries] == [0.0, 90.0]
    with pytest.raises(ValueError, match="lateral.png: a view at 90 degrees where the model "
                                         "expects one near 0"):
        prepare_radiographs([tmp_path / "lateral.png", tmp_path / "ap.png"], NOMINAL)
