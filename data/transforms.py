"""CT preprocessing: the HU window and MONAI dictionary transforms.

Pipeline (:func:`preprocess`): load a NIfTI with :func:`x2ct.data.io.load_ct` (RAS+),
``Orientationd("RAS")``, antialiasing before downsampling, ``Spacingd`` to the model
spacing, a crop or pad to a fixed shape centred on the spine, and the HU window mapped to
[-1, 1] (DESIGN.md: HU clipped to [-1000, 2000], mapped linearly).

Dictionary keys: ``"image"`` holds the CT (1, X, Y, Z) and ``"label"`` the vertebra mask
(1, X, Y, Z) when there is one; file paths before loading.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, Orientationd, Spacingd
from scipy import ndimage

from x2ct.data.io import load_ct

__all__ = [
    "BONE_HU",
    "HU_WINDOW",
    "AntiAliasd",
    "CropPadToSpined",
    "HUToUnitd",
    "LoadCTd",
    "UnitToHUd",
    "hu_to_unit",
    "preprocess",
    "spine_centre",
    "unit_to_hu",
]

HU_WINDOW: tuple[float, float] = (-1000.0, 2000.0)
"""HU range that models see, mapped linearly to [-1, 1] (DESIGN.md)."""

BONE_HU = 250.0
"""Voxels above this HU count as bone when centring on the spine without a mask."""

AIR_HU = -1000.0


def _check_window(window: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(w) for w in window)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"window must be (low, high) HU with high > low, got {window!r}")
    return lo, hi


def hu_to_unit(hu, window: Sequence[float] = HU_WINDOW):
    """Clip HU to ``window`` and map it linearly to [-1, 1]; numpy arrays or tensors.

    ``x = (clip(hu, lo, hi) - c) / r`` with centre ``c = (lo + hi) / 2`` and half range
    ``r = (hi - lo) / 2``; integer input gives float32.
    """
    lo, hi = _check_window(window)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    if isinstance(hu, torch.Tensor):
        if not hu.is_floating_point():
            hu = hu.float()
        return (hu.clamp(lo, hi) - c) / r
    hu = np.asarray(hu)
    if hu.dtype.kind != "f":
        hu = hu.astype(np.float32)
    return ((np.clip(hu, lo, hi) - c) / r).astype(hu.dtype, copy=False)


def unit_to_hu(x, window: Sequence[float] = HU_WINDOW):
    """Inverse of :func:`hu_to_unit`: ``hu = x r + c``, exact (to rounding) inside the
    window. Not clipped: values outside [-1, 1] map outside the window."""
    lo, hi = _check_window(window)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            x = x.float()
        return x * r + c
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    return (x * r + c).astype(x.dtype, copy=False)


class _WindowMapd(MapTransform):
    """Apply ``self.fn(value, window)`` to each key: the HU window maps below."""

    fn = staticmethod(hu_to_unit)

    def __init__(
        self,
        keys: KeysCollection,
        window: Sequence[float] = HU_WINDOW,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.window = _check_window(window)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fn(d[key], self.window)
        return d


class HUToUnitd(_WindowMapd):
    """Dictionary :func:`hu_to_unit` (metadata of a MetaTensor is kept)."""

    fn = staticmethod(hu_to_unit)


class UnitToHUd(_WindowMapd):
    """Dictionary :func:`unit_to_hu`."""

    fn = staticmethod(unit_to_hu)


class LoadCTd(MapTransform):
    """Load NIfTI paths with :func:`x2ct.data.io.load_ct` into (1, X, Y, Z) float32
    MetaTensors in RAS+ with their affine (all of load_ct's checks apply)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key] is None:
                del d[key]
                continue
            ct = load_ct(d[key])
            meta = {"filename_or_obj": str(d[key]), "spacing": ct.spacing}
            d[key] = MetaTensor(
                torch.from_numpy(ct.hu)[None], affine=torch.from_numpy(ct.affine), meta=meta
            )
        return d


def _spacing_of(x) -> np.ndarray:
    if isinstance(x, MetaTensor):
        return np.linalg.norm(x.affine.numpy()[:3, :3], axis=0)
    return np.ones(3)


class AntiAliasd(MapTransform):
    """Gaussian smoothing before downsampling to ``spacing``, per axis sigma =
    (target / source - 1) / 2 voxels (scikit-image's ``rescale`` rule; nothing where the
    target is finer). Use on intensities only, never on labels."""

    def __init__(
        self, keys: KeysCollection, spacing: Sequence[float], allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.spacing = np.asarray(spacing, dtype=np.float64)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            sigma = np.maximum(self.spacing / _spacing_of(x) - 1.0, 0.0) / 2
            if not np.any(sigma > 0.1):
                continue
            arr = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
            out = np.stack([ndimage.gaussian_filter(c, sigma, mode="nearest") for c in arr])
            if isinstance(x, MetaTensor):
                d[key] = MetaTensor(torch.from_numpy(out), meta=x.meta)
            else:
                d[key] = torch.from_numpy(out) if isinstance(x, torch.Tensor) else out
        return d


def spine_centre(image, mask=None, bone_hu: float = BONE_HU) -> np.ndarray:
    """Voxel coordinates (3,) of the spine's centre in a (1, X, Y, Z) or (X, Y, Z) volume:
    the centroid of ``mask > 0`` when a mask with foreground is given, else of
    ``image > bone_hu`` (HU), else the volume's centre."""

    def centroid(m) -> np.ndarray | None:
        m = np.asarray(m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else m)
        m = m.reshape(m.shape[-3:]) if m.ndim == 4 else m
        idx = np.nonzero(m)
        return None if idx[0].size == 0 else np.array([i.mean() for i in idx])

    c = None
    if mask is not None:
        c = centroid(mask > 0)
    if c is None:
        c = centroid(image > bone_hu)
    if c is None:
        c = (np.array(image.shape[-3:]) - 1) / 2
    return c


class CropPadToSpined(MapTransform):
    """Crop or pad every key to ``spatial_size`` around the spine's centre
    (:func:`spine_centre`: the mask's centroid when ``mask_key`` holds one, else the
    centroid of bone, HU > ``bone_hu``, in ``image_key``), which lands on voxel
    ``centre_at`` (x, y, z) of the output (default: its middle, ``(size - 1) / 2``; a
    model's ``spine_position`` puts a new CT's spine where its training CTs had theirs).
    Images pad with ``pad_hu`` (air), labels (``mask_key``) with 0. MetaTensor affines
    follow the crop. Not invertible.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int],
        image_key: str = "image",
        mask_key: str | None = "label",
        bone_hu: float = BONE_HU,
        pad_hu: float = AIR_HU,
        centre_at: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.size = tuple(int(s) for s in spatial_size)
        if len(self.size) != 3 or min(self.size) < 1:
            raise ValueError(f"spatial_size must be three positive ints, got {spatial_size!r}")
        if centre_at is None:
            centre_at = [(s - 1) / 2 for s in self.size]
        self.centre_at = tuple(float(c) for c in centre_at)
        if len(self.centre_at) != 3 or not all(math.isfinite(c) for c in self.centre_at):
            raise ValueError(f"centre_at must be three voxel coordinates, got {centre_at!r}")
        self.image_key, self.mask_key = image_key, mask_key
        self.bone_hu, self.pad_hu = float(bone_hu), float(pad_hu)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        mask = d.get(self.mask_key) if self.mask_key is not None else None
        centre = spine_centre(d[self.image_key], mask, self.bone_hu)
        start = [int(round(c - at)) for c, at in zip(centre, self.centre_at)]
        for key in self.key_iterator(d):
            fill = 0.0 if key == self.mask_key else self.pad_hu
            d[key] = _crop_pad(d[key], start, self.size, fill)
        d["crop_start"] = np.asarray(start)
        return d


def _crop_pad(x, start: Sequence[int], size: Sequence[int], fill: float):
    """(C, X, Y, Z) -> (C, *size): voxel start[i] + k of the input lands at k; outside
    the input the value is ``fill``."""
    is_np = not isinstance(x, torch.Tensor)
    t = torch.as_tensor(x)
    out = torch.full((t.shape[0], *size), fill, dtype=t.dtype)
    src, dst = [slice(None)], [slice(None)]
    for s0, n, m in zip(start, t.shape[1:], size):
        a, b = max(s0, 0), min(s0 + m, n)
        if b <= a:
            return out.numpy() if is_np else _with_affine(out, x, start)
        src.append(slice(a, b))
        dst.append(slice(a - s0, b - s0))
    out[tuple(dst)] = torch.as_tensor(t[tuple(src)]).as_subclass(torch.Tensor)
    return out.numpy() if is_np else _with_affine(out, x, start)


def _with_affine(out: torch.Tensor, x, start):
    if not isinstance(x, MetaTensor):
        return out
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, 3] = torch.tensor(start, dtype=torch.float64)
    affine = x.affine.to(torch.float64) @ shift
    meta = {k: v for k, v in x.meta.items() if k != "affine"}
    return MetaTensor(out, affine=affine, meta=meta)


def preprocess(
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    shape: Sequence[int] = (64, 64, 64),
    window: Sequence[float] = HU_WINDOW,
    image_key: str = "image",
    label_key: str = "label",
    antialias: bool = True,
    normalise: bool = True,
    spine_position: Sequence[float] | None = None,
) -> Compose:
    """MONAI pipeline from ``{image_key: ct_path, label_key: mask_path or None}`` to
    ``image`` (1, *shape) float32 at ``spacing`` (mm), centred on the spine (its centre on
    voxel ``spine_position`` when given, ``CropPadToSpined``), in [-1, 1] (HU if
    ``normalise=False``), and ``label`` (1, *shape) (nearest-neighbour resampled, float;
    cast it to int) when a mask was given.
    """
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    keys = [image_key, label_key]
    steps = [
        LoadCTd(keys, allow_missing_keys=True),
        Orientationd(keys, axcodes="RAS", labels=None, allow_missing_keys=True),
    ]
    if antialias:
        steps.append(AntiAliasd(image_key, spacing))
    steps += [
        Spacingd(
            keys,
            pixdim=spacing,
            mode=("bilinear", "nearest"),
            padding_mode="border",
            dtype=np.float32,
            allow_missing_keys=True,
        ),
        CropPadToSpined(
            keys,
            shape,
            image_key=image_key,
            mask_key=label_key,
            centre_at=spine_position,
            allow_missing_keys=True,
        ),
    ]
    if normalise:
        steps.append(HUToUnitd(image_key, window))
    return Compose(steps)
