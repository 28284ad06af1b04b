"""X-ray tube spectra: photons per keV per mAs per mm^2 at 1 m from a tungsten anode.

``spectrum(kvp, filtration_mm_al, filtration_mm_cu, anode_angle_deg)`` takes the unfiltered
(minimally filtered) spectrum of a tungsten anode from SpekPy when it is installed
(G. Poludniowski et al., "SpekPy v2.0: a software toolkit for modeling x-ray tube
spectra", Med. Phys. 48 (2021) 3630; ``pip install x2ct[physics]``), otherwise from TASMIP
(J. M. Boone and J. A. Seibert, "An accurate method for computer-generating tungsten anode
x-ray spectra from 30 to 140 kV", Med. Phys. 24 (1997) 1661; the polynomial coefficients of
its EPAPS table E-MPHYA-24-1661, shipped below), and hardens either by Beer-Lambert through
the total aluminium and copper filtration with the NISTIR 5632 tables of
``x2ct.projector.materials``. ``filtration_mm_al`` is the total filtration (inherent plus
added; 2.5 mm Al is the usual minimum above 70 kVp). SpekPy's spectra carry no filtration
but the anode's own; TASMIP's are those of the measured tube, whose inherent filtration
gives its spectra the half-value layer of SpekPy's behind 1.75-1.95 mm Al between 60 and
120 kV (measured with these tables): TASMIP is taken to hold ``TASMIP_INHERENT_MM_AL`` of
the total, and only the rest is added.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from x2ct.projector.materials import (
    ENERGIES_KEV,
    air_kerma_weights,
    linear_attenuation,
)

__all__ = [
    "SPECTRUM_MODELS",
    "TASMIP_INHERENT_MM_AL",
    "filter_spectrum",
    "half_value_layer",
    "has_spekpy",
    "mean_energy",
    "spectrum",
]

SPECTRUM_MODELS = ("auto", "spekpy", "tasmip")
TASMIP_INHERENT_MM_AL = 1.9
"""Aluminium-equivalent filtration already in TASMIP's spectra (see the module docstring)."""
KVP_RANGE = (30.0, 150.0)
"""Tube voltages accepted (kV); TASMIP covers 30-140 kV, SpekPy the whole range."""


def has_spekpy() -> bool:
    """Whether SpekPy can be imported (the optional ``physics`` extra)."""
    try:
        import spekpy  # noqa: F401
    except Exception:  # an installed but broken package counts as absent
        return False
    return True


def _check(name: str, value: float, low: float, high: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {value!r}")
    return value


def filter_spectrum(
    fluence: np.ndarray, material: str, thickness_mm: float, energies=ENERGIES_KEV
) -> np.ndarray:
    """Beer-Lambert: ``fluence * exp(-mu(E) t)`` through ``thickness_mm`` of ``material``."""
    if thickness_mm == 0:
        return np.asarray(fluence, dtype=np.float64)
    mu = linear_attenuation(material, energies)  # 1/cm
    return np.asarray(fluence, dtype=np.float64) * np.exp(-mu * thickness_mm / 10.0)


def mean_energy(energies: np.ndarray, fluence: np.ndarray) -> float:
    """Fluence-weighted mean photon energy (keV)."""
    w = np.asarray(fluence, dtype=np.float64)
    return float(np.sum(np.asarray(energies) * w) / np.sum(w))


def half_value_layer(
    energies: np.ndarray, fluence: np.ndarray, material: str = "aluminium"
) -> float:
    """First half-value layer (mm of ``material``): the thickness that halves the air
    kerma of the beam (narrow-beam geometry)."""
    energies = np.asarray(energies, dtype=np.float64)
    kerma_w = np.asarray(fluence, dtype=np.float64) * air_kerma_weights(energies)
    mu = linear_attenuation(material, energies) / 10.0  # 1/mm
    k0 = kerma_w.sum()
    if not k0 > 0:
        raise ValueError("the spectrum carries no air kerma")
    lo, hi = 0.0, 1.0
    while np.sum(kerma_w * np.exp(-mu * hi)) > 0.5 * k0:
        hi *= 2.0
    for _ in range(60):  # bisection to well below a micrometre
        mid = 0.5 * (lo + hi)
        if np.sum(kerma_w * np.exp(-mu * mid)) > 0.5 * k0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _tasmip(kvp: float) -> np.ndarray:
    """TASMIP photons / (keV mAs mm^2) at 1 m on ``ENERGIES_KEV`` (zero above ``kvp``)."""
    if kvp > 140.0:
        raise ValueError(
            f"TASMIP covers 30-140 kV, got {kvp:g} kV; install SpekPy (pip install "
            "x2ct[physics]) for higher tube voltages"
        )
    out = np.zeros(len(ENERGIES_KEV))
    for i, coeffs in enumerate(_TASMIP_COEFFS):  # row i is E = 10 + i keV
        energy = 10.0 + i
        if energy > kvp:
            break
        out[i] = max(0.0, sum(c * kvp**j for j, c in enumerate(coeffs)))
    return out


@lru_cache(maxsize=512)
def _spekpy_integer_kvp(kvp: int, anode_angle_deg: float) -> np.ndarray:
    import spekpy

    s = spekpy.Spek(kvp=float(kvp), th=float(anode_angle_deg), dk=0.5)
    k, f = s.get_spectrum()  # bin centres (keV), photons / (keV cm^2 mAs) at 100 cm
    f = np.interp(ENERGIES_KEV, k, f, left=0.0, right=0.0) / 100.0  # per mm^2
    f[ENERGIES_KEV > kvp] = 0.0
    return f


def _spekpy(kvp: float, anode_angle_deg: float) -> np.ndarray:
    """SpekPy's unfiltered spectrum, linear in kV between integer tube voltages (each
    integer voltage is computed once and cached)."""
    lo = math.floor(kvp)
    t = kvp - lo
    f = _spekpy_integer_kvp(lo, anode_angle_deg)
    if t > 0:
        f = (1.0 - t) * f + t * _spekpy_integer_kvp(lo + 1, anode_angle_deg)
        f[ENERGIES_KEV > kvp] = 0.0
    return f


@lru_cache(maxsize=4096)
def _spectrum_cached(kvp, al, cu, angle, model) -> np.ndarray:
    if model == "spekpy":
        raw = _spekpy(kvp, angle)
    else:
        raw, al = _tasmip(kvp), max(0.0, al - TASMIP_INHERENT_MM_AL)
    out = filter_spectrum(filter_spectrum(raw, "aluminium", al), "copper", cu)
    out.setflags(write=False)
    return out


def spectrum(
    kvp: float,
    filtration_mm_al: float = 2.5,
    filtration_mm_cu: float = 0.0,
    anode_angle_deg: float = 12.0,
    *,
    model: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """A tungsten-anode X-ray spectrum after its total filtration.

    Args:
        kvp: tube voltage (kV), 30-150 (TASMIP: up to 140).
        filtration_mm_al: total aluminium filtration (inherent + added), mm; with TASMIP
            values below ``TASMIP_INHERENT_MM_AL`` give its unfiltered spectrum.
        filtration_mm_cu: added copper filtration, mm.
        anode_angle_deg: anode angle (degrees); SpekPy models it, TASMIP's tube is fixed.
        model: "spekpy", "tasmip", or "auto" (SpekPy when installed, else TASMIP).

    Returns:
        ``(energies, fluence)``: energies ``ENERGIES_KEV`` (10-150 keV, 1 keV bins) and
        photons per keV per mAs per mm^2 at 1 m from the focal spot (zero above ``kvp``);
        read-only arrays (cached).
    """
    if model not in SPECTRUM_MODELS:
        raise ValueError(f"model must be one of {SPECTRUM_MODELS}, got {model!r}")
    kvp = _check("kvp", kvp, *KVP_RANGE)
    al = _check("filtration_mm_al", filtration_mm_al, 0.0, 50.0)
    cu = _check("filtration_mm_cu", filtration_mm_cu, 0.0, 5.0)
    angle = _check("anode_angle_deg", anode_angle_deg, 5.0, 30.0)
    if model == "auto":
        model = "spekpy" if has_spekpy() else "tasmip"
    elif model == "spekpy" and not has_spekpy():
        raise ImportError("model='spekpy' needs SpekPy: pip install spekpy (or x2ct[physics])")
    # Rounded keys keep the cache small when styles are sampled from continuous ranges.
    key = (round(kvp, 2), round(al, 3), round(cu, 3), round(angle, 1), model)
    return ENERGIES_KEV, _spectrum_cached(*key)


# TASMIP: photons / (mm^2 mAs) in the 1 keV bin centred on E, at 1 m, for tube voltage kV:
# sum_j a_j(E) kV^j. Boone & Seibert, Med. Phys. 24 (1997) 1661, EPAPS E-MPHYA-24-1661
# (the coefficient table of the authors' program GENSPEC1.C), rows E = 10 ... 140 keV.
_TASMIP_COEFFS: tuple[tuple[float, ...], ...] = (
    (-2.470985e+00, 7.522494e-02, 1.601297e-04),  # 10 keV
    (-5.468520e+01, 2.825971e+00, -3.702585e-02, 1.685450e-04),  # 11 keV
    (-1.149660e+02, 7.181666e+00, -1.041506e-01, 5.246942e-04),  # 12 keV
    (-2.023117e+01, 7.523026e+00, -9.725916e-02, 5.262351e-04),  # 13 keV
    (3.440159e+02, 3.179575e+00, -3.306927e-02, 3.115530e-04),  # 14 keV
    (5.493292e+02, 1.507932e+01, -9.656648e-02, 5.142380e-04),  # 15 keV
    (1.032546e+03, 2.793458e+01, -1.517779e-01, 6.491026e-04),  # 16 keV
    (1.056836e+03, 5.305293e+01, 4.006209e-02, -7.164506e-04),  # 17 keV
    (1.098845e+03, 8.295003e+01, 3.061647e-01, -2.617126e-03),  # 18 keV
    (4.957978e+02, 1.470037e+02, -1.102818e-01, -1.354507e-03),  # 19 keV
    (-1.437833e+02, 2.229100e+02, -6.206306e-01, 1.896847e-04),  # 20 keV
    (-1.106664e+03, 2.770497e+02, -5.743618e-01, -1.066210e-03),  # 21 keV
    (-2.281766e+03, 3.424422e+02, -5.793318e-01, -2.303580e-03),  # 22 keV
    (-5.591722e+03, 4.724134e+02, -1.429958e+00, 5.049076e-04),  # 23 keV
    (-9.340535e+03, 6.186368e+02, -2.407872e+00, 3.701711e-03),  # 24 keV
    (-1.406504e+04, 7.760495e+02, -3.430400e+00, 6.646413e-03),  # 25 keV
    (-1.920322e+04, 9.418671e+02, -4.544806e+00, 9.920156e-03),  # 26 keV
    (-2.515954e+04, 1.130912e+03, -5.997636e+00, 1.441550e-02),  # 27 keV
    (-3.151928e+04, 1.331120e+03, -7.556880e+00, 1.925802e-02),  # 28 keV
    (-3.165938e+04, 1.293120e+03, -6.625241e+00, 1.593667e-02),  # 29 keV
    (-3.197696e+04, 1.259429e+03, -5.721722e+00, 1.269609e-02),  # 30 keV
    (-3.150203e+04, 1.213018e+03, -4.995401e+00, 1.068630e-02),  # 31 keV
    (-3.404540e+04, 1.273283e+03, -5.440755e+00, 1.275048e-02),  # 32 keV
    (-3.525747e+04, 1.267165e+03, -5.052590e+00, 1.140252e-02),  # 33 keV
    (-3.659796e+04, 1.264495e+03, -4.698218e+00, 1.017435e-02),  # 34 keV
    (-3.935522e+04, 1.325721e+03, -5.260133e+00, 1.251165e-02),  # 35 keV
    (-4.239447e+04, 1.396684e+03, -5.961586e+00, 1.539180e-02),  # 36 keV
    (-4.505477e+04, 1.445302e+03, -6.324550e+00, 1.657817e-02),  # 37 keV
    (-4.807436e+04, 1.506528e+03, -6.841015e+00, 1.832282e-02),  # 38 keV
    (-4.772176e+04, 1.455009e+03, -6.183720e+00, 1.609850e-02),  # 39 keV
    (-4.687265e+04, 1.383587e+03, -5.296423e+00, 1.305337e-02),  # 40 keV
    (-4.534002e+04, 1.304458e+03, -4.458635e+00, 1.029127e-02),  # 41 keV
    (-4.729671e+04, 1.337299e+03, -4.768113e+00, 1.129840e-02),  # 42 keV
    (-4.592165e+04, 1.239852e+03, -3.651701e+00, 7.505117e-03),  # 43 keV
    (-4.417617e+04, 1.131552e+03, -2.422704e+00, 3.340713e-03),  # 44 keV
    (-4.975325e+04, 1.307914e+03, -4.490898e+00, 1.093279e-02),  # 45 keV
    (-5.613191e+04, 1.511968e+03, -6.875300e+00, 1.962943e-02),  # 46 keV
    (-5.524074e+04, 1.421870e+03, -5.669106e+00, 1.487642e-02),  # 47 keV
    (-5.449938e+04, 1.337319e+03, -4.527925e+00, 1.035718e-02),  # 48 keV
    (-5.884185e+04, 1.478833e+03, -6.293272e+00, 1.687622e-02),  # 49 keV
    (-6.310984e+04, 1.616216e+03, -8.009326e+00, 2.321589e-02),  # 50 keV
    (-5.995594e+04, 1.496680e+03, -6.906032e+00, 1.977848e-02),  # 51 keV
    (-5.964100e+04, 1.456697e+03, -6.534316e+00, 1.853666e-02),  # 52 keV
    (-6.132553e+04, 1.489142e+03, -6.956800e+00, 2.005068e-02),  # 53 keV
    (-6.304895e+04, 1.522434e+03, -7.390895e+00, 2.161122e-02),  # 54 keV
    (-5.994340e+04, 1.380871e+03, -5.839743e+00, 1.619943e-02),  # 55 keV
    (-5.610868e+04, 1.218272e+03, -4.092096e+00, 1.018410e-02),  # 56 keV
    (-1.825729e+04, -1.382119e+02, 9.557819e+00, -2.140051e-02),  # 57 keV
    (2.220017e+04, -1.568661e+03, 2.389806e+01, -5.505689e-02),  # 58 keV
    (5.501707e+04, -2.721157e+03, 3.527805e+01, -8.047399e-02),  # 59 keV
    (8.922944e+04, -3.915854e+03, 4.704985e+01, -1.070557e-01),  # 60 keV
    (2.104991e+04, -1.557364e+03, 2.321886e+01, -5.134972e-02),  # 61 keV
    (-5.076517e+04, 9.032211e+02, -1.579828e+00, 7.306299e-03),  # 62 keV
    (-6.030789e+04, 1.202068e+03, -4.552311e+00, 1.419530e-02),  # 63 keV
    (-6.984994e+04, 1.499854e+03, -7.513087e+00, 2.103801e-02),  # 64 keV
    (-7.108636e+04, 1.507313e+03, -7.472137e+00, 2.024801e-02),  # 65 keV
    (-7.327537e+04, 1.540893e+03, -7.689933e+00, 2.028554e-02),  # 66 keV
    (-3.161176e+04, 1.297773e+02, 6.392479e+00, -1.693738e-02),  # 67 keV
    (1.036295e+04, -1.288012e+03, 2.051981e+01, -5.423905e-02),  # 68 keV
    (-4.132485e+04, 4.420904e+02, 2.448595e+00, 2.202247e-05),  # 69 keV
    (-9.983141e+04, 2.351143e+03, -1.722188e+01, 5.896824e-02),  # 70 keV
    (-8.345827e+04, 1.820261e+03, -1.140761e+01, 3.474510e-02),  # 71 keV
    (-6.038053e+04, 1.099142e+03, -3.836391e+00, 5.215208e-03),  # 72 keV
    (-7.332230e+04, 1.472738e+03, -7.481134e+00, 1.644730e-02),  # 73 keV
    (-8.866886e+04, 1.911744e+03, -1.172736e+01, 2.948703e-02),  # 74 keV
    (-8.906282e+04, 1.903695e+03, -1.166640e+01, 2.953372e-02),  # 75 keV
    (-9.122084e+04, 1.949906e+03, -1.212404e+01, 3.119028e-02),  # 76 keV
    (-9.195919e+04, 1.956641e+03, -1.222022e+01, 3.155684e-02),  # 77 keV
    (-9.393503e+04, 1.997570e+03, -1.264453e+01, 3.294245e-02),  # 78 keV
    (-9.460591e+04, 1.985575e+03, -1.240631e+01, 3.188458e-02),  # 79 keV
    (-9.465909e+04, 1.947305e+03, -1.191912e+01, 3.005542e-02),  # 80 keV
    (-1.054958e+05, 2.287738e+03, -1.546565e+01, 4.192772e-02),  # 81 keV
    (-1.128820e+05, 2.523280e+03, -1.806383e+01, 5.099440e-02),  # 82 keV
    (-5.652375e+04, 8.460812e+02, -1.890296e+00),  # 83 keV
    (-6.253113e+04, 9.546213e+02, -2.421458e+00),  # 84 keV
    (-6.063249e+04, 9.093265e+02, -2.222830e+00),  # 85 keV
    (-5.839087e+04, 8.581494e+02, -1.999379e+00),  # 86 keV
    (-6.177439e+04, 9.096954e+02, -2.219623e+00),  # 87 keV
    (-6.551339e+04, 9.674375e+02, -2.466158e+00),  # 88 keV
    (-6.482105e+04, 9.463755e+02, -2.384063e+00),  # 89 keV
    (-6.396586e+04, 9.225355e+02, -2.290526e+00),  # 90 keV
    (-5.976377e+04, 8.384694e+02, -1.918134e+00),  # 91 keV
    (-5.483239e+04, 7.418415e+02, -1.492676e+00),  # 92 keV
    (-5.545914e+04, 7.392220e+02, -1.466754e+00),  # 93 keV
    (-5.191874e+04, 6.677125e+02, -1.159438e+00),  # 94 keV
    (-5.337262e+04, 6.864440e+02, -1.248563e+00),  # 95 keV
    (-5.499713e+04, 7.080823e+02, -1.349865e+00),  # 96 keV
    (-6.109855e+04, 8.103042e+02, -1.805236e+00),  # 97 keV
    (-6.780313e+04, 9.224389e+02, -2.301017e+00),  # 98 keV
    (-6.463570e+04, 8.536160e+02, -1.980542e+00),  # 99 keV
    (-6.142322e+04, 7.841977e+02, -1.658250e+00),  # 100 keV
    (-6.542573e+04, 8.551263e+02, -1.999140e+00),  # 101 keV
    (-6.850218e+04, 9.104404e+02, -2.275249e+00),  # 102 keV
    (-6.775178e+04, 8.733046e+02, -2.050653e+00),  # 103 keV
    (-5.670986e+04, 6.717305e+02, -1.174642e+00),  # 104 keV
    (-6.431161e+04, 7.982173e+02, -1.730212e+00),  # 105 keV
    (-7.284777e+04, 9.397040e+02, -2.345359e+00),  # 106 keV
    (-7.296366e+04, 9.370416e+02, -2.349089e+00),  # 107 keV
    (-7.251969e+04, 9.256901e+02, -2.318580e+00),  # 108 keV
    (-7.373791e+04, 9.387560e+02, -2.371741e+00),  # 109 keV
    (-7.522138e+04, 9.557057e+02, -2.440560e+00),  # 110 keV
    (-6.645010e+04, 8.129935e+02, -1.892077e+00),  # 111 keV
    (-5.391723e+04, 6.111141e+02, -1.110798e+00),  # 112 keV
    (-6.950106e+04, 8.381854e+02, -1.943843e+00),  # 113 keV
    (-7.656837e+04, 9.340291e+02, -2.272803e+00),  # 114 keV
    (-7.169818e+04, 8.562692e+02, -1.994058e+00),  # 115 keV
    (-6.307650e+04, 7.199495e+02, -1.490337e+00),  # 116 keV
    (-6.896102e+04, 8.014658e+02, -1.785938e+00),  # 117 keV
    (-7.948799e+04, 9.545463e+02, -2.356450e+00),  # 118 keV
    (-8.038940e+04, 9.603943e+02, -2.368062e+00),  # 119 keV
    (-8.186549e+04, 9.744751e+02, -2.411129e+00),  # 120 keV
    (-8.127234e+04, 9.784392e+02, -2.501457e+00),  # 121 keV
    (-6.447853e+04, 7.327550e+02, -1.638994e+00),  # 122 keV
    (-3.806982e+04, 3.131658e+02),  # 123 keV
    (-3.797812e+04, 3.101094e+02),  # 124 keV
    (-4.023389e+04, 3.255209e+02),  # 125 keV
    (-4.280943e+04, 3.432826e+02),  # 126 keV
    (-4.114666e+04, 3.272756e+02),  # 127 keV
    (-3.925966e+04, 3.096545e+02),  # 128 keV
    (3.191650e+02,),  # 129 keV
    (-4.425804e+04, 3.425401e+02),  # 130 keV
    (8.115607e+01,),  # 131 keV
    (-3.867988e+04, 2.969811e+02),  # 132 keV
    (1.306709e+03,),  # 133 keV
    (1.153422e+03,),  # 134 keV
    (9.817065e+02,),  # 135 keV
    (8.099662e+02,),  # 136 keV
    (6.688839e+02,),  # 137 keV
    (5.277812e+02,),  # 138 keV
    (3.498336e+02,),  # 139 keV
    (1.718605e+02,),  # 140 keV
)
