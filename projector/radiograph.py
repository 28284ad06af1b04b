"""Radiograph physics: from a CT in HU to the pixel values an X-ray room stores.

The ideal DRR of ``x2ct.projector`` is a line integral of one attenuation coefficient at
one energy. A radiograph differs (J. T. Bushberg et al., *The Essential Physics of Medical
Imaging*, 3rd ed., 2012, ch. 6-7; D. R. Dance et al., *Diagnostic Radiology Physics: A
Handbook for Teachers and Students*, IAEA, 2014, ch. 5-7): the tube emits a spectrum, so
the beam hardens; scattered photons add a broad fog; the detector counts quanta (Poisson
noise), blurs (light spread in CsI) and weights each photon by its energy; the anode heel
makes the field uneven; and what is stored is a log, windowed and passed through a
monotone display curve, often edge-enhanced, 8 to 16 bits deep, sometimes inverted
(MONOCHROME1), with collimation bands and burned-in markers.

Pipeline (:func:`simulate_radiograph`), per pixel of each view:

1. ``material_paths``: areal densities a_m (g/cm^2) of a three-material basis (water-like
   soft tissue, ICRU-44 cortical bone, titanium) along each ray (:func:`decompose_hu`).
2. primary ``P = sum_E psi(E) exp(-sum_m (mu/rho)_m(E) a_m)`` with ``psi`` the spectrum
   weighted by the detector's energy response (energy-integrating CsI: absorbed fraction
   times E), normalised to 1: a flat field reads 1.
3. scatter ``S = G_sigma * (SPR(t_w) P)``, ``SPR(t_w) = spr_20cm (t_w / 20 cm)^k`` with
   ``t_w`` the water-equivalent thickness: a uniform slab gets S/P = SPR(t_w).
4. heel effect: ``I = h(row) (P + S)``, h linear down the rows (the anode-cathode axis is
   the patient's long axis).
5. quantum noise: Poisson counts of ``N I`` quanta (``N`` quanta per pixel of the
   unattenuated beam, reduced by the Swank factor of energy integration), then detector
   blur (Gaussian or Lorentzian MTF, after the quanta are absorbed, so the noise is
   blurred too) and additive electronic noise.
6. ``line_integral = -log I``; display: window (percentiles of the exposed field) or the
   fixed linear map ``line_integral / DRR_SCALE``, unsharp masking, gamma, sigmoid, a
   monotone LUT, collimation (white), markers (white), quantisation to ``bits``, and
   inversion for MONOCHROME1.

``RadiographStyle.ideal()`` is monochromatic at ``REFERENCE_KEV`` (where water's
attenuation equals ``MU_WATER``) with none of the rest: its ``line_integral`` is x2ct's DRR
``project(hu_to_mu(hu))`` and its 16-bit ``display`` is x2ct's DRR PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from x2ct.projector.display import blur, render_display
from x2ct.projector.materials import MATERIALS, mass_attenuation, mass_attenuation_table
from x2ct.projector.project import project_views
from x2ct.projector.spectra import spectrum
from x2ct.projector.style import REFERENCE_KEV, RadiographStyle

__all__ = [
    "BASIS",
    "HU_BONE",
    "HU_METAL",
    "REFERENCE_KEV",
    "Radiograph",
    "RadiographStyle",
    "decompose_hu",
    "material_paths",
    "simulate_radiograph",
]

BASIS = ("soft", "bone", "metal")
"""Basis materials of :func:`decompose_hu`: NISTIR 5632 water, ICRU-44 cortical bone and
titanium (``x2ct.projector.materials``)."""
_BASIS_MATERIALS = ("water", "cortical_bone", "titanium")


_MU_REF = mass_attenuation_table(_BASIS_MATERIALS, [REFERENCE_KEV], torch.float64)[:, 0]
_RHO_BONE = MATERIALS["cortical_bone"].density
HU_BONE = 1000.0 * (_RHO_BONE * float(_MU_REF[1]) / float(_MU_REF[0]) - 1.0)
"""CT number of ICRU-44 cortical bone (1.92 g/cm^3, ICRU Report 44, 1989) at
``REFERENCE_KEV`` from the NISTIR 5632 tables: about 1770 HU (1940 HU at 60 keV, 1600 HU at
70 keV: a CT's cortical bone reads lower the harder its effective beam)."""
HU_METAL = 3000.0
"""CT numbers at or above this are metal. Even ICRU-44 cortical bone stays below about
2000 HU at CT energies, while CTs store HU in 12 bits up to 3071, where metal implants
saturate."""


def _check_hu(hu) -> torch.Tensor:
    if not isinstance(hu, torch.Tensor) or hu.ndim != 5 or hu.shape[1] != 1:
        raise ValueError(
            f"hu must be a (B, 1, X, Y, Z) tensor in HU, got shape "
            f"{tuple(getattr(hu, 'shape', ()))}"
        )
    if not hu.is_floating_point():
        raise ValueError(f"hu must be a floating-point tensor, got {hu.dtype}")
    return hu


def _partial_density(hu: torch.Tensor, m: int) -> torch.Tensor:
    """Partial density (g/cm^3) of basis material ``m`` in each voxel (see decompose_hu)."""
    mu_w, mu_b, mu_t = (float(v) for v in _MU_REF)
    target = torch.clamp(1.0 + hu / 1000.0, min=0.0)  # mu / mu_water at REFERENCE_KEV
    is_metal = hu >= HU_METAL
    zero = torch.zeros((), dtype=hu.dtype, device=hu.device)
    if m == 2:
        return torch.where(is_metal, target * mu_w / mu_t, zero)
    w = torch.clamp(hu / HU_BONE, 0.0, 1.0)  # bone volume fraction between water and bone
    if m == 0:
        soft = torch.where(hu <= 0, target, 1.0 - w)  # water is 1 g/cm^3
        return torch.where(is_metal, zero, soft)
    bone = torch.where(hu > HU_BONE, target * mu_w / mu_b, w * _RHO_BONE)
    return torch.where(is_metal, zero, bone)


def decompose_hu(hu: torch.Tensor) -> torch.Tensor:
    """Partial densities (g/cm^3) of the ``BASIS`` materials, (B, 1, X, Y, Z) -> (B, 3, ...).

    The model, piecewise in HU, matches x2ct's ``hu_to_mu`` exactly at ``REFERENCE_KEV``
    (``sum_m (mu/rho)_m rho_m = mu_water (1 + HU/1000)``) and so keeps its DRR there:

    - HU <= 0: air and water (soft tissue), water at ``1 + HU/1000`` g/cm^3 (air itself,
      1.2 mg/cm^3, attenuates 1000 times less and is dropped); HU <= -1000 is empty.
    - 0 < HU <= ``HU_BONE``: water and cortical bone by volume, bone fraction
      ``HU / HU_BONE`` (bone 1.92 g/cm^3).
    - ``HU_BONE`` < HU < ``HU_METAL``: cortical bone, denser in proportion.
    - HU >= ``HU_METAL``: titanium, at the density that gives the voxel's attenuation at
      ``REFERENCE_KEV`` (a saturated CT under-states an implant's true density).

    Away from ``REFERENCE_KEV`` the materials attenuate as their NISTIR 5632 tables say:
    bone and metal gain contrast at low energies and the beam hardens through them.
    """
    hu = _check_hu(hu)
    return torch.cat([_partial_density(hu, m) for m in range(len(BASIS))], dim=1)


def material_paths(
    hu: torch.Tensor,
    views: torch.Tensor,
    detector_shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    step: float = 0.5,
    backend: str = "auto",
    parallel: bool = False,
) -> torch.Tensor:
    """Areal densities (g/cm^2) of each basis material along each ray.

    Args:
        hu: CT in HU, (B, 1, X, Y, Z), RAS voxel order, centred on the isocentre.
        views: (V, 15) or (B, V, 15) view vectors (``x2ct.projector.view_vectors``,
            ``stack_views``, ``transform_views``).
        detector_shape: (H, W) pixels.
        spacing: voxel size in mm; ``step`` and ``backend`` as for ``project_views``.
        parallel: parallel-beam views.
    Returns:
        (B, 3, V, H, W) line integrals of :func:`decompose_hu`'s partial densities, in
        g/cm^2 (mm are converted to cm). A material absent from the volume is skipped.
    """
    hu = _check_hu(hu)
    out = []
    for m in range(len(BASIS)):
        rho = _partial_density(hu, m)  # (B, 1, X, Y, Z), one material at a time
        if not bool(rho.any()):
            shape = (hu.shape[0], views.shape[-2], *(int(n) for n in detector_shape))
            out.append(hu.new_zeros(shape))
            continue
        out.append(project_views(rho, views, detector_shape, spacing, step, parallel, backend))
    return torch.stack(out, dim=1) / 10.0  # g/cm^3 * mm -> g/cm^2


# --- style ---------------------------------------------------------------------------------


# --- simulation ----------------------------------------------------------------------------


@dataclass
class Radiograph:
    """Simulated radiographs, each (B, V, H, W).

    primary: transmitted primary fraction, detector-energy weighted.
    intensity: detector signal (primary, scatter, heel, noise, blur) relative to the
        unattenuated beam.
    line_integral: ``-log(intensity)``, the effective line integral the image encodes (a
        pixel that caught no quanta reads half a quantum, so it stays finite).
    display: stored pixel values as floats in [0, 2**bits - 1].
    """

    primary: torch.Tensor
    intensity: torch.Tensor
    line_integral: torch.Tensor
    display: torch.Tensor


def _beam(style: RadiographStyle) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """(energies keV, psi, absorbed quanta per incident photon, Swank factor, mean keV).

    ``psi`` is the detector-signal weight of each energy, summing to 1: photons times
    absorbed fraction times energy for energy integration. The Swank factor
    ``<E>^2 / <E^2>`` of the absorbed spectrum turns quanta into the noise-equivalent
    quanta of an energy-integrating detector."""
    return _beam_cached(style.kvp, style.mono_kev, style.filtration_mm_al,
                        style.filtration_mm_cu, style.anode_angle_deg, style.spectrum_model,
                        style.csi_mg_cm2)


@lru_cache(maxsize=1024)
def _beam_cached(kvp, mono_kev, al, cu, angle, model, csi_mg_cm2):
    if kvp is None:
        energies = np.array([mono_kev])
        phi = np.ones(1)
    else:
        energies, phi = spectrum(kvp, al, cu, angle, model=model)
    if csi_mg_cm2 > 0:
        eta = -np.expm1(-mass_attenuation("csi", energies) * csi_mg_cm2 / 1000.0)
    else:
        eta = np.ones_like(energies)
    absorbed = phi * eta
    signal = absorbed * energies
    psi = signal / signal.sum()
    swank = float(signal.sum() ** 2 / (absorbed.sum() * (signal * energies).sum()))
    mean_kev = float((psi * energies).sum())
    # Sixteen bins of equal signal, each at its signal-weighted mean energy: line
    # integrals through 40 cm of water and 4 cm of bone change by < 0.1% (70 kVp) and the
    # per-pixel cost drops tenfold.
    cdf = np.cumsum(psi)
    bins = np.split(np.arange(len(psi)), np.searchsorted(cdf, np.linspace(0, 1, 17)[1:-1]))
    bins = [i for i in bins if len(i) and psi[i].sum() > 0]
    weights = np.array([psi[i].sum() for i in bins])
    centres = np.array([(psi[i] * energies[i]).sum() / psi[i].sum() for i in bins])
    return centres, weights / weights.sum(), float(absorbed.sum() / phi.sum()), swank, mean_kev


def _primary(paths: torch.Tensor, style: RadiographStyle) -> tuple[torch.Tensor, torch.Tensor]:
    """Primary transmission and water-equivalent thickness (cm) of images (N, 3, H, W)."""
    energies, psi, _, _, mean_kev = _beam(style)
    ftype = torch.float64 if paths.dtype == torch.float64 else torch.float32
    mu = mass_attenuation_table(_BASIS_MATERIALS, energies, ftype, paths.device)  # (3, K)
    psi_t = torch.as_tensor(psi, dtype=ftype, device=paths.device)
    a = paths.movedim(1, -1).to(ftype).reshape(-1, 3)  # (P, 3) g/cm^2
    chunk = 2**20  # pixels at a time: (chunk, K) temporaries stay near 64 MB
    primary = torch.cat([
        torch.exp(-(a[i : i + chunk] @ mu)) @ psi_t for i in range(0, a.shape[0], chunk)
    ])
    ref = mass_attenuation_table(_BASIS_MATERIALS, [mean_kev], ftype, paths.device)[:, 0]
    t_w = a @ (ref / ref[0])  # g/cm^2 of water, i.e. cm
    shape = (paths.shape[0], *paths.shape[2:])
    return primary.reshape(shape), t_w.reshape(shape)


def _style_grid(style, b: int, v: int) -> list[RadiographStyle]:
    """The (B, V) styles, flattened case-major."""
    if style is None:
        style = RadiographStyle()
    if isinstance(style, RadiographStyle):
        return [style] * (b * v)
    style = list(style)
    if len(style) == v and all(isinstance(s, RadiographStyle) for s in style):
        return style * b
    if len(style) == b and all(
        not isinstance(s, RadiographStyle) and len(s) == v
        and all(isinstance(x, RadiographStyle) for x in s) for s in style
    ):
        return [x for s in style for x in s]
    raise ValueError(
        f"style must be a RadiographStyle, a list of {v} (one per view) or {b} lists of {v} "
        "(one per case and view)"
    )


def _spacing_grid(pixel_spacing, b: int, v: int) -> np.ndarray:
    s = np.asarray(pixel_spacing, dtype=np.float64)
    if s.shape in ((2,), (v, 2)):
        s = np.broadcast_to(s, (b, v, 2))
    if s.shape != (b, v, 2) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(
            "pixel_spacing must be positive (dv, du) mm, or (V, 2) or (B, V, 2) of them, got "
            f"{np.asarray(pixel_spacing).tolist()}"
        )
    return s.reshape(b * v, 2)


def simulate_radiograph(
    paths: torch.Tensor,
    pixel_spacing,
    style: RadiographStyle | Sequence | None = None,
    generator: torch.Generator | None = None,
) -> Radiograph:
    """Radiographs from basis-material paths (see the module docstring for the physics).

    Args:
        paths: (B, 3, V, H, W) areal densities in g/cm^2 (:func:`material_paths`).
        pixel_spacing: detector pixel size (dv, du) in mm, or one per view (V, 2) or per
            case and view (B, V, 2).
        style: a :class:`RadiographStyle` for all, a list of V (one per view), or B lists
            of V (one per case and view); default ``RadiographStyle()``.
        generator: CPU torch generator for the quantum and electronic noise.
    Returns:
        :class:`Radiograph` of (B, V, H, W) tensors on ``paths``' device, float64 for
        float64 paths, else float32.
    """
    if not isinstance(paths, torch.Tensor) or paths.ndim != 5 or paths.shape[1] != len(BASIS):
        raise ValueError(
            f"paths must be (B, {len(BASIS)}, V, H, W) areal densities, got shape "
            f"{tuple(getattr(paths, 'shape', ()))}"
        )
    if not paths.is_floating_point() or not bool(torch.isfinite(paths).all()):
        raise ValueError("paths must be finite floating-point areal densities (g/cm^2)")
    b, _, v, h, w = paths.shape
    n = b * v
    styles = _style_grid(style, b, v)
    spacing = _spacing_grid(pixel_spacing, b, v)
    dtype = torch.float64 if paths.dtype == torch.float64 else torch.float32
    flat = paths.movedim(2, 1).reshape(n, len(BASIS), h, w)

    primary = torch.empty(n, h, w, dtype=dtype, device=paths.device)
    t_w = torch.empty_like(primary)
    groups: dict[RadiographStyle, list[int]] = {}
    for k, st in enumerate(styles):
        groups.setdefault(st, []).append(k)
    for st, members in groups.items():  # one spectrum per distinct style
        primary[members], t_w[members] = (t.to(dtype) for t in _primary(flat[members], st))

    def per_image(values) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=paths.device)[:, None, None]

    img = primary
    spr20 = per_image([st.spr_20cm for st in styles])
    if bool((spr20 > 0).any()):  # scatter: a broad blur of SPR(t_w) * P
        spr = spr20 * (t_w.clamp(min=0) / 20.0) ** per_image([st.spr_exponent for st in styles])
        sigma = [st.scatter_sigma_mm if st.spr_20cm > 0 else 0.0 for st in styles]
        img = img + blur(spr * img, spacing, sigma)
    heel = per_image([st.heel for st in styles])
    if bool((heel != 0).any()):
        rows = torch.linspace(-0.5, 0.5, h, dtype=dtype, device=paths.device)[:, None]
        img = img * (1.0 + heel * rows)
    # Noise-equivalent quanta per pixel of the unattenuated beam (0: noiseless).
    quanta = np.array([
        st.photons_per_mm2 * spacing[k, 0] * spacing[k, 1] * _beam(st)[2] * _beam(st)[3]
        if st.photons_per_mm2 is not None else 0.0 for k, st in enumerate(styles)
    ])
    noisy = np.flatnonzero(quanta > 0)
    if len(noisy):
        q = torch.as_tensor(quanta[noisy], dtype=torch.float64)[:, None, None]
        counts = torch.poisson((img[noisy].clamp(min=0).double().cpu() * q), generator=generator)
        img = img.clone()
        img[noisy] = (counts / q).to(device=img.device, dtype=dtype)
    img = blur(img, spacing, [st.blur_mm for st in styles],
               np.array([st.blur_kind == "lorentzian" for st in styles]))
    sigma_e = np.array([st.electronic_noise if q > 0 else 0.0 for st, q in zip(styles, quanta)])
    if np.any(sigma_e > 0):
        scale = torch.as_tensor(sigma_e / np.maximum(quanta, 1e-30), dtype=torch.float64)
        noise = torch.randn(img.shape, generator=generator, dtype=torch.float64)
        img = img + (noise * scale[:, None, None]).to(img)
    # A pixel that caught no quanta reads half a quantum, so the log stays finite.
    floor = per_image(np.where(quanta > 0, 0.5 / np.maximum(quanta, 1e-30), 1e-30).tolist())
    line = -torch.log(torch.maximum(img, floor))
    display = render_display(line, styles, spacing)

    def unflat(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, v, h, w)

    return Radiograph(unflat(primary), unflat(img), unflat(line), unflat(display))
