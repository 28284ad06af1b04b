"""Writing radiographs: grey PNG (8 or 16 bit) and DICOM DX Image Storage, atomically.

Images are written as given, in x2ct's pixel convention for their view (see
``x2ct.data.xray_orientation``); DICOM files say so in Patient Orientation, or store the
image flipped into another orientation on request. ``x2ct.data.read_radiograph`` reads
both back.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np

from x2ct.data.dicom_ct import import_pydicom
from x2ct.data.xray_orientation import from_x2ct, x2ct_orientation
from x2ct.fileio import atomic_path
from x2ct.projector.geometry import Geometry

__all__ = ["write_radiograph_dicom", "write_radiograph_png"]


def _stored(display, bits: int, where: str) -> np.ndarray:
    """Stored integers (uint8 or uint16) from display values in [0, 2**bits - 1]."""
    if bits not in (8, 12, 16):
        raise ValueError(f"{where}: bits must be 8, 12 or 16, got {bits!r}")
    a = np.asarray(display.detach().cpu() if hasattr(display, "detach") else display,
                   dtype=np.float64)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"{where}: expected one (H, W) image, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 2**bits - 1:
        raise ValueError(f"{where}: display values must lie in [0, {2**bits - 1}] for "
                         f"{bits} bits, got [{np.nanmin(a):g}, {np.nanmax(a):g}]")
    return np.round(a).astype(np.uint8 if bits == 8 else np.uint16)


def write_radiograph_png(path: str | os.PathLike, display, bits: int) -> Path:
    """Write stored pixel values (H, W) in [0, 2**bits - 1] as a grey PNG, atomically:
    8-bit, or 16-bit for 12 and 16 bits (12-bit values in a 16-bit container)."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: write_radiograph_png writes PNG; the name must end in .png")
    a = _stored(display, bits, str(path))
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(a).save(tmp, format="PNG")
    return path


def _view_position(angle: float) -> str:
    a = angle % 360.0
    for name, ref in (("AP", 0.0), ("RL", 90.0), ("PA", 180.0), ("LL", 270.0), ("AP", 360.0)):
        if abs(a - ref) < 1e-6:
            return name
    return ""


def write_radiograph_dicom(
    path: str | os.PathLike,
    display,
    geometry: Geometry,
    bits: int,
    photometric: str = "MONOCHROME2",
    view_position: str | None = None,
    *,
    orientation: tuple[str, str] | None = None,
    kvp: float | None = None,
    mas: float | None = None,
    window: tuple[float, float] | None = None,
    series_description: str = "Simulated radiograph (x2ct)",
    patient_id: str = "X2CT-SIM",
) -> Path:
    """Write a DX Image Storage (For Presentation) file, atomically.

    Args:
        display: (H, W) stored values in [0, 2**bits - 1] (already inverted for
            MONOCHROME1), in x2ct's pixel convention for ``geometry``'s angle.
        geometry: a single-view Geometry: DistanceSourceToDetector (sdd),
            DistanceSourceToPatient (sad), ImagerPixelSpacing (pixel_spacing).
        bits: 8, 12 or 16 (BitsStored; BitsAllocated 8 or 16).
        photometric: "MONOCHROME2" (bone bright) or "MONOCHROME1".
        view_position: DICOM View Position; by default from the angle (0 AP, 90 RL,
            180 PA, 270 LL, others empty).
        orientation: store the image in this Patient Orientation (e.g. ("R", "F")),
            flipping it from x2ct's convention; default x2ct's own.
        kvp, mas: KVP and Exposure (mAs) tags, when known.
        window: (center, width) for the VOI LUT; default the full stored range.
    """
    import_pydicom(Path(path))
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    if not isinstance(geometry, Geometry) or geometry.num_views != 1:
        raise ValueError(f"{path}: geometry must be a single-view x2ct Geometry")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: photometric must be MONOCHROME1 or MONOCHROME2, got "
                         f"{photometric!r}")
    stored = _stored(display, bits, str(path))
    if stored.shape != tuple(geometry.detector_shape):
        raise ValueError(f"{path}: the image is {stored.shape} but the geometry's detector "
                         f"is {geometry.detector_shape}")
    angle = geometry.angles[0]
    native = x2ct_orientation(angle)
    if orientation is not None:  # from x2ct's convention to the requested one
        orientation = tuple(str(v).upper() for v in orientation)
        stored = from_x2ct(stored, orientation, angle, str(path))
    else:
        orientation = native
    stored = stored.astype(np.uint8 if bits == 8 else np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX Image, For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.datetime.now()
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.PatientName, ds.PatientID = "Simulated^Radiograph", patient_id
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.SeriesDescription = series_description
    ds.Manufacturer, ds.ManufacturerModelName = "x2ct", "x2ct radiograph simulator"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.BodyPartExamined = "SPINE"
    ds.ImageLaterality = "U"
    ds.PatientOrientation = list(orientation)
    ds.ViewPosition = view_position if view_position is not None else _view_position(angle)
    # The C-arm angle (PS3.3 C.8.7.5.1.2) carries views between the named ones.
    ds.PositionerPrimaryAngle = f"{angle % 360.0 - 180.0:.6g}"
    ds.DistanceSourceToDetector = f"{geometry.sdd:.2f}"
    ds.DistanceSourceToPatient = f"{geometry.sad:.2f}"
    ds.EstimatedRadiographicMagnificationFactor = f"{geometry.sdd / geometry.sad:.6f}"
    ds.ImagerPixelSpacing = [f"{s:.6g}" for s in geometry.pixel_spacing]
    if kvp is not None:
        ds.KVP = f"{kvp:g}"
    if mas is not None:
        ds.Exposure = round(mas)
        ds.ExposureInuAs = round(mas * 1000)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PixelIntensityRelationship = "LOG"
    # Sign -1: higher values mean less X-ray intensity (bone bright, MONOCHROME2).
    ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
    center, width = window if window is not None else ((2**bits - 1) / 2, 2**bits)
    ds.WindowCenter, ds.WindowWidth = f"{center:g}", f"{width:g}"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "YES"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    with atomic_path(path, suffix=path.suffix or ".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
