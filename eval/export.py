"""Outputs a clinician opens: a CT as a DICOM series, bone surfaces as STL meshes.

    from x2ct.eval.export import write_dicom_series, write_bone_meshes
    write_dicom_series("out/dicom", hu, affine)             # CT Image Storage, one file a slice
    write_bone_meshes("out/bone.stl", hu, affine, labels)   # bone.stl (+ bone_L1.stl, ...)

Volumes are (X, Y, Z) arrays with a voxel-to-world affine in RAS+ millimetres, as
``x2ct.data.load_ct`` gives them and ``x2ct.data.save_ct`` writes them. DICOM and the STL
files are written in the DICOM patient coordinate system (LPS+: x toward the patient's
left, y posterior, z superior), so the series and the meshes overlay in 3D Slicer (which
reads STL as LPS, as it writes it) and in PACS viewers.

DICOM (pydicom, the ``dicom`` extra): one CT Image Storage file per axial slice, pixel
rows toward posterior and columns toward the patient's left (the radiological display of
an axial slice), ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
SliceThickness and SpacingBetweenSlices from the affine, HU stored as unsigned 16-bit
with RescaleSlope 1 and RescaleIntercept -1024, and a series description, image comments
and derivation description that say the images are a synthetic reconstruction, not for
diagnosis.

Meshes (scikit-image's marching cubes, the ``mesh`` extra): the surface of the bone mask
(HU at or above ``threshold``, default :data:`x2ct.eval.metrics.BONE_HU`, 250 HU), lightly
smoothed, padded by one empty voxel so every surface is closed; binary STL with outward
normals. With a label volume, one mesh per vertebra as well: each bone voxel takes the
label of the nearest labelled voxel (so a reconstruction is split along a segmentation of
its ground truth, or its own).
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from x2ct.data.dicom_ct import RAS_TO_LPS
from x2ct.eval.metrics import BONE_HU, VERTEBRA_LABELS, level_name
from x2ct.fileio import atomic_path

__all__ = [
    "DICOM_INTERCEPT",
    "SERIES_DESCRIPTION",
    "bone_meshes",
    "marching_cubes_mesh",
    "mesh_volume",
    "ras_to_lps",
    "read_stl",
    "resample_labels",
    "write_bone_meshes",
    "write_dicom_series",
    "write_stl",
]

DICOM_INTERCEPT = -1024.0  # HU of stored value 0 (air below -1024 HU is clipped)
SERIES_DESCRIPTION = "SYNTHETIC x2ct reconstruction - NOT FOR DIAGNOSIS"
DISCLAIMER = (
    "Synthetic CT reconstructed by x2ct from two radiographs (a latent diffusion model). "
    "It is a model's estimate, not a measurement: NOT FOR DIAGNOSIS."
)


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """A voxel-to-RAS affine as voxel-to-LPS (DICOM patient coordinates)."""
    return RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)


def _check_volume(hu, affine) -> tuple[np.ndarray, np.ndarray]:
    hu = np.asarray(hu)
    while hu.ndim > 3 and hu.shape[0] == 1:
        hu = hu[0]
    affine = np.asarray(affine, dtype=np.float64)
    if hu.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) volume, got shape {hu.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"expected a finite 4x4 affine, got {affine!r}")
    if not np.all(np.isfinite(hu)):
        raise ValueError("the volume has non-finite voxels")
    return hu, affine


# --------------------------------------------------------------------------- DICOM
def _lps_slices(hu: np.ndarray, affine: np.ndarray):
    """The volume reordered so its axes point to the patient's left, posterior and
    superior (the nearest such permutation and flips of an oblique affine), and that
    order's voxel-to-LPS affine."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    xform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("LPS"))
    data = nib.orientations.apply_orientation(hu, xform)
    vox_to_ras = affine @ nib.orientations.inv_ornt_aff(xform, hu.shape)
    return data, ras_to_lps(vox_to_ras)


def write_dicom_series(
    folder: str | os.PathLike,
    hu,
    affine,
    series_description: str = SERIES_DESCRIPTION,
    patient_name: str = "Anonymous^x2ct",
    patient_id: str = "x2ct",
    series_number: int = 1001,
    window: Sequence[float] = (400.0, 1800.0),
) -> list[Path]:
    """Write ``hu`` (X, Y, Z, HU) with voxel-to-RAS ``affine`` as a CT Image Storage series,
    one file per axial slice (``CT000001.dcm`` inferior to superior), into ``folder``.

    The folder is written whole beside its target and renamed into place; a folder already
    there is replaced (so no slice of an older series stays mixed in). ``window`` is the
    (centre, width) a viewer opens with (default: bone). Returns the files, in slice order.
    """
    try:
        import pydicom
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    except ImportError as e:
        raise ImportError("DICOM output needs pydicom: pip install 'x2ct[dicom]'") from e
    hu, affine = _check_volume(hu, affine)
    data, m = _lps_slices(hu, affine)
    spacing = np.linalg.norm(m[:3, :3], axis=0)  # along columns (i), rows (j), slices (k)
    row_dir, col_dir = m[:3, 0] / spacing[0], m[:3, 1] / spacing[1]
    normal = np.cross(row_dir, col_dir)
    stored = np.clip(np.rint(data.astype(np.float64) - DICOM_INTERCEPT), 0, 65535)
    stored = stored.astype(np.uint16)
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    pydicom3 = int(pydicom.__version__.split(".")[0]) >= 3

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        files = []
        for k in range(data.shape[2]):
            sop = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            name = f"CT{k + 1:06d}.dcm"
            ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            # patient, study, series, equipment
            ds.PatientName, ds.PatientID = patient_name, patient_id
            ds.PatientBirthDate, ds.PatientSex = "", ""
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
            ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
            ds.StudyDescription = "x2ct synthetic CT from radiographs"
            ds.Modality = "CT"
            ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = series_number, k + 1, 1
            ds.SeriesDescription = series_description[:64]
            ds.ImageComments = DISCLAIMER
            ds.DerivationDescription = DISCLAIMER
            ds.BurnedInAnnotation = "NO"
            ds.Manufacturer = "x2ct"
            ds.ManufacturerModelName = "x2ct latent diffusion"
            ds.KVP = ""
            ds.PatientPosition = "HFS"
            # geometry (LPS, mm)
            ds.FrameOfReferenceUID = frame
            ds.PositionReferenceIndicator = ""
            position = m @ np.array([0.0, 0.0, k, 1.0])
            ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # between rows, columns
            ds.SliceThickness = _ds(spacing[2])
            ds.SpacingBetweenSlices = _ds(spacing[2])
            ds.SliceLocation = _ds(float(position[:3] @ normal))
            # pixels: rows along j (posterior), columns along i (left)
            pixels = np.ascontiguousarray(stored[:, :, k].T)
            ds.Rows, ds.Columns = pixels.shape
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 0
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(DICOM_INTERCEPT), "1", "HU"
            ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
            ds.PixelData = pixels.tobytes()
            path = tmp / name
            if pydicom3:
                ds.save_as(path, enforce_file_format=True)
            else:  # pragma: no cover - pydicom 2
                ds.is_little_endian, ds.is_implicit_VR = True, False
                ds.save_as(path, write_like_original=False)
            files.append(folder / name)
        _replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def _ds(v: float) -> str:
    """A decimal string (DICOM DS, at most 16 characters)."""
    v = float(v)
    if v == 0:
        return "0"
    for digits in range(10, 0, -1):
        s = f"{v:.{digits}g}"
        if len(s) <= 16:
            return s
    return f"{v:.6e}"  # pragma: no cover


def _replace_dir(src: Path, dst: Path) -> None:
    """Put folder ``src`` at ``dst``, replacing a folder there (two renames)."""
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst} exists and is not a folder")
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- meshes
def marching_cubes_mesh(volume, affine, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The closed iso-surface ``volume == level`` (scikit-image marching cubes on the volume
    padded with one voxel below ``level``), as vertices (N, 3) in LPS millimetres and
    triangles (M, 3) oriented with outward normals (toward values below ``level``)."""
    try:
        from skimage.measure import marching_cubes
    except ImportError as e:
        raise ImportError("bone meshes need scikit-image: pip install 'x2ct[mesh]'") from e
    v = np.asarray(volume, dtype=np.float32)
    if not (v >= level).any():
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    low = min(float(v.min()), float(level)) - 1.0
    padded = np.pad(v, 1, constant_values=low)
    verts, faces, _, _ = marching_cubes(padded, level=level)
    verts = verts.astype(np.float64) - 1.0  # voxel indices of the unpadded volume
    world = verts @ ras_to_lps(affine)[:3, :3].T + ras_to_lps(affine)[:3, 3]
    faces = faces.astype(np.int64)
    if mesh_volume(world, faces) < 0:  # the affine mirrored the mesh: turn the faces over
        faces = faces[:, ::-1].copy()
    return world, faces


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by a closed triangle mesh (divergence theorem: the sum of
    the tetrahedra from the origin); positive for outward normals."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def bone_meshes(hu, affine, labels=None, threshold: float = BONE_HU, smoothing: float = 0.5
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"bone": mesh of all bone, and with ``labels`` "L1": ..., per vertebra present}.

    Bone is the mask ``hu >= threshold``; its surface is the 0.5 iso-surface of the mask
    smoothed by a Gaussian of ``smoothing`` voxels (0: none), as 3D Slicer turns a
    segment into a model: the mesh encloses the mask's voxel volume without a voxel
    staircase (within about 1% on solid shapes; thin cortical shells and processes, one or
    two voxels thick, lose more: 13% of all bone on a phantom at 2 mm). (The iso-surface
    of the HU values themselves would sit where interpolated HU crosses the threshold,
    outside the mask's voxel faces wherever the threshold is below the mid-point of an
    edge's HU step.)

    ``labels`` (X, Y, Z), VerSe numbering, on the volume's grid: every bone voxel takes
    the label of the nearest voxel labelled a vertebra, and each vertebra is meshed on its
    own."""
    from scipy import ndimage

    hu, affine = _check_volume(hu, affine)
    bone = hu >= threshold

    def surface(mask):
        field = mask.astype(np.float32)
        if smoothing > 0:
            field = ndimage.gaussian_filter(field, smoothing, mode="constant")
        return marching_cubes_mesh(field, affine, 0.5)

    meshes = {"bone": surface(bone)}
    if labels is None:
        return meshes
    labels = np.asarray(labels)
    if labels.shape != hu.shape:
        raise ValueError(f"labels {labels.shape} are not on the volume's grid {hu.shape}")
    vertebra = np.isin(labels, VERTEBRA_LABELS)
    if not vertebra.any():
        return meshes
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    _, nearest = ndimage.distance_transform_edt(~vertebra, sampling=spacing, return_indices=True)
    owner = labels[tuple(nearest)]  # (X, Y, Z): the nearest vertebra's label
    for label in sorted(int(v) for v in np.unique(labels[vertebra])):
        verts, faces = surface(bone & (owner == label))
        if len(faces):
            meshes[level_name(label)] = (verts, faces)
    return meshes


def write_stl(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
              name: str = "x2ct") -> Path:
    """A binary STL (little-endian float32; unit normals from the triangles' winding),
    written atomically. The 80-byte header names the solid and says ``SPACE=LPS``."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces)]  # (M, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.divide(normals, lengths, out=np.zeros_like(normals), where=lengths > 0)
    record = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attr", "<u2")])
    rows = np.zeros(len(tri), record)
    rows["normal"], rows["vertices"] = normals, tri
    header = f"x2ct {name} SPACE=LPS mm; synthetic, not for diagnosis".encode()[:80]
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.ljust(80, b" "))
        f.write(np.uint32(len(rows)).tobytes())
        f.write(rows.tobytes())
    return path


def read_stl(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Triangles (M, 3, 3) and normals (M, 3) of a binary STL."""
    raw = Path(path).read_bytes()
    n = int(np.frombuffer(raw[80:84], "<u4")[0])
    record = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attr", "<u2")])
    if len(raw) != 84 + n * record.itemsize:
        raise ValueError(f"{path}: {len(raw)} bytes, not a binary STL of {n} triangles")
    rows = np.frombuffer(raw[84:], record, count=n)
    return rows["vertices"].astype(np.float64), rows["normal"].astype(np.float64)


def resample_labels(path: str | os.PathLike, affine, shape) -> np.ndarray:
    """A label NIfTI on another grid: (X, Y, Z) int16, each voxel of the grid (voxel-to-world
    ``affine``, the world of the label file) the label at its centre (nearest neighbour;
    0 outside the file's volume)."""
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(str(path))
    labels = np.asarray(img.dataobj)
    if labels.ndim != 3:
        raise ValueError(f"{path}: a label volume must be 3-D, got shape {labels.shape}")
    grid_to_labels = np.linalg.inv(img.affine) @ np.asarray(affine, np.float64)
    idx = np.indices(tuple(int(n) for n in shape), dtype=np.float64).reshape(3, -1)
    coords = grid_to_labels[:3, :3] @ idx + grid_to_labels[:3, 3:]
    out = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
    return np.rint(out).astype(np.int16).reshape(tuple(int(n) for n in shape))


def write_bone_meshes(path: str | os.PathLike, hu, affine, labels=None,
                      threshold: float = BONE_HU, smoothing: float = 0.5) -> list[Path]:
    """``path`` (all bone) and, with ``labels``, ``<stem>_<level><suffix>`` per vertebra
    (``bone_L1.stl``, ...). Returns the files written."""
    path = Path(path)
    written = []
    for name, (verts, faces) in bone_meshes(hu, affine, labels, threshold, smoothing).items():
        target = path if name == "bone" else path.with_name(f"{path.stem}_{name}{path.suffix}")
        written.append(write_stl(target, verts, faces, name))
    return written
