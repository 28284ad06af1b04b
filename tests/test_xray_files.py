"""Radiograph files: PNG/DICOM/NumPy reading and writing with geometry and orientation."""

import json
import warnings

import numpy as np
import pytest

from x2ct.data import (
    RadiographView,
    read_geometry_json,
    read_radiograph,
    save_xray_png,
    view_angle,
    write_geometry_json,
    write_radiograph_dicom,
    write_radiograph_png,
    x2ct_orientation,
)
from x2ct.projector import DRR_SCALE, Geometry

pydicom = pytest.importorskip("pydicom")

H, W = 40, 30


def dotted(bits=12, row=10, col=5):
    """An image in x2ct's convention with a bright dot at (row, col) on a ramp."""
    top = 2**bits - 1
    img = np.tile(np.linspace(0.1, 0.5, W), (H, 1)) * top
    img[row, col] = top
    return np.round(img)


def geometry(angle=0.0, shape=(H, W)):
    return Geometry(sad=700.0, sdd=1000.0, detector_shape=shape, pixel_spacing=(0.2, 0.3),
                    angles=(angle,), detector_offset=(1.5, -2.0))


def dot(pixels):
    return np.unravel_index(np.argmax(pixels), pixels.shape)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_png_round_trip_with_geometry_json(tmp_path, bits):
    img = dotted(bits)
    write_radiograph_png(tmp_path / "ap.png", img, bits)
    write_geometry_json(tmp_path / "geometry.json",
                        [RadiographView("ap", "ap.png", geometry(), "display", bits,
                                        "MONOCHROME2", x2ct_orientation(0.0))])
    r = read_radiograph(tmp_path / "ap.png")  # picks up the geometry.json beside it
    np.testing.assert_array_equal(r.pixels, img)
    assert r.pixels.dtype == np.float64 and r.bits == bits and r.intensity == "display"
    assert r.geometry == geometry()
    assert r.source["pixel_spacing"].startswith("geometry.json")
    body = json.loads((tmp_path / "geometry.json").read_text())
    assert body["format"] == "x2ct-radiographs/1"
    assert body["views"][0]["sid_mm"] == 1000.0 and body["views"][0]["sod_mm"] == 700.0


def test_png_monochrome1_in_json_is_inverted(tmp_path):
    img = dotted(8)
    write_radiograph_png(tmp_path / "ap.png", 255 - img, 8)
    write_geometry_json(tmp_path / "views.json",
                        [RadiographView("ap", "ap.png", geometry(), "display", 8,
                                        "MONOCHROME1", ("L", "F"))])
    r = read_radiograph(tmp_path / "ap.png", geometry_json=tmp_path / "views.json")
    np.testing.assert_array_equal(r.pixels, img)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_round_trip(tmp_path, photometric):
    img = dotted(12)
    stored = img if photometric == "MONOCHROME2" else 4095 - img
    path = write_radiograph_dicom(tmp_path / "ap.dcm", stored, geometry(), 12, photometric,
                                  kvp=85.0, mas=20.0)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"  # DX Image Storage, presentation
    assert ds.ViewPosition == "AP" and list(ds.PatientOrientation) == ["L", "F"]
    assert ds.BitsAllocated == 16 and ds.BitsStored == 12 and ds.HighBit == 11
    assert "simulated" in ds.SeriesDescription.lower()
    assert ds.PhotometricInterpretation == photometric
    r = read_radiograph(path)
    np.testing.assert_array_equal(r.pixels, img)  # bone bright whatever was stored
    assert r.bits == 12 and r.intensity == "display"
    g = r.geometry
    assert (g.sad, g.sdd, g.pixel_spacing, g.angles) == (700.0, 1000.0, (0.2, 0.3), (0.0,))
    assert g.detector_shape == (H, W)
    assert r.source["sid"] == "dicom tag DistanceSourceToDetector"
    assert "ImagerPixelSpacing" in r.source["pixel_spacing"]


@pytest.mark.parametrize("orientation", [("L", "F"), ("R", "F"), ("L", "H"), ("R", "H"),
                                         ("F", "L"), ("H", "R")])
def test_dicom_orientation_is_undone(tmp_path, orientation):
    """A dot at the patient's right (AP: column < W/2 in x2ct's convention) comes back
    there whatever Patient Orientation the file was stored in."""
    img = dotted(16, row=10, col=5)
    path = write_radiograph_dicom(tmp_path / "ap.dcm", img, geometry(), 16,
                                  orientation=orientation)
    stored = pydicom.dcmread(path).pixel_array
    row, col = dot(stored)
    if orientation[0] == "R":
        assert col > stored.shape[1] / 2  # the file really is flipped
    if orientation[0] in "FH":
        assert stored.shape == (W, H)  # and transposed
    r = read_radiograph(path)
    assert r.orientation == orientation
    assert dot(r.pixels) == (10, 5)
    np.testing.assert_array_equal(r.pixels, img)


def test_lateral_view_positions(tmp_path):
    assert view_angle("ll") == 270.0 and view_angle("RL") == 90.0 and view_angle("pa") == 180.0
    assert x2ct_orientation(90.0) == ("P", "F") and x2ct_orientation(270.0) == ("A", "F")
    img = dotted(12)
    for angle, position in ((90.0, "RL"), (270.0, "LL"), (180.0, "PA")):
        path = write_radiograph_dicom(tmp_path / f"{position}.dcm", img,
                                      geometry(angle), 12)
        assert pydicom.dcmread(path).ViewPosition == position
        r = read_radiograph(path)
        assert r.geometry.angles == (angle,)
        np.testing.assert_array_equal(r.pixels, img)
    # An oblique view has no View Position; the C-arm angle carries it.
    path = write_radiograph_dicom(tmp_path / "oblique.dcm", img, geometry(30.0), 12)
    assert pydicom.dcmread(path).ViewPosition == ""
    r = read_radiograph(path)
    assert r.geometry.angles == pytest.approx((30.0,))
    np.testing.assert_array_equal(r.pixels, img)


def test_dicom_with_only_pixel_spacing(tmp_path):
    path = write_radiograph_dicom(tmp_path / "ap.dcm", dotted(12), geometry(), 12)
    ds = pydicom.dcmread(path)
    del ds.ImagerPixelSpacing
    ds.PixelSpacing = ["0.25", "0.25"]
    ds.save_as(tmp_path / "plain.dcm")
    r = read_radiograph(tmp_path / "plain.dcm")
    assert r.geometry.pixel_spacing == (0.25, 0.25)
    assert "PixelSpacing" in r.source["pixel_spacing"]
    assert "detector" in r.source["pixel_spacing"]
    # Calibrated at the patient: the detector's pixels are larger by SID / SOD.
    del ds.EstimatedRadiographicMagnificationFactor
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.save_as(tmp_path / "calibrated.dcm")
    r = read_radiograph(tmp_path / "calibrated.dcm")
    assert r.geometry.pixel_spacing == pytest.approx((0.25 * 1000 / 700,) * 2)
    assert "calibrated at the patient" in r.source["pixel_spacing"]


def test_dicom_modality_lut_and_missing_tags(tmp_path):
    img = dotted(12)
    path = write_radiograph_dicom(tmp_path / "ap.dcm", img, geometry(), 12)
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    del ds.PatientOrientation, ds.DistanceSourceToPatient
    ds.save_as(tmp_path / "rescaled.dcm")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        r = read_radiograph(tmp_path / "rescaled.dcm")
    np.testing.assert_allclose(r.pixels, 2 * img - 100)
    assert r.orientation is None and r.source["orientation"].startswith("default")
    assert r.geometry.sad == 700.0 and r.source["sod"] == "default"


def test_load_xray_reads_dicom_as_read_radiograph_does(tmp_path):
    """load_xray's DICOM values are read_radiograph's pixels (one reader: Modality LUT,
    MONOCHROME1 and INVERSE mirrored) normalised over the stored range after the LUT: a
    rescaled MONOCHROME1 file, a signed one and an INVERSE one agree with read_radiograph."""
    from x2ct.data import load_xray
    from x2ct.data.xray_files import dicom_value_range

    img = dotted(12)
    path = write_radiograph_dicom(tmp_path / "ap.dcm", 4095 - img, geometry(), 12,
                                  "MONOCHROME1")
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    ds.save_as(tmp_path / "m1.dcm")
    r = read_radiograph(tmp_path / "m1.dcm")
    np.testing.assert_allclose(r.pixels, 2 * img - 100)  # bone bright, LUT applied
    low, high = dicom_value_range(ds, 12)
    assert (low, high) == (-100.0, 2 * 4095 - 100.0)
    a = load_xray(tmp_path / "m1.dcm")
    assert a.dtype == np.float32 and a.shape == (H, W)
    np.testing.assert_allclose(a, (r.pixels - low) / (high - low), atol=1e-7)
    np.testing.assert_allclose(a, img / 4095, atol=1e-7)  # a linear rescale cancels

    path = write_radiograph_dicom(tmp_path / "m2.dcm", img, geometry(), 12)
    signed = np.arange(H * W).reshape(H, W) % 4096 - 2048  # the whole 12-bit signed range
    ds = pydicom.dcmread(path)
    ds.PixelRepresentation = 1
    ds.PixelData = signed.astype("<i2").tobytes()
    ds.save_as(tmp_path / "signed.dcm")
    r = read_radiograph(tmp_path / "signed.dcm")
    np.testing.assert_array_equal(r.pixels, signed)
    np.testing.assert_allclose(load_xray(tmp_path / "signed.dcm"), (signed + 2048) / 4095,
                               atol=1e-7)

    ds = pydicom.dcmread(path)
    ds.PresentationLUTShape = "INVERSE"
    ds.save_as(tmp_path / "inverse.dcm")
    np.testing.assert_allclose(read_radiograph(tmp_path / "inverse.dcm").pixels, 4095 - img)
    np.testing.assert_allclose(load_xray(tmp_path / "inverse.dcm"), 1 - img / 4095,
                               atol=1e-7)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_load_xray_plain_dicom_is_stored_over_its_bit_range(tmp_path, bits):
    """An unsigned file without rescale tags reads as before: exactly stored / (2**bits - 1)."""
    from x2ct.data import load_xray

    img = dotted(bits)
    img[0, :2] = (0, 2**bits - 1)
    path = write_radiograph_dicom(tmp_path / "ap.dcm", img, geometry(), bits)  # slope 1
    ds = pydicom.dcmread(path)
    del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType
    ds.save_as(tmp_path / "plain.dcm")
    expected = (img / float(2**bits - 1)).astype(np.float32)
    for name in ("ap.dcm", "plain.dcm"):
        a = load_xray(tmp_path / name)
        np.testing.assert_array_equal(a, expected)
        assert a[0, 0] == 0.0 and a[0, 1] == 1.0


def test_c_arm_positioner_angle(tmp_path):
    path = write_radiograph_dicom(tmp_path / "xa.dcm", dotted(12), geometry(270.0), 12)
    ds = pydicom.dcmread(path)
    del ds.ViewPosition
    ds.PositionerPrimaryAngle = 90  # LAO 90: detector at the patient's left
    ds.save_as(tmp_path / "xa2.dcm")
    r = read_radiograph(tmp_path / "xa2.dcm")
    assert r.geometry.angles == (270.0,) and "PositionerPrimaryAngle" in r.source["angle"]


def test_flags_override(tmp_path):
    path = write_radiograph_dicom(tmp_path / "ap.dcm", dotted(12), geometry(), 12)
    r = read_radiograph(path, pixel_spacing=(0.5, 0.5), sid_mm=1200.0, sod_mm=800.0)
    assert r.geometry.pixel_spacing == (0.5, 0.5) and r.geometry.sdd == 1200.0
    assert r.source["sid"] == "flag" and r.source["pixel_spacing"] == "flag"
    with pytest.raises(ValueError, match="does not fit a view at 90"):
        read_radiograph(path, view="rl")  # stored as ["L", "F"]: not a lateral


def test_old_drr_geometry_json(tmp_path):
    """The DRR command's 16-bit PNGs and its {"geometry": ...} sidecar."""
    drr = np.linspace(0.0, 6.0, H * W).reshape(H, W)
    save_xray_png(tmp_path / "ap.png", drr / DRR_SCALE)
    save_xray_png(tmp_path / "lateral.png", drr / DRR_SCALE)
    g = Geometry(detector_shape=(H, W), angles=(0.0, 90.0))
    (tmp_path / "geometry.json").write_text(json.dumps(
        {"geometry": g.to_dict(), "spacing": [1, 1, 1], "step": 0.5, "drr_scale": 8.0,
         "views": ["ap", "lateral"]}))
    views = read_geometry_json(tmp_path / "geometry.json")
    assert views["lateral"].geometry.angles == (90.0,) and views["ap.png"].name == "ap"
    r = read_radiograph(tmp_path / "lateral.png")
    assert r.intensity == "normalised_drr" and r.bits == 16
    np.testing.assert_allclose(r.pixels / 65535 * DRR_SCALE, drr, atol=DRR_SCALE / 65535)
    assert r.geometry == g.split()[1]


def test_npy_is_a_line_integral(tmp_path):
    np.save(tmp_path / "ap.npy", dotted(8) / 100)
    r = read_radiograph(tmp_path / "ap.npy", view="ap", pixel_spacing=(0.4, 0.4))
    assert r.intensity == "line_integral" and r.bits is None
    np.testing.assert_allclose(r.pixels, dotted(8) / 100)
    assert r.geometry.angles == (0.0,)


def test_unknown_angle_gives_no_geometry(tmp_path):
    write_radiograph_png(tmp_path / "x.png", dotted(8), 8)
    r = read_radiograph(tmp_path / "x.png")
    assert r.geometry is None and r.source["angle"] == "unknown"
    np.testing.assert_array_equal(r.pixels, dotted(8))


def test_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such radiograph"):
        read_radiograph(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="expected a radiograph"):
        read_radiograph(tmp_path / "x.jpg")
    write_radiograph_png(tmp_path / "ap.png", dotted(8), 8)
    (tmp_path / "g.json").write_text(json.dumps({"format": "x2ct-radiographs/1", "views": [
        {"file": "other.png", "angle_deg": 0, "pixel_spacing_mm": [0.2, 0.2],
         "shape": [H, W]}]}))
    with pytest.raises(ValueError, match="no view for ap.png"):
        read_radiograph(tmp_path / "ap.png", geometry_json=tmp_path / "g.json")
    (tmp_path / "g.json").write_text(json.dumps({"format": "x2ct-radiographs/1", "views": [
        {"file": "ap.png", "angle_deg": 0, "pixel_spacing_mm": [0.2, -1]}]}))
    with pytest.raises(ValueError, match="'pixel_spacing_mm' must be a positive"):
        read_geometry_json(tmp_path / "g.json")
    with pytest.raises(ValueError, match=r"display values must lie in \[0, 255\]"):
        write_radiograph_png(tmp_path / "ap.png", dotted(8) + 1000, 8)
    np.testing.assert_array_equal(read_radiograph(tmp_path / "ap.png").pixels, dotted(8))
    with pytest.raises(ValueError, match="but the geometry's detector"):
        write_radiograph_dicom(tmp_path / "a.dcm", dotted(8), geometry(shape=(5, 5)), 8)


def test_tiff_16_bit(tmp_path):
    from PIL import Image

    img = dotted(16).astype(np.uint16)
    Image.fromarray(img).save(tmp_path / "ap.tif")
    r = read_radiograph(tmp_path / "ap.tif", view="ap", pixel_spacing=(0.2, 0.3))
    assert r.bits == 16 and r.intensity == "display"
    np.testing.assert_array_equal(r.pixels, img)  # no Patient Orientation: AP display is ours
    assert r.source["orientation"].startswith("default")


def test_compressed_dicom_radiographs(tmp_path):
    """X-ray rooms often store DX compressed. RLE Lossless (pydicom decodes it itself)
    reads as the uncompressed file does, through both readers. A JPEG 2000 file whose
    codestream cannot be decoded is refused by both, naming the file, the transfer syntax
    and the decoders to install."""
    from x2ct.data import load_xray

    img = dotted(12)
    path = write_radiograph_dicom(tmp_path / "ap.dcm", img, geometry(), 12)
    ds = pydicom.dcmread(path)
    ds.compress(pydicom.uid.RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(read_radiograph(tmp_path / "rle.dcm").pixels, img)
    np.testing.assert_array_equal(load_xray(tmp_path / "rle.dcm"), load_xray(path))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(tmp_path / "j2k.dcm")
    for read in (read_radiograph, load_xray):
        with pytest.raises(ValueError, match=r"(?s)j2k\.dcm: cannot decode the pixel data "
                           r"\(transfer syntax 1\.2\.840\.10008\.1\.2\.4\.91 \(JPEG 2000.*"
                           r"pip install pylibjpeg"):
            read(tmp_path / "j2k.dcm")


def test_a_multi_frame_run_is_refused_naming_its_frames(tmp_path):
    """A C-arm exports a fluoroscopy run as one multi-frame file: x2ct needs one image a
    view, and both readers say so (a single-frame file with NumberOfFrames 1 reads as
    usual)."""
    img = dotted(12)
    path = write_radiograph_dicom(tmp_path / "ap.dcm", img, geometry(), 12)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 1
    ds.save_as(tmp_path / "one.dcm")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "one.dcm").pixels, img)
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    ds.save_as(tmp_path / "run.dcm")
    from x2ct.data import load_xray

    for read in (read_radiograph, load_xray):
        with pytest.raises(ValueError, match=r"run\.dcm: 3 frames \(a fluoroscopy or cine run"):
            read(tmp_path / "run.dcm")
