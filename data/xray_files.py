"""Reading radiograph files (PNG, TIFF, DICOM, NumPy) with their geometry; geometry.json.

``read_radiograph`` returns the image in x2ct's pixel convention for its view (DESIGN.md
"Views": row 0 most superior, columns along ``u(t) = (-cos t, -sin t, 0)``, so an AP view
has the patient's right in column 0), high values for more attenuation, the Modality LUT
(RescaleSlope/Intercept) applied and no VOI LUT or window, plus a single-view
``x2ct.projector.Geometry`` and a note of where each value came from.

View angles (x2ct's gantry angle, the source at ``sad * (-sin t, cos t, 0)`` in RAS):
AP 0, PA 180, source at the patient's left 90, at the patient's right 270. DICOM View
Position (0018,5101) (PS3.3 C.8.1.1, C.8.11.5: AP, PA, LL = left lateral, RL = right
lateral; a lateral is named for the side nearest the image receptor): LL, left side on the
detector, source on the right, is 270; RL is 90. C-arm exports (XA/RF) give Positioner
Primary Angle (0018,1510) instead (PS3.3 C.8.7.5.1.2: 0 with the patient facing the
detector, +90 with the detector at the patient's left, LAO): x2ct's angle is that + 180.

Patient Orientation (0020,0020) names the patient directions of increasing column and
increasing row (PS3.3 C.7.6.1.1.1), e.g. ["L", "F"]; rows and columns are flipped (or the
image transposed) to x2ct's convention for the view's angle. When it is missing the usual
display convention is assumed and ``source["orientation"]`` says so: frontal views with
the patient's right on the viewer's left (["L", "F"]); laterals as if looking at the side
nearest the detector (LL ["P", "F"], RL ["A", "F"]).

Writing: ``x2ct.data.xray_write``. A sidecar ``geometry.json`` (format
``x2ct-radiographs/1``) describes views that carry no geometry of their own (PNG) or
overrides them; ``read_geometry_json`` also reads the older
file the DRR command wrote beside its 16-bit DRR PNGs.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from x2ct.data.dicom_ct import decode_pixels, import_pydicom
from x2ct.data.xray_orientation import (
    VIEW_ANGLES,
    display_orientation,
    to_x2ct,
    view_angle,
    x2ct_orientation,
)
from x2ct.fileio import atomic_path
from x2ct.projector.geometry import Geometry

__all__ = [
    "DEFAULT_SID_MM",
    "DEFAULT_SOD_MM",
    "GEOMETRY_FORMAT",
    "INTENSITIES",
    "RADIOGRAPH_SUFFIXES",
    "RadiographFile",
    "RadiographView",
    "read_geometry_json",
    "read_radiograph",
    "write_geometry_json",
]

GEOMETRY_FORMAT = "x2ct-radiographs/1"
INTENSITIES = ("display", "line_integral", "normalised_drr")
"""What pixel values mean: "display", an unknown monotone curve of the line integral (any
PNG/DICOM radiograph); "line_integral", the line integral itself (.npy); "normalised_drr",
x2ct's 16-bit DRR PNGs, ``value / 65535 = drr / DRR_SCALE``."""
RADIOGRAPH_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom", ".npy")
DEFAULT_SID_MM = 1000.0
"""Source-to-detector distance assumed when a file does not say (a C-arm-like setup)."""
DEFAULT_SOD_MM = 700.0
"""Source-to-patient (isocentre) distance assumed when a file does not say."""

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


@dataclass
class RadiographFile:
    """A radiograph as read by :func:`read_radiograph`.

    pixels: (H, W) float64, high = more attenuation (bone bright), in x2ct's pixel
        convention for the view's angle (when the angle is known).
    bits: stored bit depth, or None (float images, .npy).
    intensity: one of ``INTENSITIES``.
    geometry: single-view Geometry (``detector_shape`` the image's), or None when the
        angle or the pixel spacing is unknown.
    orientation: Patient Orientation as read (before flips), or None.
    source: where each value came from ("dicom tag ...", "geometry.json", "flag",
        "default ..."), keyed "angle", "pixel_spacing", "sid", "sod", "orientation",
        "photometric", "intensity".
    """

    pixels: np.ndarray
    bits: int | None
    intensity: str
    geometry: Geometry | None
    orientation: tuple[str, ...] | None
    source: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


@dataclass(frozen=True)
class RadiographView:
    """One view of a ``geometry.json``: its file, geometry and pixel conventions."""

    name: str
    file: str
    geometry: Geometry
    intensity: str = "display"
    bits: int | None = None
    photometric: str = "MONOCHROME2"
    orientation: tuple[str, str] | None = None

    def to_dict(self) -> dict:
        g = self.geometry
        d = {
            "name": self.name, "file": self.file, "angle_deg": g.angles[0],
            "sid_mm": g.sdd, "sod_mm": g.sad, "pixel_spacing_mm": list(g.pixel_spacing),
            "detector_offset_mm": list(g.detector_offset), "shape": list(g.detector_shape),
            "photometric": self.photometric, "bits": self.bits, "intensity": self.intensity,
        }
        if self.orientation is not None:
            d["orientation"] = list(self.orientation)
        return d


# --- geometry.json -------------------------------------------------------------------------


def _number(d: dict, key: str, where: str, default=None, positive: bool = True):
    value = d.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
        value
    ) or (positive and value <= 0):
        raise ValueError(f"{where}: {key!r} must be a {'positive ' if positive else ''}"
                         f"finite number, got {value!r}")
    return float(value)


def _pair(d: dict, key: str, where: str, default=None, positive: bool = True):
    value = d.get(key, default)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{where}: {key!r} must be two numbers, got {value!r}")
    return tuple(_number({key: v}, key, where, positive=positive) for v in value)


def _image_shape(path: Path) -> tuple[int, int]:
    """(H, W) of an image file without decoding its pixels."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        a = np.load(path, mmap_mode="r", allow_pickle=False)
        return int(a.shape[-2]), int(a.shape[-1])
    if suffix in (".dcm", ".dicom"):
        ds = import_pydicom(path).dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


def _view_entry(d: dict, folder: Path, where: str) -> RadiographView:
    if not isinstance(d, dict) or "file" not in d:
        raise ValueError(f"{where}: each view needs at least a 'file', got {d!r}")
    file = str(d["file"])
    name = str(d.get("name", Path(file).stem))
    angle = _number(d, "angle_deg", where, positive=False)
    if angle is None:
        raise ValueError(f"{where}: view {name!r} has no 'angle_deg'")
    intensity = d.get("intensity", "display")
    if intensity not in INTENSITIES:
        raise ValueError(f"{where}: view {name!r} 'intensity' must be one of {INTENSITIES}, "
                         f"got {intensity!r}")
    photometric = d.get("photometric", "MONOCHROME2")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{where}: view {name!r} 'photometric' must be MONOCHROME1 or "
                         f"MONOCHROME2, got {photometric!r}")
    bits = d.get("bits")
    if bits is not None and (not isinstance(bits, int) or not 1 <= bits <= 16):
        raise ValueError(f"{where}: view {name!r} 'bits' must be 1-16 or null, got {bits!r}")
    spacing = _pair(d, "pixel_spacing_mm", where)
    if spacing is None:
        raise ValueError(f"{where}: view {name!r} has no 'pixel_spacing_mm' [dv, du]")
    shape = d.get("shape")
    if shape is None:
        image = folder / file
        if not image.is_file():
            raise ValueError(f"{where}: view {name!r} has no 'shape' and {image} is missing")
        shape = _image_shape(image)
    orientation = d.get("orientation")
    if orientation is not None:
        orientation = tuple(str(v) for v in orientation)
    try:
        geometry = Geometry(
            sad=_number(d, "sod_mm", where, DEFAULT_SOD_MM),
            sdd=_number(d, "sid_mm", where, DEFAULT_SID_MM),
            detector_shape=tuple(int(n) for n in shape), pixel_spacing=spacing,
            angles=(angle,),
            detector_offset=_pair(d, "detector_offset_mm", where, (0.0, 0.0), positive=False),
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: view {name!r}: {e}") from e
    return RadiographView(name, file, geometry, intensity, bits, photometric, orientation)


def read_geometry_json(path: str | os.PathLike) -> dict[str, RadiographView]:
    """The views of a ``geometry.json``, keyed by both their name and their file name.

    Reads ``x2ct-radiographs/1`` files (``{"format": ..., "views": [{"name", "file",
    "angle_deg", "sid_mm", "sod_mm", "pixel_spacing_mm": [dv, du], "detector_offset_mm",
    "photometric", "bits", "intensity", "orientation"?, "shape"?}, ...]}``) and the
    older file of ``python -m x2ct.projector`` (``{"geometry": Geometry.to_dict(), "views":
    [names]}``, its 16-bit PNGs "normalised_drr" in x2ct's convention).
    """
    path = Path(path)
    where = str(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such geometry file") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the geometry JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    views: list[RadiographView] = []
    if d.get("format") == GEOMETRY_FORMAT:
        if not isinstance(d.get("views"), list) or not d["views"]:
            raise ValueError(f"{path}: 'views' must be a non-empty list")
        views = [_view_entry(v, path.parent, f"{where} views[{i}]")
                 for i, v in enumerate(d["views"])]
    elif isinstance(d.get("geometry"), dict):  # the DRR command's older sidecar
        try:
            geometry = Geometry.from_dict(d["geometry"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: 'geometry' is not an x2ct Geometry ({e})") from e
        names = d.get("views") or [f"view_{a:g}deg" for a in geometry.angles]
        if len(names) != geometry.num_views:
            raise ValueError(f"{path}: {len(names)} view names for {geometry.num_views} angles")
        views = [
            RadiographView(str(n), f"{n}.png", g, "normalised_drr", 16, "MONOCHROME2",
                           x2ct_orientation(g.angles[0]))
            for n, g in zip(names, geometry.split())
        ]
    else:
        raise ValueError(
            f"{path}: not an x2ct geometry file (expected \"format\": \"{GEOMETRY_FORMAT}\" "
            "or the DRR command's {\"geometry\": ...})"
        )
    out: dict[str, RadiographView] = {}
    for v in views:
        out[v.name] = v
        out[v.file] = v
    return out


def write_geometry_json(path: str | os.PathLike, views) -> Path:
    """Write views (:class:`RadiographView`) as an ``x2ct-radiographs/1`` file, atomically."""
    path = Path(path)
    body = {"format": GEOMETRY_FORMAT, "views": [v.to_dict() for v in views]}
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(body, indent=2))
    return path


# --- reading -------------------------------------------------------------------------------


def _modality_lut(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def dicom_value_range(ds, bits: int) -> tuple[float, float]:
    """(lowest, highest) value that the stored range (0 .. 2**bits - 1, or the signed range
    when PixelRepresentation is 1) takes under ``ds``'s Modality LUT."""
    signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = _modality_lut(np.array([lo, hi]), ds)
    return float(ends.min()), float(ends.max())


def read_dicom_pixels(path: Path):
    """(pixels, bits, photometric, tags) of a DICOM radiograph: x2ct's one reader of DICOM
    radiograph pixels (``read_radiograph``, ``x2ct.data.io.load_xray``).

    pixels: (H, W) float64, rows and columns as stored, the Modality LUT applied
        (RescaleSlope/Intercept or a Modality LUT Sequence, pydicom's
        ``apply_modality_lut``), attenuation high: MONOCHROME1 and PresentationLUTShape
        INVERSE (low values shown white) are mirrored within :func:`dicom_value_range`.
    bits: BitsStored (1-32). photometric: "MONOCHROME1", "MONOCHROME2" or
        "MONOCHROME2 INVERSE", as read. tags: the pydicom dataset.

    The size (Rows x NumberOfFrames by Columns, at most ``MAX_XRAY_PIXELS``), BitsStored
    and the photometric interpretation (grey only) are checked before any pixel is
    decoded; a multi-frame file is refused (``decode_pixels``). Every refusal is a
    ValueError naming the file.
    """
    from x2ct.data.io import _check_xray_size

    pydicom = import_pydicom(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises many types for bad files
        raise ValueError(f"{path}: cannot read the DICOM file ({e})") from e
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        bits = int(getattr(ds, "BitsStored", 16))
        photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
        shape = str(getattr(ds, "PresentationLUTShape", "IDENTITY")).upper()
    except Exception as e:  # a missing or garbled image tag
        raise ValueError(f"{path}: cannot read the DICOM pixel data ({e})") from e
    _check_xray_size(path, (rows * frames, cols))  # before decoding any pixel
    if not 1 <= bits <= 32:
        raise ValueError(f"{path}: BitsStored {bits} is not in [1, 32]")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: PhotometricInterpretation {photometric!r}; expected a grey "
                         "radiograph (MONOCHROME1 or MONOCHROME2)")
    raw = decode_pixels(ds, path)
    if raw.ndim != 2:
        raise ValueError(f"{path}: expected one grey image, got pixel data of shape {raw.shape}")
    try:
        pixels = _modality_lut(raw, ds)
        # MONOCHROME1 shows low values white (bone); INVERSE on MONOCHROME2 does the same.
        if photometric == "MONOCHROME1" or shape == "INVERSE":
            low, high = dicom_value_range(ds, bits)
            pixels = (low + high) - pixels
            photometric = "MONOCHROME1" if photometric == "MONOCHROME1" else "MONOCHROME2 INVERSE"
    except Exception as e:  # a garbled RescaleSlope/Intercept or Modality LUT Sequence
        raise ValueError(f"{path}: cannot apply the DICOM Modality LUT ({e})") from e
    return pixels, bits, photometric, ds


def _read_image(path: Path) -> tuple[np.ndarray, int | None]:
    """Raw grey values of a PNG/TIFF and their bit depth (None for float images)."""
    from PIL import Image, UnidentifiedImageError

    from x2ct.data.io import _check_xray_size

    try:
        with Image.open(path) as im:
            _check_xray_size(path, (im.size[1], im.size[0]))  # before decoding any pixel
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA")
            mode, a = im.mode, np.array(im)
    except ValueError as e:
        if str(e).startswith(str(path)):  # the size check's own message
            raise
        raise ValueError(f"{path}: cannot read the image ({e}); expected a PNG or TIFF") from e
    except MemoryError as e:
        raise ValueError(f"{path}: not enough memory to decode the image") from e
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read the image ({e}); expected a PNG or TIFF") from e
    if a.ndim == 3:
        if a.shape[-1] in (2, 4):
            a = a[..., :-1]
        a = a[..., 0] if a.shape[-1] == 1 else a.astype(np.float64) @ [0.299, 0.587, 0.114]
        return np.asarray(a, dtype=np.float64), 8
    if a.dtype == bool:
        return a.astype(np.float64), 1
    if a.dtype.kind == "f":
        return a.astype(np.float64), None
    bits = 16 if a.dtype.itemsize >= 2 or mode.startswith("I") else 8
    if mode == "I" and a.max(initial=0) > 65535:
        bits = 32
    return a.astype(np.float64), bits


def _sidecar(path: Path, geometry_json) -> tuple[RadiographView | None, str | None]:
    if geometry_json is not None:
        views = read_geometry_json(geometry_json)
        entry = views.get(path.name)
        if entry is None:
            raise ValueError(f"{geometry_json}: no view for {path.name}; it lists "
                             f"{sorted({v.file for v in views.values()})}")
        return entry, str(geometry_json)
    auto = path.parent / "geometry.json"
    if auto.is_file():
        try:
            entry = read_geometry_json(auto).get(path.name)
        except ValueError as e:
            _warn_once(f"sidecar:{auto}", f"{auto} ignored: {e}")
            return None, None
        return entry, str(auto) if entry is not None else None
    return None, None


def _dicom_angle(ds) -> tuple[float | None, str]:
    view = str(getattr(ds, "ViewPosition", "") or "").strip().upper()
    if view in VIEW_ANGLES:
        note = " (a generic lateral, taken as x2ct's 90)" if view in ("LATERAL", "LAT") else ""
        return VIEW_ANGLES[view], f"dicom tag ViewPosition {view}{note}"
    primary = getattr(ds, "PositionerPrimaryAngle", None)
    if primary is not None and str(primary) != "":
        return (float(primary) + 180.0) % 360.0, "dicom tag PositionerPrimaryAngle + 180"
    return None, f"unknown (ViewPosition {view!r})" if view else "unknown"


def _dicom_spacing(ds, sid, sod, source) -> tuple[float, float] | None:
    imager = getattr(ds, "ImagerPixelSpacing", None)
    if imager:
        source["pixel_spacing"] = "dicom tag ImagerPixelSpacing (at the detector)"
        return float(imager[0]), float(imager[1])
    spacing = getattr(ds, "PixelSpacing", None)
    if not spacing:
        return None
    dv, du = float(spacing[0]), float(spacing[1])
    calibration = str(getattr(ds, "PixelSpacingCalibrationType", "") or "").upper()
    if calibration in ("GEOMETRY", "FIDUCIAL"):  # calibrated in the patient: magnify back
        mag = getattr(ds, "EstimatedRadiographicMagnificationFactor", None)
        mag = float(mag) if mag else (sid / sod if sid and sod else None)
        if mag is None:
            source["pixel_spacing"] = ("dicom tag PixelSpacing, calibrated at the patient; "
                                       "no magnification known, so taken at the detector")
            return dv, du
        source["pixel_spacing"] = (f"dicom tag PixelSpacing, calibrated at the patient "
                                   f"({calibration}), times magnification {mag:.3f}")
        return dv * mag, du * mag
    source["pixel_spacing"] = ("dicom tag PixelSpacing (no calibration type: taken as the "
                               "detector's)")
    return dv, du


def read_radiograph(
    path: str | os.PathLike,
    *,
    geometry_json: str | os.PathLike | None = None,
    view=None,
    pixel_spacing: tuple[float, float] | None = None,
    sid_mm: float | None = None,
    sod_mm: float | None = None,
    default_view=None,
) -> RadiographFile:
    """Read a radiograph (PNG 8/16-bit, TIFF, DICOM with pydicom, .npy) in x2ct's
    conventions (see the module docstring).

    Values come, in order of precedence, from the flags (``view``: a name or an angle in
    degrees, ``pixel_spacing`` (dv, du) mm at the detector, ``sid_mm``, ``sod_mm``), from
    ``geometry_json`` (or a ``geometry.json`` beside the file that lists it), from DICOM
    tags, and from defaults; ``source`` records which. ``default_view`` is the angle taken
    when nothing gives one (``source["angle"]`` is then ``"default_view"``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in RADIOGRAPH_SUFFIXES:
        raise ValueError(f"{path}: expected a radiograph ({', '.join(RADIOGRAPH_SUFFIXES)})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such radiograph")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    entry, json_name = _sidecar(path, geometry_json)
    source: dict[str, str] = {}
    ds = None
    orientation = None
    if suffix in (".dcm", ".dicom"):
        pixels, bits, photometric, ds = read_dicom_pixels(path)
        intensity = "display"
        source["photometric"] = f"dicom tag PhotometricInterpretation {photometric}"
        value = getattr(ds, "PatientOrientation", None)
        if value:
            orientation = tuple(str(v) for v in value)
            source["orientation"] = "dicom tag PatientOrientation"
    elif suffix == ".npy":
        from x2ct.data.io import _read_npy  # header (dtype, size) checked before reading

        pixels = _read_npy(path)
        pixels, bits, intensity = pixels.astype(np.float64), None, "line_integral"
    else:
        pixels, bits = _read_image(path)
        intensity = "display"
    pixels = np.squeeze(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected one (H, W) image (2 dimensions), got shape "
                         f"{pixels.shape}")
    if not np.all(np.isfinite(pixels)):
        raise ValueError(f"{path}: the radiograph has non-finite values")

    if entry is not None:  # the sidecar describes this file
        intensity, source["intensity"] = entry.intensity, "geometry.json"
        if entry.bits is not None:
            bits = entry.bits
        if ds is None:
            source["photometric"] = "geometry.json"
            if entry.photometric == "MONOCHROME1":
                pixels = float(2 ** (bits or 16) - 1) - pixels
            if entry.orientation is not None:
                orientation, source["orientation"] = entry.orientation, "geometry.json"
    else:
        source["intensity"] = "file type"

    # Angle, spacing and distances: flags > geometry.json > DICOM > defaults.
    angle, spacing, sid, sod, offset = None, None, None, None, (0.0, 0.0)
    if entry is not None:
        g = entry.geometry
        angle, spacing, sid, sod, offset = g.angles[0], g.pixel_spacing, g.sdd, g.sad, \
            g.detector_offset
        for key in ("angle", "pixel_spacing", "sid", "sod"):
            source[key] = f"geometry.json ({json_name})"
    elif ds is not None:
        angle, source["angle"] = _dicom_angle(ds)
        for key, tag in (("sid", "DistanceSourceToDetector"), ("sod", "DistanceSourceToPatient")):
            value = getattr(ds, tag, None)
            if value:
                source[key] = f"dicom tag {tag}"
                if key == "sid":
                    sid = float(value)
                else:
                    sod = float(value)
        spacing = _dicom_spacing(ds, sid, sod, source)
    if view is not None:
        angle, source["angle"] = view_angle(view), "flag"
    if angle is None and default_view is not None:
        angle, source["angle"] = view_angle(default_view), "default_view"
    if pixel_spacing is not None:
        spacing, source["pixel_spacing"] = tuple(float(s) for s in pixel_spacing), "flag"
    if sid_mm is not None:
        sid, source["sid"] = float(sid_mm), "flag"
    if sod_mm is not None:
        sod, source["sod"] = float(sod_mm), "flag"
    if sid is None:
        sid, source["sid"] = DEFAULT_SID_MM, "default"
    if sod is None:
        sod, source["sod"] = DEFAULT_SOD_MM, "default"

    if angle is not None:
        target = orientation
        if target is None:
            target = display_orientation(angle)
            source["orientation"] = f"default (display convention {list(target)})"
            _warn_once("orientation", f"{path}: no Patient Orientation; assuming the display "
                       f"convention {list(target)} (see x2ct.data.xray_files)")
        pixels = to_x2ct(pixels, target, angle, str(path))
    else:
        source.setdefault("angle", "unknown")
        source.setdefault("orientation", "unknown: the image is returned as stored")

    geometry = None
    if angle is not None and spacing is not None:
        try:
            geometry = Geometry(sad=sod, sdd=sid, detector_shape=tuple(pixels.shape),
                                pixel_spacing=spacing, angles=(angle,), detector_offset=offset)
        except ValueError as e:
            raise ValueError(f"{path}: inconsistent geometry ({e})") from e
    return RadiographFile(np.ascontiguousarray(pixels, dtype=np.float64), bits, intensity,
                          geometry, orientation, source, path)


