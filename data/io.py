"""CT and X-ray file input and output.

CT volumes are NIfTI files (``.nii`` / ``.nii.gz``) read with nibabel and returned in RAS+
voxel order (DESIGN.md): axis 0 toward the patient's right, 1 anterior, 2 superior, in
Hounsfield units. Writes are atomic: a temporary file in the target folder, then
``os.replace``, so a reader never sees half a file.

X-ray images are read into the normalised line-integral domain the networks see,
``drr / DRR_SCALE`` (see :func:`load_xray`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import torch

from x2ct.fileio import atomic_path
from x2ct.projector import DRR_SCALE

__all__ = [
    "CTImage",
    "XRAY_SUFFIXES",
    "atomic_path",
    "centred_affine",
    "check_hounsfield",
    "load_ct",
    "load_xray",
    "save_ct",
    "save_xray_png",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
XRAY_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".dcm", ".dicom")


class CTImage(NamedTuple):
    """A CT volume in RAS+ voxel order.

    Attributes:
        hu: (X, Y, Z) float32 Hounsfield units; axis 0 toward the patient's right,
            1 anterior, 2 superior.
        spacing: voxel size (sx, sy, sz) in mm (the norms of the affine's columns).
        affine: (4, 4) float64 voxel-to-world (RAS+, mm) matrix of ``hu``.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray


# What a CT in Hounsfield units holds (the rules of check_hounsfield). Air is at -1000, lungs
# at -900 to -500, fat at about -100, muscle and organs at 10 to 80, cancellous bone at
# 100 to 300 and cortical bone above 1000.
#
# Rule 1. Every CT of a body has some voxels below -50 HU: air, lungs or fat. A spine crop
# has them too, in its epidural, paraspinal and retroperitoneal fat. The same values stored
# without their rescale intercept (air at 0, fat near 920), or normalised to [0, 1] or
# [-1, 1], have none. Values within 1 HU of the lowest are not counted: they are the padding
# outside a scanner's reconstruction circle (-2000 or -3024), which a file stored without
# its intercept can also hold.
_HU_BELOW = -50.0
_HU_MIN_FRACTION = 1e-3
# Rule 2. Air, lungs, fat and soft tissue lie between -1100 and 150 HU: most of a body, and
# most of a spine crop. Cortical bone alone lies between 900 and 1200 HU, a few percent
# at most. Without the intercept, fat and soft tissue move into that band, and air onto 0.
# This rule refuses when the band holds more than a quarter as many voxels as the first
# range. It catches such a file even after resampling has spread its padding's edge over
# [-2000, 0], which can satisfy rule 1.
_HU_BODY = (-1100.0, 150.0)
_HU_SHIFTED = (900.0, 1200.0)
_HU_SHIFTED_RATIO = 0.25


def check_hounsfield(hu: np.ndarray, source: str | None = None) -> None:
    """Refuse a CT whose values are not Hounsfield units, before anything is drawn from it.

    X-rays are rendered from HU (``mu = mu_water * (1 + HU / 1000)``). A CT whose values are
    shifted or scaled gives X-rays of another body, and a reconstruction of it. Two rules
    (the module's comments give the reasons):
    - at least 0.1% of voxels lie below -50 HU, not counting values within 1 HU of the
      lowest (the padding);
    - the band from 900 to 1200 HU (where fat and soft tissue lie without the intercept)
      holds at most a quarter as many voxels as -1100 to 150 HU (air to soft tissue).

    The thresholds were checked on x2ct's phantom bodies and their spine crops, not on
    real CTs.

    Raises:
        ValueError: naming ``source`` (or "the CT"), what was found and what to do.
    """
    a = np.asarray(hu)
    lowest, highest = float(a.min()), float(a.max())
    low = np.count_nonzero((a < _HU_BELOW) & (a > lowest + 1.0))
    problem = None
    if low < _HU_MIN_FRACTION * a.size:
        problem = (f"{low / a.size:.3%} of voxels lie below {_HU_BELOW:g} HU (not counting "
                   "the lowest value), where a body's air, lungs and fat put at least 0.1%")
    else:
        body = np.count_nonzero((a >= _HU_BODY[0]) & (a <= _HU_BODY[1]))
        shifted = np.count_nonzero((a >= _HU_SHIFTED[0]) & (a <= _HU_SHIFTED[1]))
        if shifted > _HU_SHIFTED_RATIO * body:
            problem = (f"{shifted / a.size:.1%} of voxels lie between 900 and 1200 HU (fat "
                       f"and soft tissue stored without the intercept) against "
                       f"{body / a.size:.1%} from -1100 to 150 HU (air to soft tissue in HU), "
                       "where a body in HU has at most a quarter as many in the first")
    if problem is None:
        return
    raise ValueError(
        f"{source or 'the CT'}: its values do not look like Hounsfield units. They span "
        f"[{lowest:g}, {highest:g}], and {problem}. Expected air at -1000, fat near -100, "
        "water 0 and bone 300 to 2000. Values stored without their rescale intercept (air "
        "near 0: subtract 1024, or the DICOM RescaleIntercept) or normalised to [0, 1] must "
        "be turned back into HU first."
    )


def _nifti_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    return None


def centred_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Diagonal RAS affine that puts the volume's centre on the origin (DESIGN.md): voxel
    (a, b, c) sits at ((a - (X-1)/2) sx, (b - (Y-1)/2) sy, (c - (Z-1)/2) sz)."""
    affine = np.eye(4)
    for i, (n, s) in enumerate(zip(shape, spacing)):
        affine[i, i] = s
        affine[i, 3] = -(n - 1) / 2 * s
    return affine


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _squeeze_leading(a: np.ndarray, ndim: int, what: str) -> np.ndarray:
    while a.ndim > ndim and a.shape[0] == 1:
        a = a[0]
    if a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    return a


# --- CT ------------------------------------------------------------------------------------


# Limits of what load_ct reads (module constants, so a site with bigger scans can raise
# them). Spacing: a clinical CT has 0.2-10 mm voxels; 0.05-20 mm leaves room for micro-CT
# of specimens and for thick scouts while refusing a unit mistake (metres read as mm give
# 0.0007 "mm", microns 700).
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
MAX_CT_VOXELS = 2**30  # 4 GiB as float32; a 512 x 512 x 2000 body CT is 0.52 G voxels
# deflate compresses at most 1032:1 (zlib's technical details), so a .nii.gz of n bytes
# holds at most about 1032 n bytes of image
_MAX_DEFLATE_RATIO = 1032
_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def _stored_pixdim(path: Path, header_class, fallback) -> tuple:
    """The spatial pixdim as stored in the file (without nibabel's fixes: it silently
    turns a zero pixdim into 1 mm and negative ones positive)."""
    try:
        with nib.openers.ImageOpener(path) as f:
            raw = header_class.from_fileobj(f, check=False)
        return tuple(np.asarray(raw["pixdim"][1:4], dtype=np.float64))
    except Exception:  # not a header nibabel can re-read raw: trust nibabel's reading
        return tuple(fallback)


def _read_header(path: Path):
    """(image proxy, shape, header) without reading the voxels; ValueError naming the
    file for anything that is not a readable NIfTI header."""
    try:
        img = nib.load(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"a {type(img).__name__}, not NIfTI")
        shape = tuple(int(n) for n in img.shape)
        header = img.header
        header.get_data_dtype()
    except MemoryError as e:
        raise ValueError(f"{path}: the NIfTI header is not plausible ({e})") from e
    except Exception as e:  # nibabel raises many types (ImageFileError, HeaderDataError, ...)
        raise ValueError(
            f"{path}: cannot read NIfTI header ({type(e).__name__}: {e}); is the file a NIfTI "
            "image, or truncated?"
        ) from e
    return img, shape, header


def _check_voxel_size(where, spacing, detail: str = "", advice: str = "") -> None:
    """Refuse a voxel size (mm, one value an axis) outside [``MIN_SPACING_MM``,
    ``MAX_SPACING_MM``] (NaN too): the one check of ``load_ct`` for a NIfTI (its pixdim
    and its affine) and of ``load_dicom_series`` (its affine). The ValueError reads
    ``"{where}: voxel size (...) mm{detail} is outside [min, max] mm{advice}"``."""
    values = np.asarray(spacing, dtype=np.float64)
    if not np.all((values >= MIN_SPACING_MM) & (values <= MAX_SPACING_MM)):
        raise ValueError(
            f"{where}: voxel size {tuple(round(float(v), 6) for v in values)} mm{detail} is "
            f"outside [{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm{advice}"
        )


def _check_size(path: Path, shape: tuple, header) -> None:
    """Refuse a header whose image the file cannot hold or this reader should not
    allocate, before any voxel is read."""
    n_voxels = int(np.prod(shape, dtype=object)) if shape else 0
    if n_voxels == 0 or min(shape) < 1:
        raise ValueError(f"{path}: the header declares an empty image of shape {shape}")
    if n_voxels > MAX_CT_VOXELS:
        raise ValueError(
            f"{path}: the header declares {'x'.join(map(str, shape))} = {n_voxels:,} voxels, "
            f"more than the {MAX_CT_VOXELS:,} this reader accepts (x2ct.data.io.MAX_CT_VOXELS)"
        )
    dtype = header.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise ValueError(f"{path}: voxel type {dtype} is not a real number; expected a CT in HU")
    offset = int(header.get_data_offset()) if hasattr(header, "get_data_offset") else 352
    needed = offset + n_voxels * dtype.itemsize
    size = path.stat().st_size
    gz = path.name.lower().endswith(".gz")
    if (gz and needed > _MAX_DEFLATE_RATIO * size + 1024) or (not gz and needed > size):
        raise ValueError(
            f"{path}: the header declares a {'x'.join(map(str, shape))} {dtype} image "
            f"({needed:,} bytes), which a {size:,}-byte {'.nii.gz' if gz else '.nii'} file "
            "cannot hold: truncated, or a wrong header"
        )


def _unit_factor(path: Path, header) -> float:
    """mm per unit of the header's spatial unit (xyzt_units): metre 1000, micron 0.001,
    mm and unknown 1 (unknown is read as mm, with a warning)."""
    try:
        unit = header.get_xyzt_units()[0]
    except Exception:
        unit = "unknown"
    if unit not in _UNIT_TO_MM:
        raise ValueError(f"{path}: unsupported spatial unit {unit!r} in xyzt_units")
    if unit == "unknown":
        warnings.warn(
            f"{path}: the header gives no spatial unit (xyzt_units); reading it as mm",
            stacklevel=3,
        )
    return _UNIT_TO_MM[unit]


def load_ct(path: str | os.PathLike, series: str | int | None = None) -> CTImage:
    """Read a NIfTI CT volume as HU in RAS+ voxel order, spacing in mm.

    A folder is read as one DICOM CT series, a file per slice
    (``x2ct.data.dicom_ct.load_dicom_series``, needs pydicom), reoriented alike; ``series``
    (a SeriesNumber or SeriesInstanceUID) picks one where the folder holds several.

    The image is reoriented with ``nibabel.as_closest_canonical`` (axis flips and
    permutations only; an oblique affine keeps its rotation), its scaling
    (``scl_slope``/``scl_inter``) applied. A trailing singleton 4th axis is dropped. The
    header's spatial unit is honoured (metres and microns become mm; a header without a
    unit is read as mm, with a warning).

    Everything the header says is checked before any voxel is read: the file must be
    able to hold the image it declares, the image must have at most ``MAX_CT_VOXELS``
    voxels, and every voxel size must lie in [``MIN_SPACING_MM``, ``MAX_SPACING_MM``].

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a ``.nii``/``.nii.gz`` file; empty, unreadable or truncated; a
            header that the file cannot hold or too large; not 3-D; a non-finite voxel; a
            voxel size that is not positive, finite and within the limits. The message
            names the file and what was expected.
    """
    path = Path(path)
    if path.is_dir():
        from x2ct.data.dicom_ct import load_dicom_series

        return load_dicom_series(path, series)
    if series is not None:
        raise ValueError(f"{path}: a series is chosen only in a folder of DICOM series, not "
                         "in a NIfTI file")
    if _nifti_suffix(path) is None:
        raise ValueError(f"{path}: expected a NIfTI CT volume (.nii or .nii.gz) or a folder "
                         "holding one DICOM CT series")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CT file (expected a .nii or .nii.gz volume)")
    # nibabel logs the header fixes it makes ("setting 0 dims to 1") to stderr whenever a
    # header is copied; load_ct checks the stored header itself and says what is wrong
    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        return _load_ct(path)
    finally:
        logger.disabled = disabled


def _load_ct(path: Path) -> CTImage:
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; expected a NIfTI CT volume")
    img, shape, header = _read_header(path)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(
            f"{path}: expected a 3-D CT volume (X, Y, Z), got a {len(shape)}-D image of shape "
            f"{tuple(shape)}"
        )
    _check_size(path, tuple(int(n) for n in img.shape), header)
    # nibabel silently turns a zero pixdim into 1 mm on load: check the header as stored.
    factor = _unit_factor(path, header)
    try:
        zooms = _stored_pixdim(path, type(header), header.get_zooms()[:3])
        affine = np.asarray(img.affine, dtype=np.float64).copy()
    except Exception as e:
        raise ValueError(f"{path}: cannot read the NIfTI geometry ({e})") from e
    affine[:3, :] *= factor  # to mm (rotation, zooms and origin alike)
    col_norms = np.linalg.norm(affine[:3, :3], axis=0)
    spacing_ok = all(np.isfinite(z) and z > 0 for z in zooms)
    if not spacing_ok or not np.all(np.isfinite(affine)) or np.any(col_norms <= 0):
        raise ValueError(
            f"{path}: voxel size must be positive and finite, got "
            f"{tuple(float(z) for z in zooms)} (header pixdim) and affine "
            + np.array2string(affine, precision=3).replace("\n", " ")
        )
    mm = np.asarray(zooms) * factor
    for name, values in (("pixdim", mm), ("affine", col_norms)):
        _check_voxel_size(path, values, f" (header {name}, unit {header.get_xyzt_units()[0]})",
                          "; check the header's spacing and unit (xyzt_units)")
    try:
        if len(img.shape) == 4:
            img = img.slicer[..., 0]
        canonical = nib.as_closest_canonical(img)
        hu = canonical.get_fdata(dtype=np.float32)
        affine = np.asarray(canonical.affine, dtype=np.float64).copy()
    except MemoryError as e:
        raise ValueError(f"{path}: not enough memory to read the {shape} volume") from e
    except Exception as e:  # gzip, zlib, EOF and nibabel errors of a corrupt data block
        raise ValueError(
            f"{path}: cannot read the voxel data ({type(e).__name__}: {e}); the file may be "
            "truncated or corrupt"
        ) from e
    affine[:3, :] *= factor
    if hu.shape != shape:
        raise ValueError(f"{path}: read {hu.shape} voxels, the header declares {shape}")
    bad = int(hu.size - np.count_nonzero(np.isfinite(hu)))
    if bad:
        raise ValueError(f"{path}: {bad} non-finite voxels (NaN or inf); expected finite HU")
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    return CTImage(np.ascontiguousarray(hu), spacing, affine)


def save_ct(
    path: str | os.PathLike,
    hu,
    spacing: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write a volume (HU or a label map) in RAS+ voxel order as NIfTI, atomically.

    Args:
        path: ``.nii`` or ``.nii.gz`` file; parent folders are created.
        hu: (X, Y, Z) array or tensor (leading singleton axes, e.g. (1, X, Y, Z), are
            dropped). Integral values that fit int16 are stored as int16 (labels, integer
            HU), anything else as float32; both read back exactly with :func:`load_ct`.
        spacing: voxel size in mm; without ``affine`` the affine is diagonal with the volume
            centred on the origin (:func:`centred_affine`). Default 1 mm.
        affine: (4, 4) voxel-to-world RAS matrix; if ``spacing`` is given too they must
            agree. NIfTI stores it in float32.

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = _nifti_suffix(path)
    if suffix is None:
        raise ValueError(f"{path}: save_ct writes NIfTI; the name must end in .nii or .nii.gz")
    data = _squeeze_leading(_as_numpy(hu), 3, f"{path}: the volume")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise ValueError(f"{path}: expected a real numeric volume, got dtype {data.dtype}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: the volume has non-finite values (NaN or inf)")
    if affine is None:
        spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"{path}: spacing must be three positive numbers, got {spacing!r}")
        affine = centred_affine(data.shape, spacing)
    else:
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"{path}: affine must be a finite 4x4 matrix, got {affine!r}")
        norms = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(norms <= 0):
            raise ValueError(f"{path}: the affine has a zero voxel size: {norms.tolist()}")
        if spacing is not None and not np.allclose(norms, spacing, rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"{path}: spacing {tuple(spacing)} disagrees with the affine's voxel size "
                f"{tuple(norms.tolist())}"
            )
    info = np.iinfo(np.int16)
    integral = data.dtype.kind in "iub" or bool(np.all(np.round(data) == data))
    if integral and data.size and info.min <= data.min() and data.max() <= info.max:
        data = data.astype(np.int16)
    else:
        data = data.astype(np.float32)
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path


# --- X-rays --------------------------------------------------------------------------------


def _read_image(path: Path) -> np.ndarray:
    """Normalised grey image from PNG/TIFF: value / the dtype's maximum; float images are
    taken as already normalised. RGB(A) and palette images are converted to luma."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            _check_xray_size(path, (im.size[1], im.size[0]))  # before decoding any pixel
            im.load()
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA")
                mode = im.mode
            a = np.array(im)
    except ValueError:
        raise
    except MemoryError as e:
        raise ValueError(f"{path}: not enough memory to decode the image") from e
    except Exception as e:  # Pillow raises many types (DecompressionBombError, SyntaxError)
        raise ValueError(
            f"{path}: cannot read the image ({type(e).__name__}: {e}); expected a PNG or TIFF"
        ) from e
    if mode in ("RGB", "RGBA", "LA") or (a.ndim == 3 and a.shape[-1] in (3, 4)):
        if a.shape[-1] in (2, 4):  # drop alpha
            a = a[..., :-1]
        if a.shape[-1] == 3:
            a = a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma
        else:
            a = a[..., 0].astype(np.float64)
        return (a / 255.0).astype(np.float32)
    if a.dtype == bool:
        return a.astype(np.float32)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    if a.dtype.kind in "ui":
        top = np.iinfo(a.dtype).max
        if mode == "I" and a.max(initial=0) <= 65535:
            top = 65535  # 16-bit data that Pillow widened to int32
        return (a.astype(np.float64) / top).astype(np.float32)
    raise ValueError(f"{path}: unsupported image mode {mode!r} (dtype {a.dtype})")


MAX_XRAY_PIXELS = 8192**2
"""Largest X-ray load_xray decodes (a 43 x 43 cm flat panel at 0.1 mm is 4300^2 pixels)."""


def _check_xray_size(path: Path, shape: Sequence[int]) -> None:
    n = int(np.prod([int(s) for s in shape], dtype=object)) if len(shape) else 1
    if n > MAX_XRAY_PIXELS:
        raise ValueError(
            f"{path}: {'x'.join(str(int(s)) for s in shape)} pixels is more than the "
            f"{MAX_XRAY_PIXELS:,} an X-ray may have (x2ct.data.io.MAX_XRAY_PIXELS)"
        )
    if n == 0:
        raise ValueError(f"{path}: the image is empty (shape {tuple(shape)})")


def _read_npy(path: Path) -> np.ndarray:
    """A .npy array, its header checked (dtype, size, against the file) before reading."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
    except Exception as e:  # ValueError, EOFError, SyntaxError of a garbled header
        raise ValueError(f"{path}: cannot read the NumPy array header ({e})") from e
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric (H, W) array, got dtype {dtype}")
    _check_xray_size(path, shape)
    needed = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed > path.stat().st_size:
        raise ValueError(
            f"{path}: the NumPy header declares {shape} {dtype} ({needed:,} bytes), the file "
            f"has {path.stat().st_size:,}: truncated"
        )
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the NumPy array ({type(e).__name__}: {e})") from e


def _read_dicom(path: Path) -> np.ndarray:
    """A DICOM radiograph in load_xray's convention: ``read_dicom_pixels`` (the Modality
    LUT applied, bone bright) normalised over the values of the stored range, so 0..1."""
    from x2ct.data.xray_files import dicom_value_range, read_dicom_pixels

    pixels, bits, _, ds = read_dicom_pixels(path)
    low, high = dicom_value_range(ds, bits)
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ValueError(f"{path}: the Modality LUT maps the stored range to "
                         f"[{low:g}, {high:g}]; expected an increasing range of values")
    return ((pixels - low) / (high - low)).astype(np.float32)


def load_xray(
    path: str | os.PathLike,
    shape: Sequence[int] | None = None,
    xray_scale: float = DRR_SCALE,
) -> np.ndarray:
    """Read an X-ray into the networks' domain, the normalised line integral ``drr / DRR_SCALE``.

    Convention: a PNG or TIFF (and DICOM) is a linear display of the line integral, bone
    bright, whose dtype's full range (255 for 8-bit, 65535 for 16-bit) stands for
    ``DRR_SCALE``; so ``value / max_of_dtype`` is the normalised X-ray. A float TIFF holds
    the normalised value itself. A ``.npy`` holds raw line integrals and is divided by
    ``xray_scale``. RGB images become grey (luma). :func:`save_xray_png` writes this
    convention.

    DICOM (needs ``pydicom``) is read by ``x2ct.data.xray_files.read_dicom_pixels``, as
    ``read_radiograph`` reads it: the Modality LUT applied (RescaleSlope/Intercept or a
    Modality LUT Sequence), MONOCHROME1 and PresentationLUTShape INVERSE mirrored so bone
    is bright, rows and columns as stored (no Patient Orientation flips). The value is then
    normalised over the stored value range after the Modality LUT: ``(v - low) / (high -
    low)``, where low and high are the least and greatest the LUT gives over the stored
    range (0 .. 2**BitsStored - 1, or the signed range when PixelRepresentation is 1). For
    an unsigned file with a linear (or no) rescale this is ``stored / (2**BitsStored - 1)``
    (MONOCHROME1: one minus that).

    Args:
        path: ``.png``, ``.tif``/``.tiff``, ``.npy`` or ``.dcm`` file.
        shape: (H, W) to resize to (bilinear, antialiased), with a warning when it differs.
        xray_scale: divisor of ``.npy`` line integrals (default ``DRR_SCALE``).

    Returns:
        (H, W) float32 numpy array.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in XRAY_SUFFIXES:
        raise ValueError(f"{path}: expected an X-ray image ({', '.join(XRAY_SUFFIXES)})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such X-ray image")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; expected an X-ray image")
    if suffix == ".npy":
        a = _read_npy(path)
        if not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"{path}: expected a numeric (H, W) array, got dtype {a.dtype}")
        a = a.astype(np.float32) / np.float32(xray_scale)
    elif suffix in (".dcm", ".dicom"):
        a = _read_dicom(path)
    else:
        a = _read_image(path)
    a = _squeeze_leading(np.asarray(a), 2, f"{path}: the X-ray")
    if a.size == 0:
        raise ValueError(f"{path}: the X-ray is empty (shape {a.shape})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: the X-ray has non-finite values")
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (H, W), got {shape!r}")
        if a.shape != shape:
            warnings.warn(
                f"{path}: X-ray of {a.shape[0]}x{a.shape[1]} pixels resized to "
                f"{shape[0]}x{shape[1]}; check that the geometry's pixel spacing matches",
                stacklevel=2,
            )
            t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
            t = torch.nn.functional.interpolate(
                t, size=shape, mode="bilinear", align_corners=False, antialias=True
            )
            a = t[0, 0].numpy()
    return np.ascontiguousarray(a, dtype=np.float32)


def save_xray_png(path: str | os.PathLike, xray) -> Path:
    """Write a normalised X-ray (``drr / DRR_SCALE``) as a 16-bit grey PNG, atomically.

    Values are clipped to [0, 1] and stored as ``round(x * 65535)``, so
    ``load_xray(path)`` returns ``x`` to within 1/65535 inside [0, 1].

    Args:
        path: ``.png`` file; parent folders are created.
        xray: (H, W) array or tensor (leading singleton axes are dropped).
    """
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: save_xray_png writes PNG; the name must end in .png")
    a = _squeeze_leading(_as_numpy(xray).astype(np.float64), 2, f"{path}: the X-ray")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: the X-ray has non-finite values")
    q = np.round(np.clip(a, 0.0, 1.0) * 65535.0).astype(np.uint16)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(q).save(tmp, format="PNG")
    return path
