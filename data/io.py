"""CT and X-ray file input and output.

CT volumes are NIfTI files (``.nii`` / ``.nii.gz``) read with nibabel and returned in RAS+
voxel order (DESIGN.md): axis 0 toward the patient's right, 1 anterior, 2 superior, in
Hounsfield units. Writes are atomic: a temporary file in the target folder, then
``os.replace``, so a reader never sees half a file.

X-ray images are read into the normalised line-integral domain the networks see,
``drr / DRR_SCALE`` (see :func:`load_xray`).
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
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


def _stored_zooms(path: Path, header_class, fallback) -> tuple:
    """The spatial pixdim as stored in the file (without nibabel's fixes)."""
    try:
        with nib.openers.ImageOpener(path) as f:
            raw = header_class.from_fileobj(f, check=False)
        return tuple(np.abs(np.asarray(raw["pixdim"][1:4], dtype=np.float64)))
    except Exception:  # not a header nibabel can re-read raw: trust nibabel's reading
        return tuple(fallback)


def load_ct(path: str | os.PathLike) -> CTImage:
    """Read a NIfTI CT volume as HU in RAS+ voxel order.

    The image is reoriented with ``nibabel.as_closest_canonical`` (axis flips and
    permutations only; an oblique affine keeps its rotation), its scaling
    (``scl_slope``/``scl_inter``) applied. A trailing singleton 4th axis is dropped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a ``.nii``/``.nii.gz`` file; unreadable or truncated; not 3-D;
            a non-finite voxel; a non-positive or non-finite voxel size. The message names
            the file and what was expected.
    """
    path = Path(path)
    if _nifti_suffix(path) is None:
        raise ValueError(f"{path}: expected a NIfTI CT volume (.nii or .nii.gz)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CT file (expected a .nii or .nii.gz volume)")
    try:
        img = nib.load(path)
        shape = img.shape
        zooms = img.header.get_zooms()
        affine = img.affine
    except (
        OSError,
        EOFError,
        zlib.error,
        gzip.BadGzipFile,
        ValueError,
        nib.filebasedimages.ImageFileError,
    ) as e:
        raise ValueError(
            f"{path}: cannot read NIfTI header ({e}); is the file a NIfTI image, or truncated?"
        ) from e
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
        shape = img.shape
    if len(shape) != 3:
        raise ValueError(
            f"{path}: expected a 3-D CT volume (X, Y, Z), got a {len(shape)}-D image of shape "
            f"{tuple(shape)}"
        )
    # nibabel silently turns a zero pixdim into 1 mm on load: check the header as stored.
    zooms = _stored_zooms(path, type(img.header), zooms)
    col_norms = np.linalg.norm(affine[:3, :3], axis=0)
    spacing_ok = all(np.isfinite(z) and z > 0 for z in zooms[:3])
    if not spacing_ok or not np.all(np.isfinite(affine)) or np.any(col_norms <= 0):
        raise ValueError(
            f"{path}: voxel size must be positive and finite, got "
            f"{tuple(float(z) for z in zooms[:3])} mm (header pixdim) and affine\n"
            + np.array2string(affine, precision=3)
        )
    try:
        img = nib.as_closest_canonical(img)
        hu = img.get_fdata(dtype=np.float32)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as e:
        raise ValueError(
            f"{path}: cannot read the voxel data ({type(e).__name__}: {e}); the file may be "
            "truncated or corrupt"
        ) from e
    bad = int(hu.size - np.count_nonzero(np.isfinite(hu)))
    if bad:
        raise ValueError(f"{path}: {bad} non-finite voxels (NaN or inf); expected finite HU")
    affine = np.asarray(img.affine, dtype=np.float64)
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
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA")
                mode = im.mode
            a = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the image ({e}); expected a PNG or TIFF") from e
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


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError as e:
        raise ImportError(
            f"{path}: reading DICOM needs pydicom: pip install pydicom (or pip install x2ct[dicom])"
        ) from e
    try:
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float64)
    except Exception as e:  # pydicom raises many types for bad files
        raise ValueError(f"{path}: cannot read the DICOM pixel data ({e})") from e
    bits = int(getattr(ds, "BitsStored", 16))
    a = a / float(2**bits - 1)
    if getattr(ds, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        a = 1.0 - a  # MONOCHROME1 shows bone dark: flip so that bone is bright
    return a.astype(np.float32)


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
    ``xray_scale``. RGB images become grey (luma); DICOM MONOCHROME1 is inverted; DICOM
    needs ``pydicom``. :func:`save_xray_png` writes this convention.

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
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{path}: cannot read the NumPy array ({e})") from e
        if not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"{path}: expected a numeric (H, W) array, got dtype {a.dtype}")
        a = a.astype(np.float32) / np.float32(xray_scale)
    elif suffix in (".dcm", ".dicom"):
        a = _read_dicom(path)
    else:
        a = _read_image(path)
    a = _squeeze_leading(np.asarray(a), 2, f"{path}: the X-ray")
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
