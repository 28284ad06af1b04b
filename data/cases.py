"""One case, made the same way for every user path: a field around the spine and its X-rays.

:func:`ct_case` is the one function that turns a patient CT into what a model is trained
and scored on: ``eval/reconstruct.py --ct``, ``eval/evaluate.py`` (CT folders and phantoms)
and the training datasets all call it, so a table in the README is what a user gets.

    CT (NIfTI or CTImage, HU, RAS)
      -> smoothed where finer than the model's voxels (antialias)
      -> the whole body on the model's voxel size (for the X-rays)
      -> the spine located (its label mask if given, else x2ct.data.localise)
      -> a Placement of the field: centred on the spine, or moved (shift, turn, tilt)
      -> target: the field resampled from the smoothed CT (one interpolation)
      -> X-rays: the whole body rendered along the acquisition's views, placed

:func:`phantom_case` draws a whole-body phantom (its torso at real size on a grid that
holds it) and passes it through :func:`ct_case` with its labels. Training draws random
placements (:class:`PlacementRange`) and acquisitions (``x2ct.projector.AcquisitionRange``)
per case; evaluation uses the located spine, the nominal views and, for the rows of
moved and turned patients, fixed offsets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from x2ct.data.io import CTImage, centred_affine, check_hounsfield, load_ct
from x2ct.data.scene import (
    Placement,
    antialias,
    body_truncation,
    field_affine,
    random_placement,
    render_drr,
    sample_field,
    views_in_body,
)
from x2ct.data.transforms import HU_WINDOW
from x2ct.projector import Geometry, hu_to_mu, project_views, stack_views, view_vectors

__all__ = [
    "Case",
    "CropRange",
    "PlacementRange",
    "SpinePoint",
    "TRUNCATION_WARN",
    "crop_around_spine",
    "ct_case",
    "locate",
    "phantom_body",
    "phantom_case",
    "truncation_message",
]

TRUNCATION_WARN = 0.05
"""Fraction of a CT's in-plane border inside the body above which its X-rays miss tissue
(``Case.info["truncation"]``; :func:`truncation_message` says so)."""


@dataclass(frozen=True)
class PlacementRange:
    """How far a training field is moved from the located spine: uniform shifts within
    +-``shift_mm`` per axis, turns within +-``turn_deg`` about the body axis, tilts within
    +-``tilt_deg`` about X and Y (x2ct.data.scene.random_placement)."""

    shift_mm: float = 20.0
    turn_deg: float = 10.0
    tilt_deg: float = 5.0

    def __post_init__(self) -> None:
        for name in ("shift_mm", "turn_deg", "tilt_deg"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"PlacementRange.{name} must be >= 0, got {v}")

    def draw(self, centre, generator: np.random.Generator) -> Placement:
        return random_placement(centre, generator, self.shift_mm, self.turn_deg, self.tilt_deg)

    def to_dict(self) -> dict:
        return {"shift_mm": self.shift_mm, "turn_deg": self.turn_deg, "tilt_deg": self.tilt_deg}


@dataclass(frozen=True)
class CropRange:
    """How often, and how tightly, a training CT is cut around its spine before its
    X-rays are rendered: a ``fraction`` of cases is cut to a square of width drawn
    log-uniformly in [``min_mm``, ``max_mm``] (left-right x front-back, the whole height
    kept; :func:`crop_around_spine`), so that its X-rays see the crop alone.

    Spine CT collections are cut this way (VerSe and CTSpine1K crops, reconstruction
    fields of 150-250 mm), and clinical CTs are cut at a 350-500 mm scan field, which
    truncates large patients at the skin. A model trained on whole bodies only meets
    X-rays without the body's background for the first time at test time; widths from just
    over the field's width (128 mm for the shipped models) to an adult torso's cover both.
    The default upper width, 360 mm, lies inside the adult torso widths the phantom draws
    (280-380 mm), so some cases are cut at the skin as well.

    The field is placed as in the uncut CT. Where a crop is narrower than the placed field
    (a 128 mm field shifted 20 mm and turned 10 degrees reaches about 94 mm from the spine),
    the part of the field outside the crop is air in the target as well, as it is in the
    cut CT; the X-rays show the crop's edge there."""

    fraction: float = 0.0
    min_mm: float = 136.0
    max_mm: float = 360.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fraction) and 0.0 <= self.fraction <= 1.0):
            raise ValueError(f"CropRange.fraction must be in [0, 1], got {self.fraction}")
        if not (math.isfinite(self.min_mm) and math.isfinite(self.max_mm)
                and 0 < self.min_mm <= self.max_mm):
            raise ValueError("CropRange needs 0 < min_mm <= max_mm, got "
                             f"{self.min_mm}, {self.max_mm}")

    def draw(self, generator: np.random.Generator) -> float | None:
        """A crop width in mm, or None (the case keeps the whole CT). Always two draws,
        so a case's crop does not depend on whether the one before was cut."""
        cut, u = generator.uniform(0.0, 1.0, 2)
        if cut >= self.fraction:
            return None
        return float(self.min_mm * (self.max_mm / self.min_mm) ** u)

    def to_dict(self) -> dict:
        return {"fraction": self.fraction, "min_mm": self.min_mm, "max_mm": self.max_mm}


@dataclass(frozen=True)
class SpinePoint:
    """Where a CT's spine is: ``centre`` (3,) mm in the volume's centred frame, how it was
    found ("mask" or "image") and how sure (``confidence`` in [0, 1])."""

    centre: tuple[float, float, float]
    method: str
    confidence: float = 1.0


@dataclass
class Case:
    """A field and its X-rays (everything a model trains or is scored on).

    Attributes:
        id: case id.
        hu: (X, Y, Z) float32 HU of the field (not clipped).
        labels: (X, Y, Z) int16 vertebra labels in the field, or None.
        drr: (V, H, W) float32 line integrals through the whole body.
        drr_field: (V, H, W) float32 line integrals of the field alone, its HU clipped to
            the model's window (what a reconstruction of the field can reproduce: the
            reference of projection losses and errors).
        views: (V, 15) float64 view vectors of the acquisition in the field frame.
        paths: (3, V, H, W) float32 areal densities (g/cm^2) of soft tissue, bone and metal
            through the whole body (``x2ct.projector.radiograph.material_paths``: what the
            radiograph simulator needs), when asked for; else None.
        body: (X, Y, Z) HU of the whole body on the field's voxel size, centred as the CT,
            with ``keep_body`` (to render other X-rays of the case); else None.
        spacing: the field's voxel size, mm.
        placement: where the field lies in the CT (its centred frame).
        affine: (4, 4) field voxel -> the CT file's world mm (save the reconstruction with it).
        info: how it was made (spine location, truncation, sizes), for reports.
    """

    id: str
    hu: torch.Tensor
    labels: torch.Tensor | None
    drr: torch.Tensor
    drr_field: torch.Tensor
    views: torch.Tensor
    spacing: tuple[float, float, float]
    placement: Placement
    affine: np.ndarray
    info: dict = field(default_factory=dict)
    paths: torch.Tensor | None = None
    body: np.ndarray | None = None  # the whole body on the field's voxel size (keep_body)


def locate(hu: np.ndarray, spacing: Sequence[float], mask: np.ndarray | None = None,
           z_mm: float | None = None) -> SpinePoint:
    """The spine's centre (mm, centred frame) of a CT (X, Y, Z) in HU, by
    ``x2ct.data.locate_spine``: at height ``z_mm`` or the middle of the column found, the
    centroid of the vertebrae's bone there (of the mask's vertebra labels when a mask is
    given)."""
    from x2ct.data.localise import locate_spine

    loc = locate_spine(np.asarray(hu), tuple(float(s) for s in spacing), mask, z_mm=z_mm)
    return SpinePoint(tuple(float(c) for c in loc.centre), loc.method, float(loc.confidence))


def _body_grid(hu: np.ndarray, spacing: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The (smoothed) CT resampled onto an axis-aligned grid of ``target`` voxels covering
    the same extent, centred alike (the X-ray volume)."""
    if np.allclose(spacing, target):
        return np.asarray(hu, dtype=np.float32)
    extent = np.asarray(hu.shape) * spacing
    shape = tuple(int(max(2, round(e / t))) for e, t in zip(extent, target))
    return sample_field(hu, tuple(spacing), Placement((0.0, 0.0, 0.0)), shape,
                        tuple(target)).numpy()


def ct_case(
    ct: CTImage | str | os.PathLike,
    shape: Sequence[int],
    spacing: Sequence[float],
    geometry: Geometry,
    *,
    mask: np.ndarray | str | os.PathLike | None = None,
    placement: Placement | None = None,
    shift_mm: Sequence[float] = (0.0, 0.0, 0.0),
    turn_deg: float = 0.0,
    tilt_deg: Sequence[float] = (0.0, 0.0),
    z_mm: float | None = None,
    acquisition: Sequence[Geometry] | None = None,
    views: torch.Tensor | None = None,
    case_id: str | None = None,
    spine: SpinePoint | None = None,
    window: Sequence[float] = HU_WINDOW,
    locate_by: str = "mask",
    materials: bool = False,
    keep_body: bool = False,
    crop_mm: float | None = None,
) -> Case:
    """The model's field of a CT and its X-rays through the whole CT.

    Args:
        ct: a CTImage (HU, RAS) or a NIfTI path (``load_ct``).
        shape, spacing: the field's voxels and their size in mm (the model's).
        geometry: the model's nominal views (its config's Geometry).
        mask: vertebra labels of the same grid (array or NIfTI path): locates the spine
            and is cut into the field as ``labels``.
        placement: the field's placement in the CT's centred frame; default: centred on
            the located spine, then moved by ``shift_mm`` (body frame), turned by
            ``turn_deg`` about the body axis and tilted by ``tilt_deg`` (about X, Y).
        z_mm: the height (mm, centred frame) to centre the field at; default the middle of
            the column found.
        acquisition: one single-view Geometry per view on the model's detector (other
            distances and angles, ``AcquisitionRange.sample``); default ``geometry``.
        views: (V, 15) view vectors in the field frame to render along instead (e.g. views
            moved by a pose, ``x2ct.projector.pose_views``).
        spine: the spine's location if already known (skips locating it).
        window: the model's HU window (for ``drr_field``).
        locate_by: "mask" (the default: a given mask locates the spine) or "image" (locate
            it in the image as for a CT without labels, and use the mask for ``labels``
            only: how evaluation follows a user's path).
        materials: also render the basis-material paths (``Case.paths``) for the
            radiograph simulator (three more projections).
        keep_body: keep the whole body volume in ``Case.body``.
        crop_mm: cut the CT to this width around the spine found in it, as a spine CT crop
            is cut (:func:`crop_around_spine`), before the field is placed: the field lies
            where it would in the whole CT (a ``placement`` is in the uncut CT's frame), the
            X-rays see the crop alone.
    """
    if locate_by not in ("mask", "image"):
        raise ValueError(f"locate_by must be 'mask' or 'image', got {locate_by!r}")
    source = None
    if not isinstance(ct, CTImage):
        source = str(ct)
        ct = load_ct(ct)
    if mask is not None and not isinstance(mask, np.ndarray):
        mask = np.asarray(load_ct(mask).hu).round().astype(np.int16)
    if mask is not None and mask.shape != ct.hu.shape:
        raise ValueError(
            f"the label mask has shape {mask.shape} but the CT {ct.hu.shape}"
            + (f" ({source})" if source else "")
        )
    check_hounsfield(ct.hu, source or case_id)
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    native = np.asarray(ct.spacing, dtype=np.float64)
    hu = None  # the CT smoothed once; the target, the X-rays and the locator sample it
    if spine is None:
        hu = antialias(ct.hu, native, spacing)
        spine = locate(hu, native, mask if locate_by == "mask" else None, z_mm)
    if crop_mm is not None:
        ct, mask, inside = crop_around_spine(ct, crop_mm, spine, mask)
        if placement is not None:  # given in the uncut CT's frame: into the crop's
            moved = np.subtract(spine.centre, inside.centre)
            placement = Placement(tuple(np.subtract(placement.centre, moved)),
                                  placement.rotation)
        spine, hu = inside, None  # the crop smoothed at its own edges, as a user's file is
    if hu is None:
        hu = antialias(ct.hu, native, spacing)
    if placement is None:
        placement = Placement(spine.centre).moved(shift_mm, turn_deg, *tilt_deg)
    target = sample_field(hu, tuple(native), placement, shape, spacing)
    labels = None
    if mask is not None:
        labels = sample_field(mask.astype(np.float32), tuple(native), placement, shape, spacing,
                              mode="nearest", fill=0.0).round().to(torch.int16)
    body = _body_grid(hu, native, np.asarray(spacing))
    if views is not None:
        if acquisition is not None:
            raise ValueError("give an acquisition or views, not both")
        views = torch.as_tensor(views, dtype=torch.float64)
    elif acquisition is None:
        views = view_vectors(geometry)
    else:
        views = stack_views(acquisition)
    drr = render_drr(body, spacing, placement, views, geometry.detector_shape, 0.5,
                     geometry.parallel).float()
    clipped = target.clamp(float(window[0]), float(window[1]))
    drr_field = project_views(hu_to_mu(clipped)[None, None], views.float(),
                              geometry.detector_shape, spacing, 0.5, geometry.parallel)[0]
    paths = None
    if materials:
        from x2ct.projector.radiograph import material_paths

        body_views = views_in_body(views, placement).float()
        paths = material_paths(torch.as_tensor(body)[None, None], body_views,
                               geometry.detector_shape, spacing, 0.5, "auto",
                               geometry.parallel)[0].float()
    truncation = body_truncation(ct.hu)
    info = {
        "source": source,
        "spine": {"centre_mm": list(spine.centre), "method": spine.method,
                  "confidence": spine.confidence},
        "placement": placement.to_dict(),
        "truncation": truncation,
        "ct_shape": list(ct.hu.shape),
        "ct_spacing": [float(s) for s in native],
    }
    affine = field_affine(ct.affine, ct.hu.shape, native, placement, shape, spacing)
    return Case(
        case_id or (source or "ct"), target, labels, drr, drr_field.float(), views.double(),
        spacing, placement, affine, info, paths, body if keep_body else None,
    )


def truncation_message(case: Case) -> str | None:
    """A sentence for the user when the CT did not hold the whole body, else None."""
    t = case.info.get("truncation", 0.0)
    if t <= TRUNCATION_WARN:
        return None
    return (
        f"{case.info.get('source') or 'the CT'}: {100 * t:.0f}% of its in-plane border lies "
        "in the body (cut at the skin, or a small reconstruction field): its X-rays are "
        "rendered through what it holds and miss the tissue outside it, so they are fainter "
        "than a radiograph of the patient"
    )


def crop_around_spine(
    ct: CTImage, width_mm: float, spine: SpinePoint, mask: np.ndarray | None = None
) -> tuple[CTImage, np.ndarray | None, SpinePoint]:
    """``ct`` cut to ``width_mm`` x ``width_mm`` (left-right x front-back) around ``spine``
    (as :func:`locate` finds it), its whole height kept: a CT reconstructed on a small field around
    the spine, as spine CT crops are (VerSe, CTSpine1K).

    Returns the crop (its affine places it where it lay in ``ct``), ``mask`` cut alike, and
    the spine in the crop's centred frame: ``ct_case(crop, ..., spine=...)`` then places the
    field where it lay in ``ct``, so that only the X-rays change (they see the crop alone).
    """
    if not (math.isfinite(width_mm) and width_mm > 0):
        raise ValueError(f"width_mm must be positive, got {width_mm!r}")
    shape = np.asarray(ct.hu.shape)
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"the label mask has shape {tuple(mask.shape)} but the CT "
                         f"{tuple(shape)}")
    spacing = np.asarray(ct.spacing, dtype=np.float64)
    centre = np.asarray(spine.centre) / spacing + (shape - 1) / 2  # voxels
    start, stop = np.zeros(3, int), shape.copy()
    for a in (0, 1):
        n = min(int(shape[a]), max(1, int(round(width_mm / spacing[a]))))
        start[a] = int(np.clip(round(centre[a] - (n - 1) / 2), 0, shape[a] - n))
        stop[a] = start[a] + n
    box = tuple(slice(int(b), int(e)) for b, e in zip(start, stop))
    affine = ct.affine.copy()
    affine[:3, 3] = ct.affine[:3, :3] @ start + ct.affine[:3, 3]
    hu = np.ascontiguousarray(ct.hu[box])
    # the centred frames differ by the crop's centre, in the CT's voxel axes
    moved = (start + (stop - start - 1) / 2 - (shape - 1) / 2) * spacing
    inside = SpinePoint(tuple(float(c) for c in np.asarray(spine.centre) - moved),
                        spine.method, spine.confidence)
    return CTImage(hu, ct.spacing, affine), None if mask is None else mask[box], inside


def phantom_body(
    seed: int,
    region: str,
    spacing: Sequence[float],
    field_shape: Sequence[int],
    options=None,
) -> tuple[CTImage, np.ndarray]:
    """A whole-body phantom (CTImage with a centred affine, and its labels) on a grid that
    holds its torso at real size with a 10 mm margin (``x2ct.data.phantom.body_bounds``)
    and reaches 50 mm above and below the field's height, for the cone beam."""
    from x2ct.data.phantom import body_bounds, spine_phantom

    spacing = tuple(float(s) for s in spacing)
    height = field_shape[2] * spacing[2] + 100.0
    (x0, x1), (y0, y1), _ = body_bounds(seed, region, options, (-height / 2, height / 2))
    size = (x1 - x0 + 20.0, y1 - y0 + 20.0, height)
    shape = tuple(int(math.ceil(n / s)) for n, s in zip(size, spacing))
    offset = (-(x0 + x1) / 2, -(y0 + y1) / 2, 0.0)  # the anatomy origin on the grid
    kwargs = {} if options is None else {"options": options}
    ph = spine_phantom(shape, spacing, seed=seed, region=region, offset_mm=offset, **kwargs)
    return CTImage(ph.hu, spacing, centred_affine(shape, spacing)), ph.labels


def phantom_case(
    seed: int,
    region: str,
    shape: Sequence[int],
    spacing: Sequence[float],
    geometry: Geometry,
    *,
    options=None,
    locate_by: str = "mask",
    **kwargs,
) -> Case:
    """:func:`ct_case` of a whole-body phantom (:func:`phantom_body`) with its labels;
    ``locate_by="image"`` locates the spine in the image as for a patient's CT."""
    from x2ct.data.phantom import phantom_id

    body, labels = phantom_body(seed, region, spacing, shape, options)
    return ct_case(body, shape, spacing, geometry, mask=labels, locate_by=locate_by,
                   case_id=phantom_id(seed), **kwargs)
