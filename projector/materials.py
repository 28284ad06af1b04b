"""Photon mass attenuation coefficients mu/rho(E) of the materials a radiograph sees.

Source of every number in ``_TABLES``: J. H. Hubbell and S. M. Seltzer, "Tables of X-Ray
Mass Attenuation Coefficients and Mass Energy-Absorption Coefficients from 1 keV to 20 MeV
for Elements Z = 1 to 92 and 48 Additional Substances of Dosimetric Interest", NISTIR 5632
(NIST, 1995; NIST Standard Reference Database 126, physics.nist.gov/PhysRefData/
XrayMassCoef): Table 3 (elements: Al z13, Ti z22, Cu z29, I z53) and Table 4 (compounds
and mixtures: air, dry, near sea level; water, liquid; tissue, soft (ICRU-44); adipose
tissue (ICRU-44); bone, cortical (ICRU-44); cesium iodide), the tabulated rows between 8
and 200 keV with the K edges inside that range (rows at an edge appear twice: below, then
above). Densities are those of NISTIR 5632 Tables 1 and 2. Values between the tabulated
energies are interpolated log-log within each edge-free segment, as NIST recommends.

Everything is shipped here: nothing is downloaded at run time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "ENERGIES_KEV",
    "MATERIALS",
    "Material",
    "air_kerma_weights",
    "linear_attenuation",
    "mass_attenuation",
    "mass_attenuation_table",
]

ENERGIES_KEV = np.arange(10.0, 151.0)
"""The common energy grid of spectra and attenuation tables: 10-150 keV in 1 keV steps."""


@dataclass(frozen=True)
class Material:
    """A material's mu/rho(E) table (keV, cm^2/g) and its density (g/cm^3)."""

    name: str
    density: float
    table: tuple[tuple[float, float], ...]
    source: str


# (E keV, mu/rho cm^2/g), NISTIR 5632 (see the module docstring). Duplicated energies
# are absorption edges: the first row is just below the edge, the second just above.
_TABLES: dict[str, tuple[float, str, tuple[tuple[float, float], ...]]] = {
    "air": (1.205e-3, "NISTIR 5632 Table 4, Air, Dry (near sea level)", (
        (8, 9.921), (10, 5.120), (15, 1.614), (20, 0.7779), (30, 0.3538), (40, 0.2485),
        (50, 0.2080), (60, 0.1875), (80, 0.1662), (100, 0.1541), (150, 0.1356),
        (200, 0.1233),
    )),
    "water": (1.000, "NISTIR 5632 Table 4, Water, Liquid", (
        (8, 10.37), (10, 5.329), (15, 1.673), (20, 0.8096), (30, 0.3756), (40, 0.2683),
        (50, 0.2269), (60, 0.2059), (80, 0.1837), (100, 0.1707), (150, 0.1505),
        (200, 0.1370),
    )),
    "soft_tissue": (1.060, "NISTIR 5632 Table 4, Tissue, Soft (ICRU-44)", (
        (8, 10.42), (10, 5.379), (15, 1.699), (20, 0.8230), (30, 0.3790), (40, 0.2688),
        (50, 0.2264), (60, 0.2048), (80, 0.1823), (100, 0.1693), (150, 0.1492),
        (200, 0.1358),
    )),
    "adipose": (0.950, "NISTIR 5632 Table 4, Adipose Tissue (ICRU-44)", (
        (8, 6.300), (10, 3.268), (15, 1.083), (20, 0.5677), (30, 0.3063), (40, 0.2396),
        (50, 0.2123), (60, 0.1974), (80, 0.1800), (100, 0.1688), (150, 0.1500),
        (200, 0.1368),
    )),
    "cortical_bone": (1.920, "NISTIR 5632 Table 4, Bone, Cortical (ICRU-44)", (
        (8, 53.23), (10, 28.51), (15, 9.032), (20, 4.001), (30, 1.331), (40, 0.6655),
        (50, 0.4242), (60, 0.3148), (80, 0.2229), (100, 0.1855), (150, 0.1480),
        (200, 0.1309),
    )),
    "titanium": (4.540, "NISTIR 5632 Table 3, Titanium (Z = 22)", (
        (8, 202.3), (10, 110.7), (15, 35.87), (20, 15.85), (30, 4.972), (40, 2.214),
        (50, 1.213), (60, 0.7661), (80, 0.4052), (100, 0.2721), (150, 0.1649),
        (200, 0.1314),
    )),
    "iodine": (4.930, "NISTIR 5632 Table 3, Iodine (Z = 53)", (
        (8, 292.2), (10, 162.6), (15, 55.12), (20, 25.43), (30, 8.561), (33.1694, 6.553),
        (33.1694, 35.82), (40, 22.10), (50, 12.32), (60, 7.579), (80, 3.510),
        (100, 1.942), (150, 0.6978), (200, 0.3663),
    )),
    "aluminium": (2.699, "NISTIR 5632 Table 3, Aluminum (Z = 13)", (
        (8, 50.33), (10, 26.23), (15, 7.955), (20, 3.441), (30, 1.128), (40, 0.5685),
        (50, 0.3681), (60, 0.2778), (80, 0.2018), (100, 0.1704), (150, 0.1378),
        (200, 0.1223),
    )),
    "copper": (8.960, "NISTIR 5632 Table 3, Copper (Z = 29)", (
        (8.9789, 278.4), (10, 215.9), (15, 74.05), (20, 33.79), (30, 10.92), (40, 4.862),
        (50, 2.613), (60, 1.593), (80, 0.7630), (100, 0.4584), (150, 0.2217),
        (200, 0.1559),
    )),
    # Cesium iodide: the I K edge (33.17 keV) and the Cs K edge (35.98 keV). The table's
    # row at 34.55 keV (between the edges) is left out; log-log interpolation between
    # the rows at the two edges stands in for it.
    "csi": (4.510, "NISTIR 5632 Table 4, Cesium Iodide", (
        (8, 307.1), (10, 171.1), (15, 58.15), (20, 26.86), (30, 9.045), (33.1694, 6.923),
        (33.1694, 21.22), (35.9846, 17.19), (35.9846, 30.27), (40, 22.97), (50, 12.87),
        (60, 7.921), (80, 3.677), (100, 2.035), (150, 0.7290), (200, 0.3805),
    )),
}

# Mass energy-absorption coefficient mu_en/rho of dry air (cm^2/g), NISTIR 5632 Table 4:
# weights a spectrum by air kerma (half-value layers are defined in air kerma).
_AIR_MU_EN: tuple[tuple[float, float], ...] = (
    (8, 9.446), (10, 4.742), (15, 1.334), (20, 0.5389), (30, 0.1537), (40, 0.06833),
    (50, 0.04098), (60, 0.03041), (80, 0.02407), (100, 0.02325), (150, 0.02496),
    (200, 0.02672),
)

MATERIALS: dict[str, Material] = {
    name: Material(name, density, table, source)
    for name, (density, source, table) in _TABLES.items()
}
"""Materials by name: air, water, soft_tissue, adipose, cortical_bone, titanium, iodine,
aluminium, copper, csi."""


def _loglog(table: tuple[tuple[float, float], ...], energies, what: str) -> np.ndarray:
    """Log-log interpolation within edge-free segments; an energy exactly on an edge takes
    the value above it. Raises outside the tabulated range (no extrapolation)."""
    e = np.asarray(energies, dtype=np.float64)
    lo, hi = table[0][0], table[-1][0]
    if e.size and (not np.all(np.isfinite(e)) or e.min() < lo or e.max() > hi):
        raise ValueError(
            f"{what}: energies must lie in the tabulated range [{lo:g}, {hi:g}] keV, got "
            f"[{np.nanmin(e):g}, {np.nanmax(e):g}]"
        )
    te = np.array([row[0] for row in table])
    tv = np.log(np.array([row[1] for row in table]))
    # Index of the segment's upper row: the first row strictly above e (so an energy on
    # an edge uses the segment that starts at the edge's upper row).
    i = np.clip(np.searchsorted(te, e, side="right"), 1, len(te) - 1)
    e0, e1, v0, v1 = te[i - 1], te[i], tv[i - 1], tv[i]
    t = np.log(e / e0) / np.log(e1 / e0)
    return np.exp(v0 + t * (v1 - v0))


def _material(name: str) -> Material:
    try:
        return MATERIALS[name]
    except KeyError:
        raise ValueError(
            f"unknown material {name!r}; expected one of {sorted(MATERIALS)}"
        ) from None


def mass_attenuation(material: str, energies_kev=ENERGIES_KEV) -> np.ndarray:
    """mu/rho (cm^2/g) of ``material`` at ``energies_kev`` (8-200 keV), log-log
    interpolated from NISTIR 5632."""
    return _loglog(_material(material).table, energies_kev, material)


def linear_attenuation(material: str, energies_kev=ENERGIES_KEV) -> np.ndarray:
    """mu (1/cm) of ``material`` at its NISTIR 5632 density."""
    return mass_attenuation(material, energies_kev) * _material(material).density


def air_kerma_weights(energies_kev=ENERGIES_KEV) -> np.ndarray:
    """E * (mu_en/rho)_air(E) (keV cm^2/g): a photon fluence times this is proportional to
    air kerma."""
    e = np.asarray(energies_kev, dtype=np.float64)
    return e * _loglog(_AIR_MU_EN, e, "air mu_en/rho")


@lru_cache(maxsize=32)
def _table_cached(names: tuple[str, ...], energies: tuple[float, ...]) -> torch.Tensor:
    return torch.from_numpy(np.stack([mass_attenuation(n, energies) for n in names]))


def mass_attenuation_table(
    names, energies_kev=ENERGIES_KEV, dtype=torch.float32, device=None
) -> torch.Tensor:
    """(M, K) tensor of mu/rho (cm^2/g) for materials ``names`` at ``energies_kev``."""
    energies = tuple(float(e) for e in np.atleast_1d(np.asarray(energies_kev, dtype=float)))
    if not all(math.isfinite(e) for e in energies):
        raise ValueError(f"energies must be finite, got {energies}")
    return _table_cached(tuple(names), energies).to(dtype=dtype, device=device)
