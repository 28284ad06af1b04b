"""A DICOM CT series read as a CTImage (data/dicom_ct.py, ``load_ct(folder)``), checked
against the NIfTI it was made from and against ITK/GDCM (3D Slicer's reader) reading the
same files; series a clinic may export wrongly are refused by name."""

import math

import numpy as np
import pytest

from x2ct.data import centred_affine, ct_case, default_geometry, load_ct, save_ct, spine_phantom
from x2ct.data.dicom_ct import load_dicom_series
from x2ct.eval.export import write_dicom_series

pydicom = pytest.importorskip("pydicom")


def _oblique() -> np.ndarray:
    a, b = math.radians(20), math.radians(10)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return np.vstack([np.c_[rz @ rx @ np.diag([0.9, 1.0, 2.0]), [5.0, -3.0, 7.0]], [0, 0, 0, 1]])


AFFINES = {
    "ras": centred_affine((11, 13, 7), (0.8, 1.2, 2.5)),
    # stored left-posterior-inferior with an offset
    "lpi": np.array([[-0.7, 0, 0, 30.0], [0, -1.1, 0, -12.0], [0, 0, -3.0, 55.0], [0, 0, 0, 1]]),
    "oblique": _oblique(),
}


def _nifti_and_series(tmp_path, affine, shape=(11, 13, 7)):
    """A NIfTI CT of integer HU (what a DICOM series stores exactly) and its series."""
    hu = np.random.default_rng(0).integers(-1000, 2000, shape).astype(np.float32)
    save_ct(tmp_path / "ct.nii.gz", hu, affine=affine)
    ct = load_ct(tmp_path / "ct.nii.gz")
    write_dicom_series(tmp_path / "dicom", ct.hu, ct.affine)
    return ct, tmp_path / "dicom"


@pytest.mark.parametrize("name", list(AFFINES))
def test_series_reads_as_the_nifti_it_was_written_from(tmp_path, name):
    """The same HU at the same RAS voxels and the same affine as ``load_ct`` of the NIfTI,
    whatever order the files are named in."""
    ct, folder = _nifti_and_series(tmp_path, AFFINES[name])
    files = sorted(folder.glob("*.dcm"))
    nested = folder / "PA000" / "ST000" / "SE000"  # as a PACS export nests one series
    nested.mkdir(parents=True)
    for k, f in enumerate(np.random.default_rng(1).permutation(len(files))):
        files[f].rename(nested / f"IM{k:03d}")  # no suffix, names out of slice order
    read = load_ct(folder)
    assert read.hu.shape == ct.hu.shape
    np.testing.assert_allclose(read.affine, ct.affine, atol=1e-4)
    np.testing.assert_allclose(read.spacing, ct.spacing, rtol=1e-5)
    np.testing.assert_array_equal(read.hu, ct.hu)


@pytest.mark.parametrize("name", ["lpi", "oblique"])
def test_itk_reads_the_series_as_x2ct_does(tmp_path, name):
    """ITK with GDCM loads the series; resampled onto x2ct's reading of it (saved as NIfTI),
    every voxel has the same HU: the two readers place the slices alike."""
    sitk = pytest.importorskip("SimpleITK")
    _, folder = _nifti_and_series(tmp_path, AFFINES[name])
    ours = load_dicom_series(folder)
    save_ct(tmp_path / "ours.nii.gz", ours.hu, affine=ours.affine)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    grid = sitk.ReadImage(str(tmp_path / "ours.nii.gz"))
    on_grid = sitk.Resample(series, grid, sitk.Transform(), sitk.sitkNearestNeighbor, -5000.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_grid), sitk.GetArrayFromImage(grid))


def test_rescale_is_applied_per_slice_and_scouts_are_left_out(tmp_path):
    ct, folder = _nifti_and_series(tmp_path, AFFINES["ras"])
    files = sorted(folder.glob("*.dcm"))
    ds = pydicom.dcmread(files[3])  # stored as (HU + 1024) / 2 with slope 2, intercept -1024
    stored = ds.pixel_array.astype(np.int32)
    ds.PixelData = (stored // 2).astype(np.uint16).tobytes()
    ds.RescaleSlope = "2"
    ds.save_as(files[3])
    expected = ct.hu.copy()
    k = int(np.argmin([abs(float(pydicom.dcmread(f).ImagePositionPatient[2])
                           - float(ds.ImagePositionPatient[2])) for f in files]))
    expected[:, :, k] = 2 * np.floor((expected[:, :, k] + 1024) / 2) - 1024
    scout = pydicom.dcmread(files[0])  # a localizer of another series in the same folder
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SeriesInstanceUID = pydicom.uid.generate_uid()
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    scout.save_as(folder / "scout.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    read = load_ct(folder)
    np.testing.assert_array_equal(read.hu, expected)


def test_one_of_several_series_is_chosen_by_number_or_uid(tmp_path):
    """A flat study export: soft-tissue and bone reconstructions in one folder."""
    ct, folder = _nifti_and_series(tmp_path, AFFINES["ras"])
    write_dicom_series(tmp_path / "bone", np.full_like(ct.hu, 700.0), AFFINES["ras"],
                       series_number=3)
    for f in (tmp_path / "bone").glob("*.dcm"):
        f.rename(folder / f"bone_{f.name}")
    with pytest.raises(ValueError, match="2 CT series.*--series"):
        load_ct(folder)
    np.testing.assert_array_equal(load_ct(folder, series=1001).hu, ct.hu)
    assert float(load_ct(folder, series="3").hu.mean()) == 700.0
    uid = str(pydicom.dcmread(next(folder.glob("bone_*"))).SeriesInstanceUID)
    assert float(load_ct(folder, series=uid).hu.mean()) == 700.0
    with pytest.raises(ValueError, match=r"no CT series numbered or identified '9'.*series 3"):
        load_ct(folder, series=9)
    with pytest.raises(ValueError, match="not in a NIfTI"):
        load_ct(tmp_path / "ct.nii.gz", series=3)


def _broken(tmp_path, how):
    _, folder = _nifti_and_series(tmp_path, AFFINES["ras"])
    files = sorted(folder.glob("*.dcm"))
    if how == "missing slice":
        files[3].unlink()
    elif how == "two series":  # another series in a subfolder, as PACS exports nest them
        write_dicom_series(folder / "other", np.zeros((11, 13, 7)), AFFINES["ras"])
    elif how == "duplicate":
        ds = pydicom.dcmread(files[2])
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / "copy.dcm")
    elif how == "tilt":  # each slice shifted 0.9 mm further along y: a sheared stack
        for k, f in enumerate(files):
            ds = pydicom.dcmread(f)
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y + 0.9 * k, z]
            ds.save_as(f)
    elif how == "other sizes":
        ds = pydicom.dcmread(files[4])
        ds.PixelSpacing = [0.5, 0.5]
        ds.save_as(files[4])
    elif how == "no position":
        ds = pydicom.dcmread(files[1])
        del ds.ImagePositionPatient
        ds.save_as(files[1])
    elif how == "enhanced":  # one multi-frame file (its geometry in functional groups)
        ds = pydicom.dcmread(files[0])
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
        ds.NumberOfFrames = 7
        del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
        for f in files:
            f.unlink()
        ds.save_as(folder / "enhanced.dcm")
    elif how == "empty":
        for f in files:
            f.unlink()
        (folder / "readme.txt").write_text("nothing here")
    return folder


@pytest.mark.parametrize("how, message", [
    ("missing slice", "missing or extra slice"),
    ("two series", r"2 CT series: series 1001 .*7 files in .*dicom; UID .*7 files in .*other"),
    ("enhanced", "multi-frame"),
    ("duplicate", "same position"),
    ("tilt", "gantry tilt"),
    ("other sizes", "PixelSpacing"),
    ("no position", "no ImagePositionPatient"),
    ("empty", "no DICOM images"),
])
def test_series_a_clinic_may_export_wrongly_are_refused_by_name(tmp_path, how, message):
    folder = _broken(tmp_path, how)
    with pytest.raises(ValueError, match=message) as e:
        load_ct(folder)
    assert str(folder) in str(e.value)  # the folder, or a file in it, is named


@pytest.mark.parametrize("storage", ["rle lossless", "12 bits stored"])
def test_compressed_and_12_bit_series_read_as_the_nifti(tmp_path, storage):
    """Two ways PACS exports store CT pixels: RLE Lossless compression (pydicom decodes it
    without plugins), and 12 bits stored in 16 allocated with other data in the 4 unused
    high bits (retired overlay planes: PS3.5 8.1.1 says to ignore them)."""
    ct, folder = _nifti_and_series(tmp_path, AFFINES["lpi"])
    for f in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        if storage == "rle lossless":
            ds.compress(pydicom.uid.RLELossless)
        else:
            stored = ds.pixel_array
            assert stored.max() < 4096  # HU + 1024 fits 12 bits
            ds.BitsStored, ds.HighBit = 12, 11
            ds.PixelData = (stored | 0xB000).astype(np.uint16).tobytes()
        ds.save_as(f)
    if storage == "rle lossless":
        assert pydicom.dcmread(f).file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    np.testing.assert_array_equal(load_ct(folder).hu, ct.hu)


def test_pixel_data_that_cannot_be_decoded_names_the_file_and_what_to_install(tmp_path):
    """A JPEG 2000 slice whose codestream is not JPEG 2000 (pydicom may also lack the
    plugin): refused, naming the file, its transfer syntax and the decoders to install."""
    _, folder = _nifti_and_series(tmp_path, AFFINES["ras"])
    f = sorted(folder.glob("*.dcm"))[2]
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(f)
    with pytest.raises(ValueError, match=r"(?s)cannot decode the pixel data \(transfer syntax "
                       r"1\.2\.840\.10008\.1\.2\.4\.90 \(JPEG 2000.*pip install pylibjpeg") as e:
        load_ct(folder)
    assert str(f) in str(e.value)


def test_a_truncated_uncompressed_slice_is_named_without_a_decoder_hint(tmp_path):
    """Uncompressed pixel data cut short: no decoder would help, so none is suggested."""
    _, folder = _nifti_and_series(tmp_path, AFFINES["ras"])
    f = sorted(folder.glob("*.dcm"))[1]
    ds = pydicom.dcmread(f)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(f)
    with pytest.raises(ValueError, match=r"cannot decode the pixel data \(transfer syntax "
                       r"1\.2\.840\.10008\.1\.2\.1 \(Explicit VR Little Endian\)") as e:
        load_ct(folder)
    assert str(f) in str(e.value) and "pylibjpeg" not in str(e.value)


def test_exports_as_scanners_write_them(tmp_path):
    """A file without the 128-byte preamble, padding outside the reconstruction circle, slice
    positions rounded to 0.1 mm and a secondary-capture dose screen in the same folder."""
    affine = centred_affine((11, 13, 7), (0.8, 1.2, 0.625))
    ct, folder = _nifti_and_series(tmp_path, affine)
    files = sorted(folder.glob("*.dcm"))
    expected = ct.hu.copy()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [round(float(v), 1) for v in ds.ImagePositionPatient]
        if k == 2:  # padding: stored 0 (-1024 HU) marks pixels outside the circle; one more
            ds.add_new(0x00280120, "US", 0)  # PixelPaddingValue
            ds.add_new(0x00280121, "US", 524)  # PixelPaddingRangeLimit: stored 0-524
            z = int(round(np.linalg.solve(ct.affine, [*(float(v) * s for v, s in zip(
                ds.ImagePositionPatient, (-1, -1, 1))), 1])[2]))
            plane = expected[:, :, z]
            padded = (plane >= -1024) & (plane <= -500)
            assert padded.sum() > 10
            plane[padded] = -1024.0
        if k == 4:  # written without the preamble, as some older exports are
            ds.preamble = None
            ds.save_as(f, enforce_file_format=False)
        else:
            ds.save_as(f)
    screen = pydicom.dcmread(files[0])  # a dose screen: Modality CT, secondary capture
    screen.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    screen.SeriesInstanceUID = pydicom.uid.generate_uid()
    screen.SeriesDescription = "Dose Report"
    del screen.ImagePositionPatient
    screen.save_as(folder / "dose.dcm")
    read = load_ct(folder)
    np.testing.assert_array_equal(read.hu, expected)
    np.testing.assert_allclose(read.spacing, ct.spacing, atol=0.02)


def test_a_dicom_folder_makes_the_same_case_as_its_nifti(tmp_path):
    """The user's path (``reconstruct --ct FOLDER``): ct_case of the series locates the same
    spine and renders the same X-rays as ct_case of the NIfTI."""
    ph = spine_phantom((64, 64, 64), (2.0, 2.0, 2.0), seed=3)
    affine = centred_affine(ph.hu.shape, (2.0, 2.0, 2.0))
    hu = np.rint(np.maximum(ph.hu, -1024))  # what 12-bit CT storage holds (CT noise dips below)
    save_ct(tmp_path / "ct.nii.gz", hu, affine=affine)
    write_dicom_series(tmp_path / "dicom", hu, affine)
    geometry = default_geometry((32, 32, 32), (4.0, 4.0, 4.0))
    a = ct_case(tmp_path / "ct.nii.gz", (32, 32, 32), (4.0, 4.0, 4.0), geometry)
    b = ct_case(tmp_path / "dicom", (32, 32, 32), (4.0, 4.0, 4.0), geometry)
    assert a.info["spine"]["centre_mm"] == pytest.approx(b.info["spine"]["centre_mm"], abs=1e-4)
    np.testing.assert_allclose(b.hu.numpy(), a.hu.numpy(), atol=1e-3)
    np.testing.assert_allclose(b.drr.numpy(), a.drr.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)


def test_without_pydicom_the_error_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pydicom(name, *args, **kwargs):
        if name == "pydicom" or name.startswith("pydicom."):
            raise ImportError("No module named 'pydicom'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    with pytest.raises(ImportError, match=r"x2ct\[dicom\]") as e:
        load_ct(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_a_scanners_slices_read_as_nibabel_reads_them(tmp_path):
    """pydicom's CT_small.dcm (a GE scanner's slice: signed 16-bit pixels, intercept -1024)
    made into a 4-slice series, written shuffled: every voxel lies where nibabel's DICOM
    wrapper (an independent reader) puts that pixel, with the HU it computes."""
    import copy
    import warnings

    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():  # "highly experimental": it is the oracle here
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder = tmp_path / "ge"
    folder.mkdir()
    for k in (2, 0, 3, 1):
        ds = copy.deepcopy(source)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        x, y, z = (float(v) for v in source.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.5 * k]
        # shifted down so that some stored values are negative (signed pixel data)
        stored = source.pixel_array.astype(np.int32) - 300 + 7 * k
        ds.PixelData = stored.astype(np.int16).tobytes()
        ds.save_as(folder / f"slice{k}")
    ct = load_ct(folder)
    assert ct.hu.shape == (128, 128, 4)
    to_voxel = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ ct.affine)  # LPS -> our voxels
    for k in range(4):
        w = dicomwrappers.wrapper_from_file(folder / f"slice{k}")
        values = w.get_data()  # (columns, rows) of HU, as nibabel transposes and rescales
        i, j = np.meshgrid(np.arange(values.shape[0]), np.arange(values.shape[1]), indexing="ij")
        world = w.affine @ np.stack([i.ravel(), j.ravel(), np.zeros(i.size), np.ones(i.size)])
        ijk = to_voxel @ world
        idx = np.rint(ijk[:3]).astype(int)
        np.testing.assert_allclose(ijk[:3], idx, atol=1e-3)
        np.testing.assert_array_equal(ct.hu[tuple(idx)], values.ravel())
        assert values.min() < -1024  # negative stored values read as signed
