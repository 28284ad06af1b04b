"""Detector blur and the display processing of radiographs, batched over images.

``blur``: an isotropic point-spread function applied through its MTF (Gaussian
``exp(-2 pi^2 sigma^2 f^2)`` or Lorentzian ``exp(-2 pi gamma f)``, the light spread of a
CsI scintillator) with mirrored borders, one width per image. ``render_display``: from
line integrals to stored pixel values: window, unsharp masking, gamma, sigmoid, LUT,
collimation, burned-in markers, quantisation, inversion.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from x2ct.projector.attenuation import DRR_SCALE
from x2ct.projector.style import RadiographStyle

__all__ = ["blur", "render_display"]


def _fft_blur(x: torch.Tensor, spacing: np.ndarray, width: np.ndarray,
              lorentz: np.ndarray) -> torch.Tensor:
    """(N, H, W) images, each blurred through its MTF; borders mirrored by the PSF's reach."""
    n, h, w = x.shape
    reach = np.where(lorentz, 12.0, 4.0) * width
    ph = min(int(np.ceil((reach / spacing[:, 0]).max())), 2 * h)
    pw = min(int(np.ceil((reach / spacing[:, 1]).max())), 2 * w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    xp = F.pad(x[:, None], (pw, pw, ph, ph), mode=mode)[:, 0]
    hp, wp = xp.shape[-2:]
    ftype = torch.float64 if x.dtype == torch.float64 else torch.float32
    opts = {"dtype": torch.float64, "device": x.device}
    sp = torch.as_tensor(spacing, **opts)
    fy = torch.fft.fftfreq(hp, **opts)[None, :, None] / sp[:, 0, None, None]
    fx = torch.fft.rfftfreq(wp, **opts)[None, None, :] / sp[:, 1, None, None]
    f2 = fy**2 + fx**2  # (N, hp, wp // 2 + 1), cycles/mm squared
    wid = torch.as_tensor(width, **opts)[:, None, None]
    mtf = torch.where(
        torch.as_tensor(lorentz, device=x.device)[:, None, None],
        torch.exp(-2.0 * math.pi * wid * f2.sqrt()),
        torch.exp(-2.0 * math.pi**2 * wid**2 * f2),
    )
    out = torch.fft.irfft2(torch.fft.rfft2(xp.to(ftype)) * mtf.to(ftype), s=(hp, wp))
    return out[:, ph : ph + h, pw : pw + w].to(x.dtype)


def blur(x: torch.Tensor, spacing, width, lorentz=None) -> torch.Tensor:
    """Blur images ``x`` (N, H, W) of pixel size ``spacing`` (N, 2) mm (dv, du) by PSF
    widths ``width`` (N,) mm: Gaussian sigma, or Lorentzian half width at half maximum
    where ``lorentz`` (N,) is true. Width 0 leaves an image as it is; the mean is kept.
    Gaussians wider than six pixels are applied on a grid of about a third of their width
    and interpolated back (scatter, wide unsharp masks)."""
    n, h, w = x.shape
    spacing = np.array(np.broadcast_to(np.asarray(spacing, dtype=np.float64), (n, 2)))
    width = np.array(np.broadcast_to(np.asarray(width, dtype=np.float64), (n,)))
    lorentz = np.zeros(n, bool) if lorentz is None else np.array(np.broadcast_to(lorentz, (n,)))
    active = width > 0
    if not active.any():
        return x
    coarse = active & ~lorentz & (width / spacing.max(1) > 6) & (min(h, w) > 8)
    fine = active & ~coarse
    out = x.clone()
    if fine.any():
        idx = np.flatnonzero(fine)
        out[idx] = _fft_blur(x[idx], spacing[idx], width[idx], lorentz[idx])
    if coarse.any():  # one coarse grid for all: a third of the narrowest such PSF
        idx = np.flatnonzero(coarse)
        f = max(1, int((width[idx] / (3 * spacing[idx].max(1))).min()))
        hc, wc = max(2, h // f), max(2, w // f)
        small = F.adaptive_avg_pool2d(x[idx][:, None], (hc, wc))[:, 0]
        small_sp = spacing[idx] * np.array([[h / hc, w / wc]])
        small = _fft_blur(small, small_sp, width[idx], lorentz[idx])
        out[idx] = F.interpolate(small[:, None], size=(h, w), mode="bilinear",
                                 align_corners=False)[:, 0]
    return out


def _field(styles: list[RadiographStyle], shape, device) -> torch.Tensor:
    """(N, H, W) masks of the exposed field (inside the collimation)."""
    h, w = shape
    field = torch.zeros(len(styles), h, w, dtype=torch.bool, device=device)
    for k, st in enumerate(styles):
        t, b, lft, r = st.collimation
        field[k, round(t * h) : h - round(b * h), round(lft * w) : w - round(r * w)] = True
    return field


def _window(line: torch.Tensor, field: torch.Tensor, styles) -> torch.Tensor:
    """Line integrals mapped to [0, 1]-ish: percentiles of the exposed field to 0 and 1,
    or ``line / DRR_SCALE`` for styles without a window."""
    out = line / DRR_SCALE
    idx = [k for k, st in enumerate(styles) if st.window is not None]
    if not idx:
        return out
    vals = torch.where(field[idx], line[idx], torch.nan).flatten(1)
    if vals.shape[1] > 2**18:  # percentiles of a regular subsample
        vals = vals[:, :: vals.shape[1] // 2**18 + 1]
    vals = vals.float().sort(dim=1).values  # NaN (outside the field) sorts last
    count = (~vals.isnan()).sum(1).clamp(min=1)
    q = torch.tensor([[styles[k].window[0], styles[k].window[1]] for k in idx],
                     device=line.device) / 100.0
    pos = q * (count[:, None] - 1)  # (n, 2), linear interpolation between order statistics
    lo_i = pos.floor().long()
    hi_i = torch.minimum(lo_i + 1, count[:, None] - 1)
    frac = pos - lo_i
    v = vals.gather(1, lo_i) * (1 - frac) + vals.gather(1, hi_i) * frac
    lo, hi = v[:, :1, None].to(line.dtype), v[:, 1:, None].to(line.dtype)
    out[idx] = (line[idx] - lo) / torch.clamp(hi - lo, min=1e-6)
    return out


# 3 x 5 glyphs (rows top to bottom) for lead markers and burned-in text.
_GLYPHS = {
    "L": ("#..", "#..", "#..", "#..", "###"), "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "A": (".#.", "#.#", "###", "#.#", "#.#"), "P": ("##.", "#.#", "##.", "#..", "#.."),
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", "..#", "..#", "..#"),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
}


def _stamp(img: torch.Tensor, text: str, top: int, left: int, cell: int, value: float) -> None:
    """Draw ``text`` in 3 x 5 glyphs of ``cell`` pixels per glyph pixel, clipped to img."""
    h, w = img.shape
    rows = ["".join(_GLYPHS[ch][r] + "." for ch in text) for r in range(5)]
    mask = torch.tensor([[c == "#" for c in row] for row in rows])
    mask = mask.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(h, top + mask.shape[0]), min(w, left + mask.shape[1])
    if r1 > r0 and c1 > c0:
        sub = mask[r0 - top : r1 - top, c0 - left : c1 - left].to(img.device)
        img[r0:r1, c0:c1][sub] = value


def _draw_markers(img: torch.Tensor, seed: int, spacing) -> None:
    """A lead letter marker 10-20 mm tall near a corner (opaque: white) and a burned-in
    text strip 3-6 mm tall along the top or bottom, sometimes on a black label."""
    g = torch.Generator().manual_seed(int(seed))

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    h, w = img.shape
    dv = float(spacing[0])
    cell = max(1, round(uniform(10.0, 20.0) / 5 / dv))
    letter = "LRAP"[int(torch.randint(0, 4, (), generator=g))]
    top = int(uniform(0.03, 0.2) * h) if uniform(0, 1) < 0.5 else int(uniform(0.8, 0.97) * h) \
        - 5 * cell
    left = int(uniform(0.03, 0.2) * w) if uniform(0, 1) < 0.5 else int(uniform(0.8, 0.97) * w) \
        - 3 * cell
    _stamp(img, letter, top, left, cell, 1.0)
    cell = max(1, round(uniform(3.0, 6.0) / 5 / dv))
    n = int(torch.randint(6, 16, (), generator=g))
    text = "".join("0123456789LRAP"[int(i)] for i in torch.randint(0, 14, (n,), generator=g))
    row = int(uniform(0.01, 0.05) * h) if uniform(0, 1) < 0.5 else int(uniform(0.95, 0.99) * h) \
        - 5 * cell
    col = int(uniform(0.02, 0.4) * w)
    if uniform(0, 1) < 0.5:  # a black label behind the text
        img[max(0, row - cell) : row + 6 * cell, max(0, col - cell) : col + 4 * cell * n] = 0.0
    _stamp(img, text, row, col, cell, 1.0)


def render_display(line: torch.Tensor, styles: list[RadiographStyle], spacing) -> torch.Tensor:
    """Stored pixel values (N, H, W), floats in [0, 2**bits - 1], from line integrals
    (N, H, W), one style and pixel spacing (dv, du) per image."""
    n, h, w = line.shape
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (n, 2))
    field = _field(styles, (h, w), line.device)
    x = _window(line, field, styles)
    depth = max(len(st.enhancement) for st in styles)
    for level in range(depth):  # unsharp masks, one scale per level
        pairs = [st.enhancement[level] if level < len(st.enhancement) else (0.0, 0.0)
                 for st in styles]
        amount = torch.tensor([a for a, _ in pairs], dtype=x.dtype, device=x.device)
        x = x + amount[:, None, None] * (x - blur(x, spacing, [s for _, s in pairs]))
    x = x.clamp(0.0, 1.0)

    def per_image(values) -> torch.Tensor:
        return torch.tensor(values, dtype=x.dtype, device=x.device)[:, None, None]

    gamma = per_image([st.gamma for st in styles])
    x = x**gamma
    gain = per_image([st.sigmoid for st in styles])
    if bool((gain > 0).any()):
        g = gain.clamp(min=1e-6)
        lo, hi = torch.sigmoid(-g / 2), torch.sigmoid(g / 2)
        x = torch.where(gain > 0, (torch.sigmoid(g * (x - 0.5)) - lo) / (hi - lo), x)
    for k, st in enumerate(styles):
        if st.lut is not None:
            knots = torch.tensor(st.lut, dtype=x.dtype, device=x.device)
            pos = x[k] * (len(knots) - 1)
            i = pos.floor().clamp(0, len(knots) - 2).long()
            x[k] = knots[i] + (pos - i) * (knots[i + 1] - knots[i])
    x = torch.where(field, x, torch.ones_like(x))  # unexposed film is white
    for k, st in enumerate(styles):
        if st.marker_seed is not None:
            _draw_markers(x[k], st.marker_seed, spacing[k])
    top = per_image([st.max_value for st in styles])
    x = torch.round(x.clamp(0.0, 1.0) * top)
    invert = torch.tensor([st.invert for st in styles], device=x.device)[:, None, None]
    return torch.where(invert, top - x, x)
