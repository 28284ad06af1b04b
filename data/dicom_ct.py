"""A CT as clinics store it: one DICOM series, a file per axial slice, read into a CTImage.

``load_ct(folder)`` calls :func:`load_dicom_series` for a folder, so ``x2ct reconstruct
--ct FOLDER`` takes a scanner's or PACS export as it is: the files may lie in subfolders
(PATIENT/STUDY/SERIES/...), under any name and in any order. The geometry follows DICOM PS3.3
C.7.6.2 (Image Plane Module): ImagePositionPatient is the centre of the first transmitted
pixel in LPS millimetres, ImageOrientationPatient the direction cosines of a row (toward
increasing column index) and of a column, PixelSpacing the spacing between rows, then
between columns. HU = stored value * RescaleSlope + RescaleIntercept (C.11.1), per slice.

Read as well: files without the 128-byte preamble; PixelPaddingValue (the pixels outside
the scanner's reconstruction circle) as air, -1024 HU; slice positions rounded in their
stored strings. Left out by themselves: scout (LOCALIZER) images, secondary-capture dose
screens, reports and other modalities. Refused, naming the folder or file and the reason,
before any pixel is decoded: no CT slices; several CT series unless one is chosen (each
listed with its number, description, folder and UID); a multi-frame (enhanced) CT; slices with other
orientations, sizes or pixel spacings; two slices at one position; uneven slice spacing (a
missing slice); a sheared stack (gantry tilt). Convert such data with dcm2niix, which
corrects tilt, and give the NIfTI.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["decode_pixels", "load_dicom_series"]

AIR_HU = -1024.0  # what padding outside the reconstruction circle becomes
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""World RAS+ (NIfTI, x2ct) to DICOM's LPS patient coordinates, and back: its own inverse."""

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
# slice positions differ from even spacing by the rounding of their stored decimal strings
# (some scanners write 0.1 mm); a missing slice moves one gap by a whole slice spacing
_GAP_TOLERANCE_MM = 0.15
_POSITION_TOLERANCE_MM = 0.05
_SHEAR_TOLERANCE_MM = 0.1  # a 1-degree gantry tilt shears 100 slices of 2.5 mm by 4.4 mm
_GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                  "Columns")


def import_pydicom(path):
    """pydicom, or an ImportError naming ``path`` (a DICOM file or series folder) and the
    install line: every DICOM reader and writer of x2ct imports it here."""
    try:
        import pydicom
    except ImportError as e:
        raise ImportError(
            f"{path}: DICOM needs pydicom: pip install pydicom (or pip install 'x2ct[dicom]'), "
            "or convert the file first (dcm2niix turns a CT series into NIfTI)"
        ) from e
    return pydicom


def decode_pixels(ds, path) -> np.ndarray:
    """The one image of a DICOM file read by pydicom (a CT slice or a radiograph), or a
    ValueError naming ``path`` and what to do.

    pydicom (>= 3.0) decodes uncompressed and RLE Lossless pixels itself, dropping the
    bits above BitsStored and sign-extending signed values. JPEG, JPEG-LS and JPEG 2000,
    which X-ray rooms and PACS often store, need pylibjpeg's plugins or gdcm: a compressed
    file that cannot be decoded is named with its transfer syntax and the decoders to
    install. A multi-frame file (a fluoroscopy or cine run) is refused: x2ct reads one
    image a file."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{path}: {frames} frames (a fluoroscopy or cine run, or a "
                         "multi-frame image); x2ct reads one image a file: save the frame to "
                         "use as its own file")
    try:
        return ds.pixel_array
    except Exception as e:  # pydicom raises many types for bad or undecodable pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is None:
            raise ValueError(f"{path}: cannot decode the pixel data ({e}); the file states "
                             "no transfer syntax") from e
        name = getattr(syntax, "name", str(syntax))
        said = str(syntax) if name == str(syntax) else f"{syntax} ({name})"
        hint = ""
        if getattr(syntax, "is_compressed", False):
            hint = ("; for compressed DICOM install a decoder: pip install pylibjpeg "
                    "pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm), or convert the "
                    "file (dcm2niix for a CT series, gdcmconv --raw for a radiograph)")
        raise ValueError(
            f"{path}: cannot decode the pixel data (transfer syntax {said}: {e}){hint}"
        ) from e


def _headers(folder: Path, pydicom) -> tuple[list[tuple[Path, object]], list[Path]]:
    """(file, header) of every DICOM file in ``folder`` and its subfolders (a PACS export
    nests its series: PATIENT/STUDY/SERIES/IMAGE), and the files that are not DICOM. Files
    without the 128-byte preamble (older exports) are read too."""
    found, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        try:
            with warnings.catch_warnings():  # force=True guesses at files that are not DICOM
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                ok = "SOPClassUID" in ds or "Rows" in ds
        except Exception:  # not DICOM (pydicom raises several types)
            ok = False
        if ok:
            found.append((path, ds))
        else:
            skipped.append(path)
    return found, skipped


def _series(folder: Path, headers: list, skipped: list,
            series: str | None = None) -> list[tuple[Path, object]]:
    """The CT image series among ``headers`` (the one there is, or ``series``, a
    SeriesNumber or SeriesInstanceUID): CT Image Storage slices, scouts left out
    (secondary-capture dose screens, reports and other modalities are not CT slices)."""
    images = [(p, ds) for p, ds in headers if "Rows" in ds]
    if not images:
        note = (f" ({len(skipped)} files are not DICOM, e.g. {skipped[0].name})"
                if skipped else "")
        raise ValueError(f"{folder}: no DICOM images in the folder or its subfolders{note}; "
                         "expected one CT series, a file per slice")
    sop = {str(getattr(ds, "SOPClassUID", "")) for _, ds in images}
    ct = [(p, ds) for p, ds in images if str(getattr(ds, "Modality", "")) == "CT"
          and str(getattr(ds, "SOPClassUID", CT_IMAGE_STORAGE)) == CT_IMAGE_STORAGE
          and "LOCALIZER" not in [str(v).upper() for v in getattr(ds, "ImageType", [])]]
    if not ct:
        enhanced = [p for p, ds in images
                    if str(getattr(ds, "SOPClassUID", "")) == ENHANCED_CT_IMAGE_STORAGE
                    or int(getattr(ds, "NumberOfFrames", 1) or 1) > 1]
        if enhanced:
            raise ValueError(f"{enhanced[0]}: a multi-frame (enhanced) CT is not read; convert "
                             "it to NIfTI with dcm2niix")
        modalities = sorted({str(getattr(ds, "Modality", "?")) for _, ds in images})
        raise ValueError(f"{folder}: no axial CT slices (CT Image Storage) among its DICOM "
                         f"images (modality {', '.join(modalities)}; SOP classes "
                         f"{', '.join(sorted(sop))}); expected a CT series")
    groups: dict[str, list] = {}
    for p, ds in ct:
        groups.setdefault(str(getattr(ds, "SeriesInstanceUID", "")), []).append((p, ds))
    listing = "; ".join(
        f"series {getattr(files[0][1], 'SeriesNumber', '?')} "
        f"'{str(getattr(files[0][1], 'SeriesDescription', '')) or 'no description'}' "
        f"({len(files)} files in {files[0][0].parent}; UID {uid or '?'})"
        for uid, files in groups.items()
    )
    if series is not None:
        chosen = [files for uid, files in groups.items()
                  if str(series) in (uid, str(getattr(files[0][1], "SeriesNumber", "")))]
        if len(chosen) != 1:
            found = "no" if not chosen else f"{len(chosen)}"
            raise ValueError(f"{folder}: {found} CT series numbered or identified {series!r} "
                             f"among {listing}; give its SeriesInstanceUID")
        return chosen[0]
    if len(groups) > 1:
        raise ValueError(f"{folder}: {len(groups)} CT series: {listing}; choose one by its "
                         "number or UID (reconstruct --series, load_ct(..., series=)) or give "
                         "a folder that holds it alone")
    return next(iter(groups.values()))


def _geometry(folder: Path, files: list) -> tuple[list, np.ndarray, np.ndarray]:
    """The slices sorted along the stack, the voxel-to-LPS affine and the slice gap."""
    for p, ds in files:  # CT Image Storage (_series): one frame a file
        missing = [t for t in _GEOMETRY_TAGS if t not in ds]
        if missing:
            raise ValueError(f"{p}: no {', '.join(missing)}; a CT slice needs them to be placed")
    first_path, first = files[0]
    orient = np.asarray([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
    pixel = np.asarray([float(v) for v in first.PixelSpacing], dtype=np.float64)
    size = (int(first.Rows), int(first.Columns))
    for p, ds in files[1:]:
        other = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(other, orient, atol=1e-4):
            raise ValueError(f"{p}: ImageOrientationPatient {other.tolist()} differs from "
                             f"{first_path.name}'s {orient.tolist()}; expected one stack of "
                             "parallel slices")
        if (int(ds.Rows), int(ds.Columns)) != size:
            raise ValueError(f"{p}: {int(ds.Rows)} x {int(ds.Columns)} pixels where "
                             f"{first_path.name} has {size[0]} x {size[1]}")
        if not np.allclose([float(v) for v in ds.PixelSpacing], pixel, rtol=1e-4):
            raise ValueError(f"{p}: PixelSpacing {[float(v) for v in ds.PixelSpacing]} differs "
                             f"from {first_path.name}'s {pixel.tolist()}")
    row_dir, col_dir = orient[:3], orient[3:]
    if not (np.isclose(np.linalg.norm(row_dir), 1, atol=1e-3)
            and np.isclose(np.linalg.norm(col_dir), 1, atol=1e-3)
            and abs(row_dir @ col_dir) < 1e-3):
        raise ValueError(f"{first_path}: ImageOrientationPatient {orient.tolist()} is not two "
                         "orthogonal unit vectors")
    if not np.all(pixel > 0):
        raise ValueError(f"{first_path}: PixelSpacing {pixel.tolist()} must be positive")
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for _, ds in files])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    files = [files[k] for k in order]
    positions, along = positions[order], along[order]
    if len(files) < 2:
        raise ValueError(f"{folder}: one CT slice; expected a volume of several slices")
    gaps = np.diff(along)
    for k in np.flatnonzero(gaps < _POSITION_TOLERANCE_MM):
        raise ValueError(f"{files[k][0]} and {files[k + 1][0].name} lie at the same position "
                         f"({along[k]:.3f} mm along the stack); expected one slice a position")
    gap = float((along[-1] - along[0]) / (len(files) - 1))  # the mean: rounding averages out
    uneven = np.flatnonzero(np.abs(gaps - gap) > min(_GAP_TOLERANCE_MM, 0.45 * gap))
    if uneven.size:
        k = int(uneven[0])
        raise ValueError(
            f"{folder}: slices {files[k][0].name} and {files[k + 1][0].name} are "
            f"{gaps[k]:.3f} mm apart where the series' spacing is {gap:.3f} mm (a missing or "
            "extra slice?); expected evenly spaced slices"
        )
    # every slice's origin on the line through the first along the normal (no gantry tilt)
    shear = positions - positions[0] - np.outer(along - along[0], normal)
    worst = float(np.abs(shear).max())
    if worst > _SHEAR_TOLERANCE_MM:
        raise ValueError(
            f"{folder}: the slices' positions drift {worst:.2f} mm sideways along the stack "
            "(gantry tilt or a sheared series); convert it with dcm2niix, which corrects tilt"
        )
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel[1]  # i: along a row, the spacing between columns
    lps[:3, 1] = col_dir * pixel[0]  # j: down a column, the spacing between rows
    lps[:3, 2] = normal * gap
    lps[:3, 3] = positions[0]
    return files, lps, gap


def _padding(ds, stored: np.ndarray) -> np.ndarray | None:
    """Where ``stored`` holds PixelPaddingValue (up to PixelPaddingRangeLimit when given):
    pixels outside the scanner's reconstruction field, not tissue."""
    if "PixelPaddingValue" not in ds:
        return None
    a = int(ds.PixelPaddingValue)
    b = int(getattr(ds, "PixelPaddingRangeLimit", a))
    lo, hi = min(a, b), max(a, b)
    mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def load_dicom_series(folder: str | os.PathLike, series: str | int | None = None):
    """Read the CT series in ``folder`` (one DICOM file per slice, in the folder or its
    subfolders) as a ``CTImage``: HU in RAS+ voxel order (reoriented as ``load_ct``
    reorients a NIfTI), spacing in mm. Where the folder holds several CT series (a study's
    soft-tissue and bone reconstructions), ``series`` picks one by its SeriesNumber or
    SeriesInstanceUID.

    Raises:
        ImportError: pydicom is not installed.
        ValueError: no CT series, several, or one that is not an even stack of parallel
            slices, or pixel data that cannot be decoded; the message names the folder or
            file and what was expected.
    """
    import nibabel as nib

    from x2ct.data.io import MAX_CT_VOXELS, CTImage, _check_voxel_size

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected a DICOM CT series)")
    pydicom = import_pydicom(folder)
    chosen = None if series is None else str(series)
    files, lps, gap = _geometry(folder, _series(folder, *_headers(folder, pydicom), chosen))
    shape = (int(files[0][1].Columns), int(files[0][1].Rows), len(files))
    if int(np.prod(shape, dtype=object)) > MAX_CT_VOXELS:
        raise ValueError(f"{folder}: {shape} voxels is more than the {MAX_CT_VOXELS} this "
                         "reader allocates")
    _check_voxel_size(folder, np.linalg.norm(lps[:3, :3], axis=0))
    hu = np.empty(shape, dtype=np.float32)
    for k, (path, _) in enumerate(files):
        try:
            ds = pydicom.dcmread(path, force=True)  # as its header was read
        except Exception as e:
            raise ValueError(f"{path}: cannot read the DICOM file ({e})") from e
        stored = decode_pixels(ds, path)
        if stored.shape != (shape[1], shape[0]):
            raise ValueError(f"{path}: pixel data of shape {stored.shape}, the header says "
                             f"{shape[1]} x {shape[0]}")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        values = stored.astype(np.float32) * slope + intercept
        padding = _padding(ds, stored)
        if padding is not None:  # outside the reconstruction circle: air (PS3.3 C.7.5.1.1.2)
            values[padding] = AIR_HU
        hu[:, :, k] = values.T
    if not np.all(np.isfinite(hu)):
        raise ValueError(f"{folder}: non-finite HU after rescaling; check RescaleSlope")
    ras = RAS_TO_LPS @ lps
    canonical = nib.as_closest_canonical(nib.Nifti1Image(hu, ras))
    data = np.ascontiguousarray(canonical.get_fdata(dtype=np.float32))
    affine = np.asarray(canonical.affine, dtype=np.float64)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return CTImage(data, spacing, affine)
