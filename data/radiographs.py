"""Radiographs onto a model's detector: resampling by the declared geometry, and input checks.

A model's detector is a grid of ``H x W`` pixels that each cover a fixed patch of the
isocentre plane (its config's Geometry). A radiograph has any pixel count and spacing, a
source-to-detector distance ``sdd`` (DICOM DistanceSourceToDetector), a source-to-
isocentre distance ``sad`` (DistanceSourceToPatient) and perhaps a detector offset (the
isocentre's shadow away from the image centre). :func:`resample_radiograph` maps it onto
the model's grid *by millimetres*: the model pixel at (a, b) lies ``((b - (W-1)/2) du',
(a - (H-1)/2) dv')`` from the principal point on the radiograph's detector, with
``du' = du_iso * sdd / sad`` (``x2ct.projector.on_model_detector``), which is then looked
up in the image (Gaussian smoothing first, as the model's pixels are larger: the
anti-aliasing rule of scikit-image's ``rescale``; bilinear; edge values outside). The
image is cropped or padded, never squeezed; the returned single-view Geometry keeps the
radiograph's own distances, so the model back-projects along its true rays.

:func:`check_views` runs the checks that can be made before any compute: blank or
constant images, and swapped views (an AP and a lateral image exchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from x2ct.projector import DRR_SCALE, Geometry, on_model_detector

__all__ = ["ResampledView", "check_views", "resample_radiograph"]


@dataclass
class ResampledView:
    """A radiograph on the model's detector.

    Attributes:
        image: (H, W) float32 on the model's pixels.
        geometry: the single view on the model's detector with the radiograph's distances
            and angle (no offset: the principal point is the image centre).
        coverage: fraction of the model's pixels that fall inside the radiograph (the
            rest hold the nearest edge value).
    """

    image: np.ndarray
    geometry: Geometry
    coverage: float


def resample_radiograph(
    image: np.ndarray, geometry: Geometry, nominal: Geometry, antialias: bool = True
) -> ResampledView:
    """``image`` (rows, columns), taken with the single-view ``geometry`` (its
    ``detector_shape`` the image's, ``pixel_spacing`` at the detector, ``sad``, ``sdd``,
    ``angles`` (one), ``detector_offset``), resampled onto the detector of ``nominal`` (the
    model's Geometry)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"a radiograph must be a 2-D image, got shape {image.shape}")
    if geometry.num_views != 1:
        raise ValueError(f"one view per radiograph, got angles {geometry.angles}")
    if tuple(geometry.detector_shape) != image.shape:
        raise ValueError(
            f"the geometry's detector is {geometry.detector_shape} pixels but the image is "
            f"{image.shape}"
        )
    if geometry.parallel:
        raise ValueError("radiographs are cone-beam images: parallel=True is not supported")
    target = on_model_detector(nominal, geometry.angles[0], geometry.sad, geometry.sdd)
    (h, w), (dv_t, du_t) = target.detector_shape, target.pixel_spacing
    (rows, cols), (dv, du) = image.shape, geometry.pixel_spacing
    o_v, o_u = geometry.detector_offset
    # model pixel centres in the radiograph's pixel coordinates
    a = np.arange(h, dtype=np.float64)
    b = np.arange(w, dtype=np.float64)
    i = (rows - 1) / 2 - o_v / dv + (a - (h - 1) / 2) * dv_t / dv
    j = (cols - 1) / 2 - o_u / du + (b - (w - 1) / 2) * du_t / du
    ii, jj = np.meshgrid(i, j, indexing="ij")
    src = image
    if antialias:
        sigma = np.maximum(np.array([dv_t / dv, du_t / du]) - 1.0, 0.0) / 2
        if np.any(sigma > 0.1):
            src = ndimage.gaussian_filter(image, sigma, mode="nearest")
    out = ndimage.map_coordinates(src, [ii, jj], order=1, mode="nearest")
    inside = (ii >= -0.5) & (ii <= rows - 0.5) & (jj >= -0.5) & (jj <= cols - 0.5)
    return ResampledView(out.astype(np.float32), target, float(inside.mean()))


def check_views(images: Sequence[np.ndarray], names: Sequence[str], angles: Sequence[float],
                min_contrast: float = 1e-3) -> list[str]:
    """Checks of radiographs (on the model's detector, bone bright) that need no model.

    Raises ValueError naming the file for a blank or constant image (its spread, the 1st
    to 99th percentile, below ``min_contrast`` of its range: nothing to reconstruct from).
    Returns warnings (strings) for what is likely but not certain: views that look
    swapped. The body is left-right symmetric, so an AP view is nearly mirror-symmetric
    about a vertical axis through the spine, while a lateral view (front and back differ)
    is not; the check compares each image's best mirror correlation (:func:`_symmetry`)
    and warns when the image given as lateral is clearly (by 0.15) the more symmetric.
    On x2ct's lumbar phantoms AP views score 0.65-0.8 and laterals 0.3-0.4; thoracic views
    (ribs, heart) are closer, so a swap there can go unnoticed.
    """
    warnings_out: list[str] = []
    for img, name in zip(images, names):
        x = np.asarray(img, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name}: the image has non-finite values")
        lo, hi = np.percentile(x, [1, 99])
        span = float(x.max() - x.min())
        if span == 0 or (hi - lo) < min_contrast * max(span, 1e-12):
            raise ValueError(
                f"{name}: the image is blank or constant (values {x.min():.4g} to "
                f"{x.max():.4g}); nothing to reconstruct from"
            )
    ap = [k for k, a in enumerate(angles) if abs(((a + 180) % 360) - 180) < 45]
    lat = [k for k, a in enumerate(angles) if 45 <= abs(((a + 180) % 360) - 180) <= 135]
    if len(ap) == 1 and len(lat) == 1:
        s_ap, s_lat = (_symmetry(images[k]) for k in (ap[0], lat[0]))
        if s_lat > s_ap + 0.15:
            warnings_out.append(
                f"{names[lat[0]]} (given as the lateral view) is more left-right symmetric "
                f"than {names[ap[0]]} (given as AP): symmetry {s_lat:.2f} vs {s_ap:.2f}; "
                "the views may be swapped"
            )
    return warnings_out


def _symmetry(image: np.ndarray) -> float:
    """How left-right mirror-symmetric an image is about its best vertical axis (within
    the middle half of the image), after removing its smooth background (a Gaussian of 6
    pixels): the largest correlation of the image with its mirror image, in [-1, 1]."""
    img = np.asarray(image, dtype=np.float64)
    img = img - ndimage.gaussian_filter(img, 6.0, mode="nearest")
    n = img.shape[1]
    k = np.arange(n)
    best = -1.0
    for twice_c in range(n // 2, 3 * n // 2):  # axis at twice_c / 2 (half pixels)
        m = twice_c - k  # mirror index of column k
        ok = (m >= 0) & (m < n)
        if ok.sum() < n // 2:
            continue
        a, b = img[:, k[ok]], img[:, m[ok]]
        a, b = a - a.mean(), b - b.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        if denom > 0:
            best = max(best, float((a * b).sum() / denom))
    return best


# --- files to model inputs ----------------------------------------------------------------


@dataclass
class RadiographInput:
    """Radiograph files made into a model's input.

    Attributes:
        xrays: (1, V, H, W) float32 on the model's detector, in the model's view order.
        geometries: one single-view Geometry per view on the model's detector (the
            radiograph's distances and angle, mirrored as below).
        intensity: "display" (an unknown monotone curve: radiographs), "line_integral" or
            "normalised_drr" (x2ct's own renders; both are line integrals / the model's
            scale once divided) : what ``Reconstructor(intensity=...)`` needs.
        mirror: (x, y): the views were mirrored left-right (a view from the patient's right,
            LL) or front-back (a PA view) into the model's AP and lateral; the
            reconstruction must be flipped back along X and/or Y (:func:`unmirror`).
        coverage: per view, the fraction of the model's detector the image covers.
        warnings: what the checks found (:func:`check_views`) and what was assumed.
        sources: per view, where each geometric value came from.
    """

    xrays: np.ndarray
    geometries: list[Geometry]
    intensity: str
    mirror: tuple[bool, bool]
    coverage: list[float]
    warnings: list[str]
    sources: list[dict]


def _turn(angle: float, reference: float) -> float:
    """Signed smallest angle from ``reference`` to ``angle`` in degrees."""
    return (angle - reference + 180.0) % 360.0 - 180.0


def mirror_geometry(g: Geometry, mirror_x: bool, mirror_y: bool) -> Geometry:
    """A single view seen in the patient mirrored along X (left-right) and/or Y (front-back):
    angle t -> -t and/or 180 - t, and the image's columns flipped (the detector offset
    along the columns changes sign with each mirror)."""
    import dataclasses

    angle, (o_v, o_u) = g.angles[0], g.detector_offset
    flips = 0
    if mirror_y:
        angle, flips = 180.0 - angle, flips + 1
    if mirror_x:
        angle, flips = -angle, flips + 1
    if flips % 2:
        o_u = -o_u
    return dataclasses.replace(g, angles=(angle % 360.0,), detector_offset=(o_v, o_u))


def unmirror(volume, mirror: tuple[bool, bool]):
    """Flip a reconstruction (..., X, Y, Z) back along X and/or Y (numpy or torch)."""
    dims = [d for d, m in zip((-3, -2), mirror) if m]
    if not dims:
        return volume
    if isinstance(volume, np.ndarray):
        return np.flip(volume, axis=dims).copy()
    return volume.flip(dims)


def prepare_radiographs(
    files: Sequence,
    nominal: Geometry,
    *,
    geometry_json=None,
    pixel_spacing: tuple[float, float] | None = None,
    sid_mm: float | None = None,
    sod_mm: float | None = None,
    xray_scale: float = DRR_SCALE,
) -> RadiographInput:
    """Read radiograph files (``x2ct.data.xray_files.read_radiograph``: PNG, TIFF, DICOM,
    .npy, with a geometry.json sidecar, DICOM tags or the flags given here), one per view
    of ``nominal`` in its order (AP, lateral), and put them on the model's detector.

    A PA view (gantry angle about 180) or a lateral taken from the patient's right (about
    270) is mirrored into the model's AP (0) or lateral (90) with all views (the
    ``mirror`` field says how to flip the reconstruction back); each image is then
    resampled by millimetres (:func:`resample_radiograph`) and checked (:func:`check_views`:
    blank images refused, swapped views flagged). Geometry that the files and flags do not
    give is taken from the reader's defaults with a warning. Line integrals (.npy) and
    x2ct's own 16-bit DRR PNGs come back as ``line_integral / xray_scale`` (the model's
    X-ray units); radiographs as their stored values ("display")."""
    from x2ct.data.xray_files import read_radiograph

    if len(files) != nominal.num_views:
        raise ValueError(f"the model takes {nominal.num_views} views, got {len(files)} files")
    read = []
    notes: list[str] = []
    for path in files:
        r = read_radiograph(path, geometry_json=geometry_json, pixel_spacing=pixel_spacing,
                            sid_mm=sid_mm, sod_mm=sod_mm)
        g = r.geometry
        if g is None or g.angles[0] is None:
            raise ValueError(f"{path}: no geometry for this image")
        read.append((str(path), r, g))
        assumed = [k for k, v in r.source.items() if v == "default"]
        if assumed:
            notes.append(f"{path}: assumed {', '.join(sorted(assumed))} (not in the file, a "
                         "geometry.json or the flags)")
    kinds = {r.intensity for _, r, _ in read}
    if len(kinds) > 1:
        raise ValueError(f"the views mix intensities {sorted(kinds)}: give both as radiographs "
                         "or both as x2ct renders")
    # which mirrors map the views onto the model's (AP 0, lateral 90)
    ap = [k for k, a in enumerate(nominal.angles) if abs(_turn(a, 0.0)) < 45]
    lat = [k for k, a in enumerate(nominal.angles) if abs(abs(_turn(a, 0.0)) - 90) < 45]
    mirror_y = bool(ap) and abs(_turn(read[ap[0]][2].angles[0], 180.0)) < 45
    mirror_x = bool(lat) and abs(_turn(read[lat[0]][2].angles[0], 270.0)) < 45
    images, geometries, coverage, sources = [], [], [], []
    for (path, r, g), angle in zip(read, nominal.angles):
        pixels = np.asarray(r.pixels, dtype=np.float64)
        if r.intensity == "line_integral":
            pixels = pixels / xray_scale
        elif r.intensity == "normalised_drr":  # value / 65535 = drr / DRR_SCALE
            pixels = pixels / float(2 ** (r.bits or 16) - 1) * DRR_SCALE / xray_scale
        if mirror_x or mirror_y:
            g = mirror_geometry(g, mirror_x, mirror_y)
            if mirror_x != mirror_y:  # an odd number of mirrors flips the columns
                pixels = pixels[:, ::-1]
        if abs(_turn(g.angles[0], angle)) > 45:
            raise ValueError(
                f"{path}: a view at {g.angles[0]:g} degrees where the model expects one near "
                f"{angle:g} (AP 0 / PA 180, lateral 90 / 270): check the order of the files "
                "and their ViewPosition"
            )
        view = resample_radiograph(pixels, g, nominal)
        images.append(view.image)
        geometries.append(view.geometry)
        coverage.append(view.coverage)
        sources.append(dict(r.source))
        if view.coverage < 0.9:
            notes.append(f"{path}: the image covers {100 * view.coverage:.0f}% of the model's "
                         "field; the rest is filled with its edge values")
    notes += check_views(images, [p for p, _, _ in read], [g.angles[0] for g in geometries])
    intensity = kinds.pop()
    return RadiographInput(
        np.stack(images)[None].astype(np.float32), geometries,
        "display" if intensity == "display" else "line_integral",
        (mirror_x, mirror_y), coverage, notes, sources,
    )
