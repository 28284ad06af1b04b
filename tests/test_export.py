"""DICOM series and STL bone meshes (eval/export.py), checked by independent readers:
nibabel's DICOM wrappers for geometry and rescaling, trimesh for the meshes."""

import math
import warnings

import nibabel as nib
import numpy as np
import pytest

from x2ct.data import centred_affine, load_ct, save_ct, spine_phantom
from x2ct.eval.export import (
    SERIES_DESCRIPTION,
    bone_meshes,
    mesh_volume,
    read_stl,
    write_bone_meshes,
    write_dicom_series,
)

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("skimage")
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation(deg_z: float, deg_x: float) -> np.ndarray:
    a, b = math.radians(deg_z), math.radians(deg_x)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


def _volume(shape=(11, 13, 7)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-1000, 2000, shape).astype(np.float32)


def _series(folder):
    """(files read by pydicom, nibabel wrappers) in file order."""
    with warnings.catch_warnings():  # "highly experimental": it is the oracle for geometry
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers

    files = sorted(folder.glob("*.dcm"))
    return [pydicom.dcmread(f) for f in files], [dicomwrappers.wrapper_from_file(f) for f in files]


AFFINES = {
    # RAS voxel order, the model's output (centred on the isocentre)
    "ras": centred_affine((11, 13, 7), (0.8, 1.2, 2.5)),
    # LPI voxel order with an offset: the writer must reorder to left/posterior/superior
    "lpi": np.array([[-0.7, 0, 0, 30.0], [0, -1.1, 0, -12.0], [0, 0, -3.0, 55.0], [0, 0, 0, 1]]),
    # oblique: rotated 20 degrees about z and 10 about x
    "oblique": np.vstack([np.c_[_rotation(20, 10) @ np.diag([0.9, 1.0, 2.0]), [5.0, -3.0, 7.0]],
                          [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_dicom_series_round_trips_to_the_same_hu_and_positions(tmp_path, name):
    """Every voxel of the NIfTI is found, by its world position as nibabel's DICOM reader
    computes it from ImagePositionPatient, ImageOrientationPatient and PixelSpacing, in the
    series with the same HU (rescale slope and intercept applied by nibabel)."""
    hu, affine = _volume(), AFFINES[name]
    save_ct(tmp_path / "ct.nii.gz", hu, affine=affine)
    ct = load_ct(tmp_path / "ct.nii.gz")  # what a user has: the NIfTI, reoriented to RAS
    files = write_dicom_series(tmp_path / "dicom", ct.hu, ct.affine)
    datasets, wrappers = _series(tmp_path / "dicom")
    assert [f.name for f in files] == [f"CT{k:06d}.dcm" for k in range(1, 8)]
    nifti_world_to_voxel = np.linalg.inv(LPS @ ct.affine)
    seen = np.zeros(ct.hu.shape, bool)
    for ds, w in zip(datasets, wrappers):
        values = w.get_data()  # nibabel: pixel array transposed, rescaled to HU
        rows, cols = np.meshgrid(np.arange(values.shape[0]), np.arange(values.shape[1]),
                                 indexing="ij")
        pix = np.stack([rows.ravel(), cols.ravel(), np.zeros(rows.size), np.ones(rows.size)])
        world = w.affine @ pix  # LPS mm of every pixel
        ijk = nifti_world_to_voxel @ world
        idx = np.rint(ijk[:3]).astype(int)
        np.testing.assert_allclose(ijk[:3], idx, atol=1e-4)  # on the NIfTI's voxel centres
        np.testing.assert_array_equal(values.ravel(), np.rint(ct.hu[tuple(idx)]))
        seen[tuple(idx)] = True
        # the tags a viewer needs
        assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SeriesDescription == SERIES_DESCRIPTION
        assert "NOT FOR DIAGNOSIS" in ds.ImageComments
        assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
        assert float(ds.SliceThickness) == pytest.approx(np.linalg.norm(affine[:3, 2]), rel=1e-6)
        np.testing.assert_allclose(
            sorted(float(s) for s in ds.PixelSpacing),
            sorted(np.linalg.norm(affine[:3, :2], axis=0)), rtol=1e-6)
    assert seen.all()  # every voxel in exactly one slice position
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    # slices run inferior to superior, one SliceThickness apart along the slice normal
    normal = np.cross(*np.reshape([float(v) for v in datasets[0].ImageOrientationPatient], (2, 3)))
    along = [np.dot([float(v) for v in ds.ImagePositionPatient], normal) for ds in datasets]
    np.testing.assert_allclose(np.diff(along), float(datasets[0].SliceThickness), rtol=1e-6)
    assert normal[2] > 0.9  # superior


def test_dicom_replaces_an_older_series_and_checks_input(tmp_path):
    hu = _volume((6, 5, 9))
    write_dicom_series(tmp_path / "d", hu, np.eye(4))
    write_dicom_series(tmp_path / "d", hu[:, :, :4], np.eye(4))
    assert len(list((tmp_path / "d").glob("*.dcm"))) == 4  # no stale slice mixed in
    with pytest.raises(ValueError, match="non-finite"):
        write_dicom_series(tmp_path / "e", np.full((2, 2, 2), np.nan), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        write_dicom_series(tmp_path / "e", hu, np.eye(3))
    assert not (tmp_path / "e").exists()


def _sphere(radius_mm: float, spacing, centre_mm):
    shape = (40, 36, 30)
    affine = centred_affine(shape, spacing)
    affine[:3, 3] += centre_mm
    idx = np.indices(shape).reshape(3, -1)
    world = (affine[:3, :3] @ idx + affine[:3, 3:]).T
    inside = np.linalg.norm(world - centre_mm, axis=1) <= radius_mm
    hu = np.where(inside, 1200.0, -50.0).reshape(shape).astype(np.float32)
    return hu, affine


def test_sphere_mesh_is_closed_and_encloses_its_volume(tmp_path):
    trimesh = pytest.importorskip("trimesh")
    spacing, centre, r = (1.0, 1.25, 1.5), np.array([10.0, -20.0, 30.0]), 12.0
    hu, affine = _sphere(r, spacing, centre)
    [path] = write_bone_meshes(tmp_path / "bone.stl", hu, affine)
    mesh = trimesh.load(path)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals
    voxels = (hu >= 250).sum() * np.prod(spacing)
    assert mesh.volume == pytest.approx(voxels, rel=0.03)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * r**3, rel=0.04)
    # LPS millimetres: the RAS centre (10, -20, 30) is LPS (-10, 20, 30)
    np.testing.assert_allclose(mesh.bounds.mean(0), [-10.0, 20.0, 30.0], atol=1.0)
    # the stored normals point out of the sphere
    tri, normals = read_stl(path)
    outward = tri.mean(1) - np.array([-10.0, 20.0, 30.0])
    assert (np.einsum("ij,ij->i", normals, outward) > 0).mean() > 0.99


def test_phantom_bone_meshes_match_the_voxel_volumes(tmp_path):
    """One mesh for all bone and one per vertebra; each closed, each enclosing its bone
    voxel volume within a few percent."""
    trimesh = pytest.importorskip("trimesh")
    ph = spine_phantom((64, 64, 64), (2.0, 2.0, 2.0), seed=90000)
    affine = centred_affine(ph.hu.shape, ph.spacing)
    meshes = bone_meshes(ph.hu, affine, ph.labels)
    levels = {"L1", "L2", "L3", "L4"}  # the 128 mm field around the lumbar column
    assert levels <= set(meshes) and "bone" in meshes
    bone = ph.hu >= 250
    voxel_mm3 = 8.0
    # The smoothed mask's surface lies inside the voxel faces: about 1% short of the voxel
    # volume on solid shapes (test_sphere_mesh_is_closed_and_encloses_its_volume), more
    # on the phantom's thin cortical shells and processes (one or two voxels at 2 mm).
    ratio = mesh_volume(*meshes["bone"]) / (bone.sum() * voxel_mm3)
    assert 0.8 < ratio <= 1.0
    # each bone voxel belongs to the nearest labelled vertebra voxel (found here by a k-d
    # tree, in mm, rather than the exporter's distance transform)
    from scipy.spatial import cKDTree

    labelled = np.argwhere((ph.labels >= 1) & (ph.labels <= 26))
    _, nearest = cKDTree(labelled * 2.0).query(np.argwhere(bone) * 2.0)
    owner = ph.labels[tuple(labelled[nearest].T)]
    for level in ("L2", "L3", "L4"):  # whole vertebrae inside the field of view
        own = (owner == 19 + int(level[1])).sum() * voxel_mm3
        assert mesh_volume(*meshes[level]) / own == pytest.approx(ratio, abs=0.05)
    files = write_bone_meshes(tmp_path / "bone.stl", ph.hu, affine, ph.labels)
    names = {f.name for f in files}
    assert {"bone.stl", "bone_L1.stl", "bone_L4.stl"} <= names
    for f in files:
        mesh = trimesh.load(f)
        assert mesh.is_watertight and mesh.volume > 0, f.name
    total = sum(trimesh.load(f).volume for f in files if f.name != "bone.stl")
    assert total == pytest.approx(trimesh.load(tmp_path / "bone.stl").volume, rel=0.03)


def test_meshes_check_their_labels():
    with pytest.raises(ValueError, match="grid"):
        bone_meshes(np.zeros((4, 4, 4)), np.eye(4), labels=np.zeros((4, 4, 5)))
    verts, faces = bone_meshes(np.zeros((4, 4, 4)), np.eye(4))["bone"]
    assert len(faces) == 0  # no bone, an empty mesh


def test_nifti_reader_agrees_with_the_nifti(tmp_path):
    """The oracle's premise: nibabel's NIfTI affine is the one x2ct wrote."""
    hu, affine = _volume(), AFFINES["oblique"]
    save_ct(tmp_path / "x.nii.gz", hu, affine=affine)
    np.testing.assert_allclose(nib.load(tmp_path / "x.nii.gz").affine, affine, atol=1e-5)


@pytest.mark.parametrize("name", ["ras", "oblique"])
def test_itk_reads_the_series_as_the_nifti(tmp_path, name):
    """ITK with GDCM, the DICOM reader of 3D Slicer, loads the series onto the NIfTI's
    world grid: the same HU at every voxel after resampling one onto the other."""
    sitk = pytest.importorskip("SimpleITK")
    hu, affine = _volume(), AFFINES[name]
    save_ct(tmp_path / "ct.nii.gz", hu, affine=affine)
    ct = load_ct(tmp_path / "ct.nii.gz")
    write_dicom_series(tmp_path / "dicom", ct.hu, ct.affine)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom")))
    series = reader.Execute()
    nifti = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    assert series.GetSize() == nifti.GetSize()
    np.testing.assert_allclose(sorted(series.GetSpacing()), sorted(nifti.GetSpacing()), rtol=1e-6)
    on_grid = sitk.Resample(series, nifti, sitk.Transform(), sitk.sitkNearestNeighbor, -5000.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_grid),
                                  np.rint(sitk.GetArrayFromImage(nifti)))
