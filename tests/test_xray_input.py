"""Radiograph-facing inputs of the model: rank normalisation, display-curve calibration,
background removal of whole-body residuals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from latent_helpers import tiny_reconstructor, xrays

from x2ct.diffusion.calibration import fit_display_curve, isotonic_map
from x2ct.diffusion.projection_loss import remove_background
from x2ct.diffusion.xray_input import network_input, rank_normalise


def _image(seed=0, shape=(2, 2, 24, 20)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 6.0


def test_rank_normalise_is_invariant_to_monotone_display_curves():
    x = _image()
    r = rank_normalise(x)
    assert float(r.min()) == 0.0 and float(r.max()) == 1.0
    for curve in (lambda v: 3.0 * v + 7.0, lambda v: torch.log1p(v), lambda v: v**0.7,
                  lambda v: 1.0 / (1.0 + torch.exp(-(v - 3.0)))):
        torch.testing.assert_close(rank_normalise(curve(x)), r)
    # a decreasing curve (MONOCHROME1 left uninverted) mirrors the ranks
    torch.testing.assert_close(rank_normalise(-x), 1.0 - r)


def test_rank_normalise_gives_ties_their_mean_rank():
    x = torch.tensor([[[[1.0, 2.0], [2.0, 5.0]]]])  # ranks 0, (1+2)/2, (1+2)/2, 3 of 3
    torch.testing.assert_close(rank_normalise(x), torch.tensor([[[[0.0, 0.5], [0.5, 1.0]]]]))
    # 8-bit quantisation keeps the order of what it does not merge
    x = _image(1)
    q = torch.round(x / x.max() * 255)
    r, rq = rank_normalise(x), rank_normalise(q)
    assert float((r - rq).abs().max()) < 0.02
    assert torch.equal(network_input(x, "drr"), x)
    with pytest.raises(ValueError, match="xray_input"):
        network_input(x, "percentile")


def test_isotonic_fit_recovers_a_display_curve():
    rng = np.random.default_rng(0)
    drr = rng.uniform(0.2, 6.0, 2000)  # line integrals
    display = np.round(255 * (1 - np.exp(-0.5 * drr)) ** 0.8)  # an 8-bit display curve
    fitted = isotonic_map(display, drr)
    assert np.all(np.diff(fitted[np.argsort(display, kind="stable")]) >= -1e-12)
    assert np.abs(fitted - drr).mean() < 0.02  # only quantisation is lost
    d = torch.from_numpy(display).reshape(1, 1, 40, 50)
    t = torch.from_numpy(drr).reshape(1, 1, 40, 50)
    torch.testing.assert_close(fit_display_curve(d, t), torch.from_numpy(fitted).reshape(t.shape))


def test_background_removal_drops_smooth_fields_and_keeps_edges():
    h, w = 32, 32
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    smooth = 0.5 + 0.02 * xx + 0.01 * yy  # a linear background
    assert float(remove_background(smooth[None], 4.0).abs().max()) < 1e-4
    edge = (xx > 16).double()
    hp = remove_background(edge[None], 4.0)
    assert float(hp.abs().max()) > 0.3  # an edge survives


def test_display_radiographs_need_a_rank_model_and_are_calibrated_for_guidance():
    from x2ct.diffusion import ProjectionGuidance

    drr_model = tiny_reconstructor()
    with pytest.raises(ValueError, match="xray_input='rank'"):
        drr_model(xrays(1), steps=2, intensity="display")
    recon = tiny_reconstructor(xray_input="rank")
    x = xrays(1)
    g = lambda: torch.Generator().manual_seed(0)
    a = recon(x, steps=3, generator=g())
    b = recon(255 * x**0.7, steps=3, generator=g(), intensity="display")
    torch.testing.assert_close(a.hu, b.hu)  # another display curve: the same ranks
    display = torch.round(255 * x**0.7)  # 8-bit
    out = recon(display, steps=3, generator=g(), intensity="display",
                projection_guidance=ProjectionGuidance(0.05, 2, 1))
    assert out.calibrated is not None and out.calibrated.shape == x.shape
    # the calibrated X-rays are an increasing function of the display values
    c, d = out.calibrated[0].flatten(1), display[0].flatten(1)
    for v in range(2):
        order = torch.argsort(d[v], stable=True)
        assert bool((torch.diff(c[v][order]) >= -1e-6).all())
