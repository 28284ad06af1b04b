"""Attenuation tables and tube spectra (x2ct.projector.materials, x2ct.projector.spectra)."""

import numpy as np
import pytest

from x2ct.projector import materials, spectra
from x2ct.projector.materials import ENERGIES_KEV, MATERIALS, mass_attenuation
from x2ct.projector.spectra import half_value_layer, mean_energy, spectrum


def test_tables_return_nist_nodes_and_interpolate_log_log():
    # Rows of NISTIR 5632 (water 60 keV, cortical bone 80 keV, iodine 100 keV) come back.
    assert mass_attenuation("water", [60.0])[0] == pytest.approx(0.2059)
    assert mass_attenuation("cortical_bone", [80.0])[0] == pytest.approx(0.2229)
    assert mass_attenuation("iodine", [100.0])[0] == pytest.approx(1.942)
    # Between rows: a power law through the two neighbours (log-log straight line).
    e = np.array([50.0, 55.0, 60.0])
    mu = mass_attenuation("water", e)
    slope = np.log(mu[2] / mu[0]) / np.log(e[2] / e[0])
    assert mu[1] == pytest.approx(mu[0] * (e[1] / e[0]) ** slope, rel=1e-12)
    # The common grid is 10-150 keV in 1 keV steps.
    assert ENERGIES_KEV[0] == 10 and ENERGIES_KEV[-1] == 150 and len(ENERGIES_KEV) == 141


def test_k_edges_and_monotone_decrease():
    below, above = mass_attenuation("iodine", [33.16, 33.1694])
    assert above / below > 5.0  # the iodine K edge (contrast agent)
    csi = mass_attenuation("csi", [35.98, 35.9846])
    assert csi[1] / csi[0] > 1.7  # the caesium K edge
    for name in ("air", "water", "soft_tissue", "adipose", "cortical_bone", "titanium",
                 "aluminium", "copper"):
        assert np.all(np.diff(mass_attenuation(name)) < 0), name  # no edge in 10-150 keV


def test_table_range_and_names_are_checked():
    with pytest.raises(ValueError, match="tabulated range"):
        mass_attenuation("water", [5.0])
    with pytest.raises(ValueError, match="unknown material 'bone'"):
        mass_attenuation("bone", [60.0])


def test_agrees_with_xraydb_elam_tables():
    """An independent compilation (Elam et al. via xraydb) agrees within a few percent."""
    xraydb = pytest.importorskip("xraydb")
    e = np.array([20.0, 30.0, 40.0, 60.0, 80.0, 100.0, 150.0])
    for ours, formula in (("water", "H2O"), ("aluminium", "Al"), ("copper", "Cu"),
                          ("titanium", "Ti"), ("iodine", "I")):
        theirs = xraydb.material_mu(formula, e * 1000.0, density=1.0)  # 1/cm at 1 g/cm^3
        np.testing.assert_allclose(mass_attenuation(ours, e), theirs, rtol=0.05, err_msg=ours)


def test_densities_are_nist():
    assert MATERIALS["cortical_bone"].density == 1.92
    assert MATERIALS["water"].density == 1.0
    assert materials.linear_attenuation("aluminium", [60.0])[0] == pytest.approx(0.2778 * 2.699)


def test_tasmip_spectrum_shape_and_units():
    e, f = spectrum(80.0, 2.5, model="tasmip")
    assert np.array_equal(e, ENERGIES_KEV)
    assert np.all(f[e > 80] == 0) and np.all(f[(e >= 20) & (e <= 78)] > 0)
    # Tungsten K lines (57-59 and 67-69 keV) stand above the bremsstrahlung around them.
    assert f[e == 59][0] > 1.1 * f[e == 61][0]
    # About 1e6 photons per mm^2 per mAs at 1 m for 80 kV behind 2.5 mm Al.
    assert 3e5 < f.sum() < 3e6


def test_half_value_layer_in_regulatory_range():
    """21 CFR 1020.30(m)(1), Table 1: at 80 kVp the first HVL must be at least 2.3 mm Al
    (2.9 mm Al for equipment made after June 2006); 2.5-3.5 mm Al of total filtration
    gives typical HVLs of 2.5-3.5 mm Al."""
    e, f = spectrum(80.0, 2.5, model="tasmip")
    assert 2.3 <= half_value_layer(e, f) <= 3.5
    e, f = spectrum(80.0, 3.5, model="tasmip")
    assert 2.9 <= half_value_layer(e, f) <= 3.6
    # The definition: behind one HVL of aluminium the air kerma halves.
    hvl = half_value_layer(e, f)
    behind = spectra.filter_spectrum(f, "aluminium", hvl)
    kerma = materials.air_kerma_weights(e)
    assert (behind * kerma).sum() / (f * kerma).sum() == pytest.approx(0.5, abs=1e-6)


def test_filtration_and_kvp_harden_the_beam():
    means = [mean_energy(*spectrum(kv, 2.5, model="tasmip")) for kv in (60, 80, 100, 120)]
    assert np.all(np.diff(means) > 0)
    soft = mean_energy(*spectrum(80, 2.5, model="tasmip"))
    hard = mean_energy(*spectrum(80, 2.5, 0.2, model="tasmip"))
    assert hard > soft + 3.0  # 0.2 mm Cu removes the low energies


def test_spectrum_input_checks():
    with pytest.raises(ValueError, match="kvp must lie in"):
        spectrum(20.0)
    with pytest.raises(ValueError, match="TASMIP covers 30-140 kV"):
        spectrum(145.0, model="tasmip")
    with pytest.raises(ValueError, match="model must be one of"):
        spectrum(80.0, model="boone")
    with pytest.raises(ValueError, match="filtration_mm_al"):
        spectrum(80.0, -1.0)


@pytest.mark.slow
def test_spekpy_and_tasmip_agree():
    """SpekPy (the ``physics`` extra) and TASMIP with the same total filtration: mean
    energy within 2 keV and HVL within 10%; our Beer-Lambert filtration of SpekPy's raw
    spectrum matches SpekPy's own filter."""
    spekpy = pytest.importorskip("spekpy")
    for kvp in (70.0, 100.0):
        a = spectrum(kvp, 3.0, model="spekpy")
        b = spectrum(kvp, 3.0, model="tasmip")
        assert abs(mean_energy(*a) - mean_energy(*b)) < 2.0
        assert half_value_layer(*a) == pytest.approx(half_value_layer(*b), rel=0.1)
    s = spekpy.Spek(kvp=70.0, th=12.0)
    s.filter("Al", 3.0)
    assert mean_energy(*spectrum(70.0, 3.0, model="spekpy")) == pytest.approx(
        s.get_emean(), abs=0.5
    )
    assert half_value_layer(*spectrum(70.0, 3.0, model="spekpy")) == pytest.approx(
        s.get_hvl1(), rel=0.03
    )
