"""The radiograph simulator (x2ct.projector.radiograph, style, display)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from x2ct.projector import (
    DRR_SCALE,
    HU_BONE,
    HU_METAL,
    MU_WATER,
    REFERENCE_KEV,
    Geometry,
    RadiographStyle,
    decompose_hu,
    hu_to_mu,
    mass_attenuation,
    material_paths,
    project,
    simulate_radiograph,
    stack_views,
    view_vectors,
)

# Physics-only styles: a fixed spectrum model (fast, no optional package), linear display.
PLAIN = RadiographStyle(
    kvp=80.0, spectrum_model="tasmip", photons_per_mm2=None, spr_20cm=0.0, blur_mm=0.0,
    window=None, bits=16,
)


def slab(thickness_cm, bone_cm=0.0, shape=(1, 1, 32, 32), metal_cm=0.0):
    """(B, 3, V, H, W) paths of a uniform slab: water, cortical bone and titanium."""
    paths = torch.zeros(*shape[:1], 3, *shape[1:], dtype=torch.float64)
    paths[:, 0] = thickness_cm * 1.0
    paths[:, 1] = bone_cm * 1.92
    paths[:, 2] = metal_cm * 4.54
    return paths


def transmission(style, thickness_cm, bone_cm=0.0):
    r = simulate_radiograph(slab(thickness_cm, bone_cm), (0.5, 0.5), style)
    return float(r.primary.mean())


def test_monochromatic_water_slab_is_beer_lambert():
    style = dataclasses.replace(PLAIN, kvp=None, mono_kev=60.0)
    for t in (1.0, 10.0, 30.0):
        # NISTIR 5632: water at 60 keV, mu/rho = 0.2059 cm^2/g, 1 g/cm^3.
        assert transmission(style, t) == pytest.approx(math.exp(-0.2059 * t), rel=1e-9)
    r = simulate_radiograph(slab(10.0), (0.5, 0.5), style)
    assert torch.allclose(r.line_integral, torch.full_like(r.line_integral, 2.059))


def test_beam_hardening_lowers_effective_attenuation_with_thickness():
    t = np.array([1.0, 5.0, 10.0, 20.0, 30.0])
    mu_eff = np.array([-math.log(transmission(PLAIN, x)) / x for x in t])
    assert np.all(np.diff(mu_eff) < 0)
    assert mu_eff[0] > 1.15 * mu_eff[-1]


def test_bone_contrast_falls_with_kvp():
    contrast = []
    for kvp in (60.0, 90.0, 120.0):
        style = dataclasses.replace(PLAIN, kvp=kvp)
        contrast.append(transmission(style, 20.0, 1.0) / transmission(style, 20.0))
    assert contrast[0] < contrast[1] < contrast[2] < 1.0


def test_scatter_to_primary_ratio_grows_with_thickness():
    style = dataclasses.replace(PLAIN, spr_20cm=0.5, scatter_sigma_mm=30.0)
    spr = []
    for t in (5.0, 10.0, 20.0, 30.0):
        r = simulate_radiograph(slab(t, shape=(1, 1, 48, 48)), (4.0, 4.0), style)
        centre = (slice(None), slice(None), slice(20, 28), slice(20, 28))
        spr.append(float(((r.intensity - r.primary) / r.primary)[centre].mean()))
    assert np.all(np.diff(spr) > 0)
    assert spr[2] == pytest.approx(0.5, rel=0.05)  # the style's SPR behind 20 cm of water


def test_quantum_noise_variance_scales_inversely_with_exposure():
    gen = torch.Generator().manual_seed(0)
    flat = torch.zeros(1, 3, 1, 128, 128, dtype=torch.float64)
    var = []
    for fluence in (1e4, 4e4):
        style = dataclasses.replace(PLAIN, photons_per_mm2=fluence)
        r = simulate_radiograph(flat, (0.5, 0.5), style, gen)
        assert float(r.intensity.mean()) == pytest.approx(1.0, abs=0.01)
        var.append(float(r.intensity.var()))
    assert var[0] / var[1] == pytest.approx(4.0, rel=0.1)


def test_noise_is_deterministic_per_generator():
    style = dataclasses.replace(PLAIN, photons_per_mm2=1e5, electronic_noise=2.0)
    a = simulate_radiograph(slab(10.0), (0.5, 0.5), style, torch.Generator().manual_seed(3))
    b = simulate_radiograph(slab(10.0), (0.5, 0.5), style, torch.Generator().manual_seed(3))
    c = simulate_radiograph(slab(10.0), (0.5, 0.5), style, torch.Generator().manual_seed(4))
    assert torch.equal(a.intensity, b.intensity) and not torch.equal(a.intensity, c.intensity)


def edge_profile(style, spacing=0.1, width=256):
    paths = torch.zeros(1, 3, 1, 8, width, dtype=torch.float64)
    paths[..., width // 2 :] = 5.0  # 5 g/cm^2 of water on the right half
    r = simulate_radiograph(paths, (spacing, spacing), style)
    return r, r.intensity[0, 0, 4].numpy()


def test_blur_preserves_mean_and_widens_edge_by_its_width():
    sharp, p0 = edge_profile(PLAIN)
    sigma = 0.5  # mm
    blurred, p1 = edge_profile(dataclasses.replace(PLAIN, blur_mm=sigma))
    assert float(blurred.intensity.mean()) == pytest.approx(float(sharp.intensity.mean()),
                                                            rel=1e-4)
    assert np.ptp(p0[:100]) == 0  # the unblurred edge is a step

    def width_10_90(p):
        hi, lo = p[0], p[-1]
        x = np.arange(len(p)) * 0.1
        frac = (hi - p) / (hi - lo)  # rises 0 -> 1 across the edge
        return np.interp(0.9, frac, x) - np.interp(0.1, frac, x)

    # A Gaussian edge spread function rises from 10% to 90% over 2.563 sigma.
    assert width_10_90(p1) == pytest.approx(2.563 * sigma, rel=0.05)
    lor, p2 = edge_profile(dataclasses.replace(PLAIN, blur_mm=sigma, blur_kind="lorentzian"))
    assert float(lor.intensity.mean()) == pytest.approx(float(sharp.intensity.mean()), rel=1e-3)
    # Long tails: 3 mm from the edge the Lorentzian PSF still blurs, the Gaussian does not.
    far = 128 - 30
    assert abs(p2[far] - p0[far]) > 10 * abs(p1[far] - p0[far])


def test_heel_effect_tilts_the_field_along_rows():
    style = dataclasses.replace(PLAIN, heel=0.2)
    r = simulate_radiograph(torch.zeros(1, 3, 1, 64, 8), (1.0, 1.0), style)
    col = r.intensity[0, 0, :, 0]
    assert float(col[-1] / col[0]) == pytest.approx(1.1 / 0.9, rel=1e-3)
    assert float(r.intensity.mean()) == pytest.approx(1.0, abs=1e-6)


def ramp_paths(h=64, w=64):
    """Water thickness rising along columns and rows: a spread of line integrals."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    paths = torch.zeros(1, 3, 1, h, w)
    paths[0, 0, 0] = 30.0 * x + 5.0 * y
    paths[0, 1, 0] = 2.0 * y * x
    return paths


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_display_is_monotone_in_line_integral_and_quantised(bits):
    lut = (0.0, 0.05, 0.3, 0.35, 0.8, 1.0)
    style = RadiographStyle(kvp=90.0, spectrum_model="tasmip", photons_per_mm2=None,
                            spr_20cm=0.3, blur_mm=0.2, gamma=0.7, sigmoid=4.0, lut=lut,
                            window=(1.0, 99.0), bits=bits)
    r = simulate_radiograph(ramp_paths(), (0.5, 0.5), style)
    line = r.line_integral.flatten()
    display = r.display.flatten()
    order = torch.argsort(line)
    assert torch.all(torch.diff(display[order]) >= 0)
    assert torch.equal(display, torch.round(display))
    assert float(display.min()) == 0 and float(display.max()) == 2**bits - 1
    # Higher line integral (more attenuation) is brighter in MONOCHROME2.
    assert float(display[line.argmax()]) > float(display[line.argmin()])


def test_monochrome1_inverts():
    style = RadiographStyle(kvp=90.0, spectrum_model="tasmip", photons_per_mm2=None,
                            window=(0.5, 99.5), bits=12, collimation=(0.1, 0.0, 0.0, 0.2))
    m2 = simulate_radiograph(ramp_paths(), (0.5, 0.5), style).display
    m1 = simulate_radiograph(ramp_paths(), (0.5, 0.5),
                             dataclasses.replace(style, invert=True)).display
    assert torch.equal(m1, 4095 - m2)
    # The collimated bands are white when shown (MONOCHROME2 max, MONOCHROME1 0).
    assert torch.all(m2[..., :6, :] == 4095) and torch.all(m2[..., -13:] == 4095)
    assert torch.all(m1[..., :6, :] == 0)


def test_unsharp_mask_raises_local_contrast():
    paths = torch.zeros(1, 3, 1, 64, 64)
    paths[:, 0] = 15.0
    paths[:, 1, :, 24:40, 24:40] = 0.2  # a faint bone square in soft tissue
    base = RadiographStyle(kvp=80.0, spectrum_model="tasmip", photons_per_mm2=None,
                           window=None, bits=16)
    plain = simulate_radiograph(paths, (1.0, 1.0), base).display[0, 0]
    sharp = simulate_radiograph(paths, (1.0, 1.0),
                                dataclasses.replace(base, enhancement=((1.0, 4.0),))).display
    edge_plain = float(plain[32, 25] - plain[32, 22])
    edge_sharp = float(sharp[0, 0, 32, 25] - sharp[0, 0, 32, 22])
    assert edge_sharp > 1.2 * edge_plain


def test_markers_are_burned_in_white():
    style = RadiographStyle(kvp=80.0, spectrum_model="tasmip", photons_per_mm2=None,
                            window=(2.0, 98.0), bits=8, marker_seed=7)
    plain = simulate_radiograph(ramp_paths(128, 128), (1.0, 1.0),
                                dataclasses.replace(style, marker_seed=None)).display
    marked = simulate_radiograph(ramp_paths(128, 128), (1.0, 1.0), style).display
    changed = marked != plain
    assert int(changed.sum()) > 20
    assert torch.all((marked[changed] == 255) | (marked[changed] == 0))


def test_decompose_hu_reproduces_mono_attenuation():
    hu = torch.tensor([-1200.0, -1000.0, -700.0, -100.0, 0.0, 40.0, 400.0, 1000.0,
                       HU_BONE, 2500.0, HU_METAL, 3071.0], dtype=torch.float64)
    rho = decompose_hu(hu.view(1, 1, -1, 1, 1))[0, :, :, 0, 0]  # (3, n)
    assert torch.all(rho >= 0)

    def mu(kev):  # 1/mm
        mu_rho = [mass_attenuation(m, [kev])[0] for m in ("water", "cortical_bone",
                                                           "titanium")]
        return (torch.tensor(mu_rho, dtype=torch.float64)[:, None] * rho).sum(0) / 10.0

    # Exact at the reference energy (where water has MU_WATER) for every tissue and metal.
    torch.testing.assert_close(mu(REFERENCE_KEV), hu_to_mu(hu), rtol=1e-9, atol=1e-12)
    # At 70 keV within a few % of x2ct's mono model for air to soft tissue.
    soft = (hu > -1000) & (hu <= 100)
    rel = (mu(70.0)[soft] - hu_to_mu(hu)[soft]) / hu_to_mu(hu)[soft]
    assert torch.all(rel.abs() < 0.05)
    # Water is 1 g/cm^3 of the soft basis; ICRU-44 cortical bone at HU_BONE; metal Ti.
    assert rho[:, 4].tolist() == [1.0, 0.0, 0.0]
    assert rho[1, 8] == pytest.approx(1.92) and rho[0, 8] == pytest.approx(0.0, abs=1e-12)
    assert rho[2, 10] > 0 and rho[0, 10] == 0 and rho[1, 10] == 0
    assert 1500 < HU_BONE < 1900


def test_ideal_style_is_the_drr():
    gen = torch.Generator().manual_seed(1)
    hu = -1000 + 1500 * torch.rand(2, 1, 20, 18, 16, generator=gen)
    hu[0, 0, 8:12, 8:12, 4:12] = 1500.0  # bone
    hu[1, 0, 9:11, 9:11, 6:10] = 3071.0  # a saturated implant
    spacing = (2.0, 2.0, 2.0)
    geometry = Geometry.fit(hu.shape[2:], spacing, (24, 20))
    paths = material_paths(hu, view_vectors(geometry), geometry.detector_shape, spacing)
    assert paths.shape == (2, 3, 2, 24, 20) and float(paths[1, 2].max()) > 0
    r = simulate_radiograph(paths, geometry.pixel_spacing, RadiographStyle.ideal())
    drr = project(hu_to_mu(hu), geometry, spacing)
    torch.testing.assert_close(r.line_integral, drr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r.primary, torch.exp(-drr), rtol=1e-5, atol=1e-6)
    # Its 16-bit display is x2ct's DRR PNG convention, round(clip(drr / 8, 0, 1) * 65535).
    expect = torch.round(torch.clamp(drr / DRR_SCALE, 0, 1) * 65535)
    assert float((r.display - expect).abs().max()) <= 1.0
    assert MU_WATER == 0.02


def test_material_paths_per_case_views():
    hu = torch.full((2, 1, 16, 16, 16), -1000.0)
    hu[:, :, 4:12, 4:12, 4:12] = 0.0  # 8 voxels of water
    near = Geometry(sad=500.0, sdd=900.0, detector_shape=(8, 8), pixel_spacing=(1.0, 1.0),
                    angles=(0.0, 90.0), parallel=False)
    views = torch.stack([stack_views([near]), stack_views([near.split()[1], near.split()[0]])])
    paths = material_paths(hu, views, (8, 8), (1.0, 1.0, 1.0))
    # Case 1's views are case 0's, swapped; the cube is symmetric, so both match.
    torch.testing.assert_close(paths[1, :, 0], paths[0, :, 1])
    # A central ray crosses 8 mm (0.8 g/cm^2) of water, give or take the trilinear edges.
    assert float(paths[0, 0, 0, 3:5, 3:5].mean()) == pytest.approx(0.8, rel=0.15)


def test_styles_per_view_and_per_case():
    paths = slab(10.0, shape=(2, 2, 8, 8))
    a = dataclasses.replace(PLAIN, kvp=60.0)
    b = dataclasses.replace(PLAIN, kvp=120.0)
    per_view = simulate_radiograph(paths, (1.0, 1.0), [a, b])
    assert float(per_view.primary[0, 0].mean()) < float(per_view.primary[0, 1].mean())
    per_case = simulate_radiograph(paths, (1.0, 1.0), [[a, a], [b, b]])
    torch.testing.assert_close(per_case.primary[0, 0], per_view.primary[1, 0])
    torch.testing.assert_close(per_case.primary[1, 1], per_view.primary[0, 1])
    with pytest.raises(ValueError, match="one per view"):
        simulate_radiograph(paths, (1.0, 1.0), [a, b, a])


def test_style_sampling_is_deterministic_and_in_range():
    draw = [RadiographStyle.sample(torch.Generator().manual_seed(s), "ap") for s in range(40)]
    again = [RadiographStyle.sample(torch.Generator().manual_seed(s), "ap") for s in range(40)]
    assert draw == again
    assert len(set(draw)) == 40
    for st in draw:
        assert 65 <= st.kvp <= 105 and st.kvp == round(st.kvp)
        assert 2.5 <= st.filtration_mm_al <= 4.5 and 0 <= st.filtration_mm_cu <= 0.3
        assert 3e5 <= st.photons_per_mm2 <= 5e7
        assert 0.15 <= st.spr_20cm <= 3.5 and abs(st.heel) <= 0.25
        assert st.bits in (8, 12, 16) and 0.6 <= st.gamma <= 1.7
        assert 0 <= st.window[0] <= 3 and 97 <= st.window[1] <= 100
    assert any(st.invert for st in draw) and not all(st.invert for st in draw)
    assert any(st.marker_seed is not None for st in draw)
    lateral = RadiographStyle.sample(torch.Generator().manual_seed(0), "lateral")
    assert 75 <= lateral.kvp <= 115


def test_sampled_styles_run_end_to_end():
    gen = torch.Generator().manual_seed(0)
    styles = [[dataclasses.replace(RadiographStyle.sample(gen, v), spectrum_model="tasmip")
               for v in ("ap", "lateral")] for _ in range(2)]
    r = simulate_radiograph(ramp_paths().expand(2, 3, 2, 64, 64), (2.0, 2.0), styles, gen)
    for field in ("primary", "intensity", "line_integral", "display"):
        assert getattr(r, field).shape == (2, 2, 64, 64)
        assert bool(torch.isfinite(getattr(r, field)).all())
    top = torch.tensor([[st.max_value for st in row] for row in styles])[..., None, None]
    assert torch.all(r.display >= 0) and torch.all(r.display <= top)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="RadiographStyle.bits must be 8, 12 or 16"):
        RadiographStyle(bits=10)
    with pytest.raises(ValueError, match="RadiographStyle.kvp"):
        RadiographStyle(kvp=200.0)
    with pytest.raises(ValueError, match="RadiographStyle.lut"):
        RadiographStyle(lut=(0.0, 0.6, 0.5, 1.0))
    with pytest.raises(ValueError, match="RadiographStyle.collimation"):
        RadiographStyle(collimation=(0.5, 0.5, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"paths must be \(B, 3, V, H, W\)"):
        simulate_radiograph(torch.zeros(1, 2, 1, 4, 4), (1.0, 1.0))
    with pytest.raises(ValueError, match="pixel_spacing"):
        simulate_radiograph(torch.zeros(1, 3, 1, 4, 4), (1.0, -1.0))
    with pytest.raises(ValueError, match=r"hu must be a \(B, 1, X, Y, Z\)"):
        decompose_hu(torch.zeros(4, 4, 4))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    style = RadiographStyle(kvp=80.0, spectrum_model="tasmip", photons_per_mm2=None,
                            spr_20cm=0.4, blur_mm=0.3, enhancement=((0.5, 5.0),), bits=12)
    paths = ramp_paths()
    cpu = simulate_radiograph(paths, (0.5, 0.5), style)
    gpu = simulate_radiograph(paths.cuda(), (0.5, 0.5), style)
    torch.testing.assert_close(gpu.line_integral.cpu(), cpu.line_integral, rtol=1e-4,
                               atol=1e-4)
    assert float((gpu.display.cpu() - cpu.display).abs().max()) <= 1.0
