"""``python -m x2ct.projector``: DRRs as before, and simulated radiographs."""

import json

import numpy as np
import pytest

from x2ct.cli import InputError
from x2ct.data import centred_affine, read_radiograph, save_ct, spine_phantom
from x2ct.projector.__main__ import build_parser, main


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory):
    phantom = spine_phantom(shape=(32, 32, 40), spacing=(5.0, 5.0, 5.0), seed=0)
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    save_ct(path, phantom.hu, affine=centred_affine(phantom.hu.shape, (5.0,) * 3))
    return path


def test_drr_output_is_unchanged(ct_path, tmp_path):
    assert main([str(ct_path), "--out", str(tmp_path), "--size", "24"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ap.png", "drr.npy", "geometry.json", "lateral.png", "preview.png"]
    meta = json.loads((tmp_path / "geometry.json").read_text())
    assert set(meta) == {"geometry", "spacing", "step", "drr_scale", "views"}
    assert meta["geometry"]["sad"] == 541.0 and meta["geometry"]["sdd"] == 949.0
    assert np.load(tmp_path / "drr.npy").shape == (2, 24, 24)


def test_ideal_radiograph_is_the_drr(ct_path, tmp_path):
    main([str(ct_path), "--out", str(tmp_path / "drr"), "--size", "24"])
    g = json.loads((tmp_path / "drr" / "geometry.json").read_text())["geometry"]
    p = g["pixel_spacing"][0]
    main([str(ct_path), "--out", str(tmp_path / "rad"), "--radiograph", "--style", "ideal",
          "--bits", "16", "--sid", str(g["sdd"]), "--sod", str(g["sad"]),
          "--pixel-spacing", str(p), "--detector-mm", str(24 * p), str(24 * p),
          "--render-mm", str(p)])
    for name in ("ap", "lateral"):
        drr = read_radiograph(tmp_path / "drr" / f"{name}.png")
        ideal = read_radiograph(tmp_path / "rad" / f"{name}.png")
        assert ideal.intensity == drr.intensity == "normalised_drr"
        assert np.abs(ideal.pixels - drr.pixels).max() <= 2  # 16-bit levels
        assert ideal.geometry.pixel_spacing == pytest.approx(drr.geometry.pixel_spacing)
    line = np.load(tmp_path / "rad" / "line_integral.npy")
    np.testing.assert_allclose(line, np.load(tmp_path / "drr" / "drr.npy"), atol=1e-4)


def test_radiographs_png_and_dicom(ct_path, tmp_path):
    pytest.importorskip("pydicom")
    args = [str(ct_path), "--out", str(tmp_path), "--radiograph", "--format", "both",
            "--detector-mm", "96", "64", "--pixel-spacing", "1.0", "--render-mm", "2.0",
            "--kvp", "75", "--mas", "5", "--bits", "8"]
    assert main(args) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ap.dcm", "ap.png", "geometry.json", "lateral.dcm", "lateral.png",
                     "line_integral.npy", "preview.png"]
    for f in ("ap.png", "ap.dcm", "lateral.dcm"):
        r = read_radiograph(tmp_path / f)
        assert r.pixels.shape == (96, 64) and r.bits == 8 and r.intensity == "display"
        assert (r.geometry.sdd, r.geometry.sad, r.geometry.pixel_spacing) == (
            1000.0, 700.0, (1.0, 1.0))
        assert r.pixels.min() >= 0 and r.pixels.max() <= 255
    import pydicom

    ds = pydicom.dcmread(tmp_path / "ap.dcm")
    assert float(ds.KVP) == 75 and ds.Exposure == 5
    np.testing.assert_array_equal(read_radiograph(tmp_path / "ap.dcm").pixels,
                                  read_radiograph(tmp_path / "ap.png").pixels)


def test_random_style_is_seeded(ct_path, tmp_path):
    common = ["--radiograph", "--style", "random", "--detector-mm", "48", "48",
              "--pixel-spacing", "1.0", "--render-mm", "2.0"]
    for run, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        main([str(ct_path), "--out", str(tmp_path / run), "--seed", seed, *common])
    a, b, c = (json.loads((tmp_path / r / "geometry.json").read_text()) for r in "abc")
    assert a == b
    ap = [np.asarray(read_radiograph(tmp_path / r / "ap.png").pixels) for r in "abc"]
    np.testing.assert_array_equal(ap[0], ap[1])
    assert a != c or not np.array_equal(ap[0], ap[2])


def test_help_shows_defaults_and_bad_arguments_fail(ct_path, tmp_path):
    text = build_parser().format_help()
    assert "(default: 90.0)" in text and "(default: 0.2)" in text and "--render-mm" in text
    with pytest.raises(InputError, match="--sid .* must exceed --sod"):
        main([str(ct_path), "--out", str(tmp_path), "--radiograph", "--sid", "500",
              "--sod", "700"])
    with pytest.raises(InputError, match="--render-mm"):
        main([str(ct_path), "--out", str(tmp_path), "--radiograph", "--render-mm", "0.1"])
