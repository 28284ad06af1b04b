"""Find the vertebral column in a CT: where to put the model's field.

:func:`locate_spine` returns a :class:`SpineLocation`: the column's centre line and the
point at which the field is centred, the centroid of the vertebrae's bone (body plus
posterior arch, the definition the phantoms and training use) in a slab around a height.

With a vertebra label mask (VerSe, CTSpine1K) the point is the mask's centroid. Without
one the column is found in the image, on a block-averaged copy (about 2 mm in-plane,
2.5 mm along z, built in chunks so that memory stays bounded):

1. The body: air below -500 HU is outside; the largest 3-D component after an opening
   (the table, its pad and anything outside the patient drop out).
2. Canal candidates, per slice: the bone of a +-8 mm slab (its maximum along z closes the
   ring over the disc spaces) is hole-filled; a hole is the vertebral canal's candidate
   when its size is a canal's, its content is soft tissue (CSF, cord, epidural fat) and a
   large bone mass sits in front of it (the vertebral body) and bone behind it (the
   arch). Marrow cavities of long bones, calcified vessel rings, contrast-coated bowel,
   kidneys and the spaces between ribs fail one of these or sit away from the body's
   midline and back.
3. The canal line: a dynamic programme over slices picks the best-scoring chain of
   candidates whose position changes little from slice to slice, skipping slices
   (up to 40 mm) where no ring closes.
4. The vertebrae's bone, per slice along the line: bone (> 150 HU) in a box around the
   canal, connected to the canal's ring, after removing blobs without a mirror image
   about the canal's sagittal line (a contrast-filled aorta lying against the body) and
   blobs that an opening separates from the vertebral body (ribs, organs), with the holes
   it encloses other than the canal (the body's low-density cancellous core) filled in;
   metal voxels (and 2 mm around them) are then left out. Where that bone reaches the
   box's front edge (something pressed against the body's whole front: a
   contrast-filled heart chamber before a thoracic vertebra), it is cut at the
   furthest body front of the clean slices within 20 mm.
5. The point: the centroid of that bone in the slab ``z +- SLAB_HALF_MM``.

Metal (> 2000 HU in any native voxel: pedicle screws, rods, prostheses, pacemakers)
closes rings and shapes the vertebra but never counts as bone. Confidence (see
:class:`SpineLocation`) below :data:`CONFIDENCE_WARN` means the result deserves a look.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from x2ct.data.phantom import DISC_LABEL

__all__ = ["CONFIDENCE_WARN", "SLAB_HALF_MM", "SpineLocation", "locate_spine"]

CONFIDENCE_WARN = 0.5
"""Below this :attr:`SpineLocation.confidence` the caller should warn and show the CT."""

SLAB_HALF_MM = 15.0
"""Half thickness (mm) of the slab whose bone centroid is the point (about one vertebra
and disc: the point does not jump between body and disc levels)."""


_WORK_XY_MM = 2.0  # target in-plane spacing of the working copy
_WORK_Z_MM = 2.5  # target slice spacing of the working copy
_AIR_HU = -500.0  # below: outside the body
_RING_HU = 250.0  # bone that closes the canal's ring
_BONE_HU = 150.0  # bone counted in the vertebra (cancellous included)
_METAL_HU = 2000.0  # metal: closes rings, never counted as bone
_RING_SLAB_MM = 8.0  # half thickness of the slab whose bone max closes rings
_CANAL_AREA_MM2 = (50.0, 800.0)  # canal cross-section (adult canals ~150-350 mm^2)
_CANAL_HU = (-60.0, 110.0)  # canal content: CSF, cord, epidural fat, partial volume
_MAX_GAP_MM = 40.0  # slices without a ring the line may cross
_MIN_LENGTH_MM = 30.0  # a column shorter than this is not trusted at all
_ROI_X_MM = 45.0  # half width of the box around the canal holding the vertebra
_ROI_Y_MM = (-50.0, 65.0)  # posterior and anterior reach of that box from the canal


@dataclass(frozen=True)
class SpineLocation:
    """Where the vertebral column is.

    Attributes:
        centre: (3,) mm, the point to put at the field's centre, in the volume's centred
            RAS frame (DESIGN.md: voxel (a, b, c) at ((a - (X-1)/2) sx, ...)).
        centre_voxel: (3,) the same point in voxel coordinates (a, b, c).
        line: (K, 3) mm, the column's centre line (the slab bone centroid), one point per
            slice where the column was found (slices of the working grid for
            ``method="image"``, of the volume for ``"mask"``), z ascending.
        z_range: (low, high) mm, the lowest and highest z where the column was found.
        method: ``"mask"`` (a vertebra label mask gave it) or ``"image"``.
        confidence: in [0, 1]. ``"mask"``: 1. ``"image"``: the product of coverage (the
            fraction of slices in ``z_range`` where a canal ring was found on the line),
            length (``min(1, found length / 80 mm)``) and uniqueness (``1 - S2 / S1``,
            S1 the line's score, S2 the best chain of canal candidates at least 40 mm
            away from it). Below :data:`CONFIDENCE_WARN`, warn.
    """

    centre: np.ndarray
    centre_voxel: np.ndarray
    line: np.ndarray
    z_range: tuple[float, float]
    method: str
    confidence: float


def locate_spine(
    hu: np.ndarray,
    spacing: Sequence[float],
    mask: np.ndarray | None = None,
    *,
    z_mm: float | None = None,
) -> SpineLocation:
    """Find the vertebral column and the point at which to centre the field.

    Args:
        hu: (X, Y, Z) Hounsfield units in RAS+ voxel order (as ``x2ct.data.load_ct``
            gives), any size and dtype.
        spacing: voxel size (sx, sy, sz) in mm, anisotropic allowed.
        mask: optional (X, Y, Z) vertebra labels (> 0 is vertebra; the phantom's disc
            label 100 is not bone and is left out). When given it decides alone.
        z_mm: height (mm, centred frame) of the point; default the middle of the
            column's found z-range.

    Returns:
        :class:`SpineLocation`.

    Raises:
        ValueError: bad input, an empty mask, no column found (no bone, no canal ring
            over at least 30 mm: a head, an extremity, a phantom without bone), or a
            ``z_mm`` outside the found column.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or min(hu.shape) < 1:
        raise ValueError(f"hu must be a (X, Y, Z) volume, got shape {hu.shape}")
    if hu.dtype.kind not in "fiu":
        raise ValueError(f"hu must hold numbers (HU), got dtype {hu.dtype}")
    spacing = np.asarray([float(s) for s in spacing], dtype=np.float64)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing}")
    if z_mm is not None and not math.isfinite(float(z_mm)):
        raise ValueError(f"z_mm must be a finite height in mm, got {z_mm!r}")
    shape = np.array(hu.shape)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != hu.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected the CT's {hu.shape}")
        zs, line, area = _mask_slices(mask, spacing)
        method, confidence = "mask", 1.0
    else:
        grid = _Grid.build(hu, spacing)
        zs, line, area, confidence = _image_slices(grid)
        method = "image"

    z_range = (float(zs.min()), float(zs.max()))
    z0 = 0.5 * (z_range[0] + z_range[1]) if z_mm is None else float(z_mm)
    if not z_range[0] - SLAB_HALF_MM <= z0 <= z_range[1] + SLAB_HALF_MM:
        raise ValueError(
            f"z_mm={z0:.1f} is outside the column found between z = {z_range[0]:.1f} "
            f"and {z_range[1]:.1f} mm"
        )
    smooth = np.stack([_slab_centroid(zs, line, area, z) for z in zs])
    smooth = np.concatenate([smooth, zs[:, None]], axis=1)
    centre = np.append(_slab_centroid(zs, line, area, z0), z0)
    centre_voxel = centre / spacing + (shape - 1) / 2
    return SpineLocation(
        centre=centre,
        centre_voxel=centre_voxel,
        line=smooth,
        z_range=z_range,
        method=method,
        confidence=float(np.clip(confidence, 0.0, 1.0)),
    )


def _slab_centroid(zs, xy, area, z0) -> np.ndarray:
    """Area-weighted mean of the per-slice centroids ``xy`` (K, 2) within
    ``z0 +- SLAB_HALF_MM`` (the nearest slice when none is that close)."""
    w = np.where(np.abs(zs - z0) <= SLAB_HALF_MM, area, 0.0)
    if w.sum() <= 0:
        return xy[np.argmin(np.abs(zs - z0))]
    return (xy * w[:, None]).sum(0) / w.sum()


# --- with a mask ----------------------------------------------------------------------------


def _mask_slices(mask: np.ndarray, spacing: np.ndarray):
    """Per slice with vertebra labels: z (mm), in-plane centroid (mm) and area (mm^2)."""
    nx, ny, nz = mask.shape
    xs = (np.arange(nx) - (nx - 1) / 2) * spacing[0]
    ys = (np.arange(ny) - (ny - 1) / 2) * spacing[1]
    count = np.zeros(nz)
    sx = np.zeros(nz)
    sy = np.zeros(nz)
    for k0 in range(0, nz, 32):  # chunks: bounded memory on large masks
        m = mask[:, :, k0 : k0 + 32]
        v = ((m > 0) & (m != DISC_LABEL)).astype(np.float64)
        count[k0 : k0 + 32] = v.sum((0, 1))
        sx[k0 : k0 + 32] = np.einsum("xyz,x->z", v, xs)
        sy[k0 : k0 + 32] = np.einsum("xyz,y->z", v, ys)
    found = count > 0
    if not found.any():
        raise ValueError("the vertebra mask is empty (no label > 0 other than discs)")
    zs = (np.arange(nz) - (nz - 1) / 2) * spacing[2]
    line = np.stack([sx[found], sy[found]], axis=1) / count[found][:, None]
    return zs[found], line, count[found] * spacing[0] * spacing[1]


# --- the working grid -----------------------------------------------------------------------


@dataclass
class _Grid:
    """Block-averaged copy of the CT. ``mean`` and ``peak`` (block maximum) are (X', Y',
    Z') float32; ``spacing`` is the block size in mm and ``origin`` the centred-frame
    position (mm) of block (0, 0, 0)."""

    mean: np.ndarray
    peak: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray

    @classmethod
    def build(cls, hu: np.ndarray, spacing: np.ndarray) -> _Grid:
        f = np.maximum(np.rint(np.array([_WORK_XY_MM, _WORK_XY_MM, _WORK_Z_MM]) / spacing), 1)
        f = f.astype(int)
        n = np.array(hu.shape) // f
        if np.any(n < 1):
            raise ValueError(f"the CT ({hu.shape} voxels) is too small to hold a column")
        mean = np.empty(tuple(n), np.float32)
        peak = np.empty(tuple(n), np.float32)
        fx, fy, fz = f
        step = max(1, 64 // fz)  # output slices per chunk
        for k0 in range(0, n[2], step):
            k1 = min(k0 + step, n[2])
            block = np.asarray(
                hu[: n[0] * fx, : n[1] * fy, k0 * fz : k1 * fz], dtype=np.float32
            ).reshape(n[0], fx, n[1], fy, k1 - k0, fz)
            mean[:, :, k0:k1] = block.mean(axis=(1, 3, 5))
            peak[:, :, k0:k1] = block.max(axis=(1, 3, 5))
        work = f * spacing
        origin = ((f - 1) / 2 - (np.array(hu.shape) - 1) / 2) * spacing
        return cls(mean, peak, work, origin)

    def xy_mm(self):
        nx, ny, _ = self.mean.shape
        xs = self.origin[0] + np.arange(nx) * self.spacing[0]
        ys = self.origin[1] + np.arange(ny) * self.spacing[1]
        return xs, ys

    def z_mm(self) -> np.ndarray:
        return self.origin[2] + np.arange(self.mean.shape[2]) * self.spacing[2]


_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[:, :, 1] = ndimage.generate_binary_structure(2, 1)  # 4-connected, one slice


def _disk(radius_mm: float, spacing) -> np.ndarray:
    rx = max(int(round(radius_mm / spacing[0])), 1)
    ry = max(int(round(radius_mm / spacing[1])), 1)
    gx, gy = np.mgrid[-rx : rx + 1, -ry : ry + 1]
    return (gx / rx) ** 2 + (gy / ry) ** 2 <= 1.0 + 1e-6


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """``binary_fill_holes`` of every axial slice of a 3-D mask in one labelling: the
    background's in-plane components that touch no x or y border are holes."""
    lab, _ = ndimage.label(~mask, structure=_IN_PLANE)
    outside = np.unique(
        np.concatenate([lab[0].ravel(), lab[-1].ravel(), lab[:, 0].ravel(), lab[:, -1].ravel()])
    )
    return mask | ~np.isin(lab, outside)


def _body_mask(grid: _Grid) -> np.ndarray:
    """The patient: the largest 3-D component above -500 HU after an in-plane opening
    (cuts the table and pads off), holes (lungs, bowel gas) filled per slice."""
    inside = grid.mean > _AIR_HU
    st = _disk(4.0, grid.spacing)[:, :, None]
    inside = ndimage.binary_opening(inside, structure=st)
    lab, n = ndimage.label(inside)
    if n == 0:
        raise ValueError("no body in the CT (nothing above -500 HU)")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == np.argmax(sizes)
    body = ndimage.binary_dilation(body, structure=st)  # give the opening's edge back
    return _fill_holes_2d(body)


# --- canal candidates and the canal line ------------------------------------------------------


@dataclass
class _Candidate:
    k: int  # working slice
    x: float  # mm
    y: float  # mm
    score: float  # in (0, 1]
    radius: float  # equivalent radius of the hole, mm


def _soft_range(v: float, lo: float, hi: float, soft: float) -> float:
    """1 inside [lo, hi], falling linearly to 0 at ``soft`` outside."""
    if v < lo:
        return max(0.0, 1.0 - (lo - v) / soft)
    if v > hi:
        return max(0.0, 1.0 - (v - hi) / soft)
    return 1.0


def _candidates(grid: _Grid, body: np.ndarray) -> list[list[_Candidate]]:
    """Canal candidates of every working slice: holes in the slab's bone, scored."""
    sx, sy, sz = grid.spacing
    xs, ys = grid.xy_mm()
    nx, ny, nz = grid.mean.shape
    ring = grid.mean > _RING_HU
    ring &= ndimage.binary_dilation(body, structure=_disk(6.0, grid.spacing)[:, :, None])
    half = max(int(round(_RING_SLAB_MM / sz)), 0)
    if half:
        ring = ndimage.maximum_filter1d(ring, 2 * half + 1, axis=2)
    holes = _fill_holes_2d(ring) & ~ring
    lab, n = ndimage.label(holes, structure=_IN_PLANE)  # each hole lies in one slice
    out: list[list[_Candidate]] = [[] for _ in range(nz)]
    if n == 0:
        return out
    ii, jj, kk = np.nonzero(lab)
    ll = lab[ii, jj, kk]
    count = np.bincount(ll, minlength=n + 1).astype(np.float64)
    area = count * sx * sy
    a_min, a_max = _CANAL_AREA_MM2
    ok = (area >= 0.5 * a_min) & (area <= 1.5 * a_max)
    ok[0] = False
    if not ok.any():
        return out
    sel = ok[ll]
    ii, jj, kk, ll = ii[sel], jj[sel], kk[sel], ll[sel]
    idx, inv = np.unique(ll, return_inverse=True)
    cnt = count[idx]
    cx = np.bincount(inv, xs[ii]) / cnt
    cy = np.bincount(inv, ys[jj]) / cnt
    content = np.bincount(inv, grid.mean[ii, jj, kk]) / cnt
    kz = np.zeros(idx.size, int)
    kz[inv] = kk  # every voxel of a hole has the same slice
    front = np.full(idx.size, -np.inf)
    back = np.full(idx.size, np.inf)
    np.maximum.at(front, inv, ys[jj])
    np.minimum.at(back, inv, ys[jj])

    # The body's extent per slice: its left-right middle and its back and front.
    any_x, any_y = body.any(1), body.any(0)  # (X, Z), (Y, Z)
    wx = any_x.sum(0)
    x_mid = (xs[:, None] * any_x).sum(0) / np.maximum(wx, 1)
    y_post = np.where(any_y.any(0), ys[np.argmax(any_y, 0)], ys[0])
    y_ant = np.where(any_y.any(0), ys[ny - 1 - np.argmax(any_y[::-1], 0)], ys[-1])
    for i, label in enumerate(idx):
        k = kz[i]
        b = ring[:, :, k]
        s_area = _soft_range(area[label], a_min, a_max, 0.5 * (a_min + a_max))
        s_hu = _soft_range(content[i], *_CANAL_HU, 60.0)
        s_front = _box_fraction(b, xs, ys, cx[i] - 8, cx[i] + 8, front[i] + sy, front[i] + 30)
        s_back = _box_fraction(b, xs, ys, cx[i] - 6, cx[i] + 6, back[i] - 20, back[i] - sy)
        # Position in the body: near its left-right middle, in its posterior part.
        rel_y = (cy[i] - y_post[k]) / max(y_ant[k] - y_post[k], 1.0)
        s_pos = 1.0 / (1.0 + ((cx[i] - x_mid[k]) / 80.0) ** 2)
        s_pos *= 1.0 if rel_y < 0.5 else max(0.3, 1.0 - 1.4 * (rel_y - 0.5))
        score = (
            s_area
            * s_hu
            * float(np.clip((s_front - 0.3) / 0.4, 0.0, 1.0))
            * (0.4 + 0.6 * min(1.0, s_back / 0.15))
            * s_pos
        )
        if score > 0.05:
            radius = math.sqrt(area[label] / math.pi)
            out[k].append(_Candidate(int(k), float(cx[i]), float(cy[i]), float(score), radius))
    return out


def _box_fraction(b: np.ndarray, xs, ys, x0, x1, y0, y1) -> float:
    ix = (xs >= x0) & (xs <= x1)
    iy = (ys >= y0) & (ys <= y1)
    if not ix.any() or not iy.any():
        return 0.0
    return float(b[np.ix_(ix, iy)].mean())


def _best_chain(cands: list[list[_Candidate]], sz: float) -> tuple[list[_Candidate], float]:
    """Dynamic programme over slices: the chain of candidates (one per slice at most,
    gaps up to ``_MAX_GAP_MM``) maximising the sum of scores less small penalties for
    gaps and in-plane steps; steps beyond 5 mm + 0.6 mm per mm of z are not allowed."""
    max_gap = max(1, int(round(_MAX_GAP_MM / sz)))
    value: list[list[float]] = []
    back: list[list[tuple[int, int] | None]] = []
    best, best_at = 0.0, None
    for k, row in enumerate(cands):
        vrow, brow = [], []
        for c in row:
            v, prev = c.score, None
            for g in range(1, max_gap + 1):
                if k - g < 0:
                    break
                for j, p in enumerate(cands[k - g]):
                    step = math.hypot(c.x - p.x, c.y - p.y)
                    if step > 5.0 + 0.6 * g * sz:
                        continue
                    cand_v = value[k - g][j] + c.score - 0.1 * (g - 1) - 0.01 * step
                    if cand_v > v:
                        v, prev = cand_v, (k - g, j)
            vrow.append(v)
            brow.append(prev)
            if v > best:
                best, best_at = v, (k, len(vrow) - 1)
        value.append(vrow)
        back.append(brow)
    chain: list[_Candidate] = []
    while best_at is not None:
        k, j = best_at
        chain.append(cands[k][j])
        best_at = back[k][j]
    return chain[::-1], best


def _canal_line(grid: _Grid, body: np.ndarray):
    """The canal's centre line: (z indices, x mm, y mm) on every working slice between
    the chain's ends, linearly interpolated over gaps and lightly smoothed; the chain;
    and the confidence."""
    cands = _candidates(grid, body)
    sz = grid.spacing[2]
    chain, s1 = _best_chain(cands, sz)
    if not chain:
        raise ValueError("no vertebral canal found (no bony ring around soft tissue)")
    length = (chain[-1].k - chain[0].k) * sz
    if length < _MIN_LENGTH_MM:
        raise ValueError(
            f"no vertebral column found: canal rings span only {length:.0f} mm of z "
            f"(at least {_MIN_LENGTH_MM:.0f} mm needed)"
        )
    ks = np.arange(chain[0].k, chain[-1].k + 1)
    kc = np.array([c.k for c in chain])
    x = np.interp(ks, kc, [c.x for c in chain])
    y = np.interp(ks, kc, [c.y for c in chain])
    sigma = 4.0 / sz
    x = ndimage.gaussian_filter1d(x, sigma, mode="nearest")
    y = ndimage.gaussian_filter1d(y, sigma, mode="nearest")

    # Uniqueness: the best chain among candidates far from this line.
    far = [
        [c for c in row if not (ks[0] <= c.k <= ks[-1])
         or math.hypot(c.x - x[c.k - ks[0]], c.y - y[c.k - ks[0]]) > 40.0]
        for row in cands
    ]  # fmt: skip
    _, s2 = _best_chain(far, sz)
    coverage = len(chain) / len(ks)
    confidence = coverage * min(1.0, length / 80.0) * (1.0 - min(1.0, s2 / max(s1, 1e-9)))
    return ks, x, y, chain, confidence


# --- the vertebrae's bone along the line ------------------------------------------------------


def _image_slices(grid: _Grid):
    body = _body_mask(grid)
    if not (grid.mean[body] > _RING_HU).any():
        raise ValueError("no bone in the CT (nothing above 250 HU inside the body)")
    ks, lx, ly, chain, confidence = _canal_line(grid, body)
    radius = {c.k: c.radius for c in chain}
    xs, ys = grid.xy_mm()
    near_metal = _disk(2.0, grid.spacing)[:, :, None]
    metal = ndimage.binary_dilation(grid.peak > _METAL_HU, structure=near_metal)
    opener = _disk(4.0, grid.spacing)
    r_default = float(np.median(list(radius.values())))
    z_of = grid.z_mm()
    found = []  # (z, x, y, v, dx, dy, stuck): the vertebra of each slice in its box
    for k, cx, cy in zip(ks, lx, ly):
        ix = np.nonzero(np.abs(xs - cx) <= _ROI_X_MM)[0]
        iy = np.nonzero((ys >= cy + _ROI_Y_MM[0]) & (ys <= cy + _ROI_Y_MM[1]))[0]
        if ix.size == 0 or iy.size == 0:
            continue
        sl = (slice(ix[0], ix[-1] + 1), slice(iy[0], iy[-1] + 1), k)
        img = grid.mean[sl]
        dx, dy = xs[sl[0]][:, None] - cx, ys[sl[1]][None, :] - cy
        bone = (img > _BONE_HU) & body[sl]
        r_canal = radius.get(k, r_default)
        r_seed = r_canal + 10.0
        # Metal shapes the vertebra (a screw crosses its body) but never counts as bone.
        v = _vertebra(bone, dx, dy, opener, r_canal, r_seed) & ~metal[sl]
        if v.any():
            # A vertebra ends well inside the box's front edge (the body's front lies
            # 35-50 mm ahead of the canal's centre): bone reaching that edge is
            # something pressed against the body, as wide and as symmetric as it (a
            # contrast-filled heart chamber in front of a thoracic vertebra), that
            # neither the mirror nor the opening test parts from it. (Where the field's
            # front edge cuts the box, that edge says nothing.)
            stuck = bool(ys[iy[-1]] < ys[-1] and v[:, -1].any())
            found.append((z_of[k], cx, cy, v, dx, dy, stuck))
    # In a slice with something stuck to it, its centroid would pull the line 20-40 mm
    # forward, and leaving the slice out would pull it back (the slices left are mostly
    # disc levels, arch without body). The body's front moves little along the column:
    # cut the slice's bone at the furthest front (along the midline) of the clean
    # slices within 20 mm, which lie on both sides of a disc; with none near, leave the
    # slice out.
    clean = [(z, _midline_front(v, dx, dy)) for z, _, _, v, dx, dy, stuck in found if not stuck]
    zs, cent, area = [], [], []
    for z, cx, cy, v, dx, dy, stuck in found:
        if stuck:
            near = [f for zc, f in clean if abs(zc - z) <= 20.0]
            if not near:
                continue
            v = v & (dy <= max(near))
        iv = np.nonzero(v)
        if iv[0].size == 0:
            continue
        zs.append(z)
        cent.append([cx + float(dx[iv[0], 0].mean()), cy + float(dy[0, iv[1]].mean())])
        area.append(iv[0].size * grid.spacing[0] * grid.spacing[1])
    if not zs:
        raise ValueError("no vertebral bone found around the canal")
    return np.array(zs), np.array(cent), np.array(area), confidence


def _midline_front(v: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> float:
    """How far (mm) the vertebra ``v`` reaches in front of the canal's centre along the
    midline (``|dx| <= 6 mm``); 0 where nothing is in front (a disc level)."""
    strip = v & (np.abs(dx) <= 6.0) & (dy > 0)
    return float(np.broadcast_to(dy, v.shape)[strip].max()) if strip.any() else 0.0


def _mirror_x(mask: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """``mask`` reflected about ``dx = 0`` (the canal's sagittal line); False where the
    reflection leaves the box."""
    col = dx[:, 0]
    step = col[1] - col[0] if col.size > 1 else 1.0
    j = np.rint((-col - col[0]) / step).astype(int)
    inside = (j >= 0) & (j < col.size)
    out = np.zeros_like(mask)
    out[inside] = mask[j[inside]]
    return out


def _vertebra(bone, dx, dy, opener, r_canal, r_seed) -> np.ndarray:
    """The vertebra in one slice of the box around the canal (``dx``, ``dy``: mm from the
    canal centre, (n, 1) and (1, m)): bone connected to the canal's ring, less

    - blobs without a mirror image about the canal's sagittal line (a vertebra is nearly
      symmetric; an aorta, a kidney, a bowel loop lying against it is not): what an
      opening keeps of the bone that has no reflected bone within one voxel,
    - blobs that the opening parts from the vertebral body and that do not reach the
      canal's ring (ribs, organs further out),

    with the holes it encloses other than the canal filled in."""
    reflected = ndimage.binary_dilation(_mirror_x(bone, dx))
    lonely = ndimage.binary_opening(bone & ~reflected, structure=opener)
    if lonely.any():
        bone = bone & ~ndimage.binary_dilation(lonely)
    opened = ndimage.binary_opening(bone, structure=opener)
    lab, n = ndimage.label(opened)
    if n:
        # The vertebral body: the opened blob with most bone in front of the canal,
        # along the midline. Other opened blobs are foreign unless they reach the ring.
        strip = (np.abs(dx) <= 6.0) & (dy > 0) & (dy <= 45.0)
        hits = np.bincount(lab[strip & opened], minlength=n + 1)
        hits[0] = 0
        own = int(np.argmax(hits)) if hits.max() > 0 else 0
        foreign = opened & (lab != own)
        near = np.hypot(dx, dy) <= r_seed
        for i in np.unique(lab[near & opened]):
            foreign &= lab != i
        bone = bone & ~ndimage.binary_dilation(foreign)
    lab, n = ndimage.label(bone, structure=np.ones((3, 3)))
    near = np.hypot(dx, dy) <= r_seed
    ids = np.unique(lab[near & bone])
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros_like(bone)
    v = np.isin(lab, ids)
    # Holes in it are its cancellous core (whatever its density: osteoporotic bone can
    # be as dark as soft tissue), except the canal: the hole at the canal's centre.
    holes, _ = ndimage.label(ndimage.binary_fill_holes(v) & ~v)
    canal = np.unique(holes[np.hypot(dx, dy) <= 0.5 * r_canal])
    return v | ((holes > 0) & ~np.isin(holes, canal[canal > 0]))
