"""eval/metrics.py against scikit-image and numpy formulas."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from x2ct.eval.metrics import ct_metrics, mae_hu, psnr, ssim3d, unit_metrics


def pair(shape=(20, 22, 24), noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    return a, b


def test_psnr_matches_skimage_and_formula():
    a, b = pair()
    ours = psnr(b, a, data_range=1.0)
    assert ours == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)
    assert ours == pytest.approx(10 * math.log10(1.0 / np.mean((a - b) ** 2)), abs=1e-9)
    # data_range scales as 20 log10
    assert psnr(2 * b, 2 * a, data_range=2.0) == pytest.approx(ours, abs=1e-9)
    # torch tensors with batch and channel axes give the same number
    assert psnr(torch.tensor(b)[None, None], torch.tensor(a)[None, None], 1.0) == pytest.approx(
        ours
    )


def test_ssim_matches_skimage_3d():
    for noise, seed in [(0.05, 0), (0.3, 1)]:
        a, b = pair(noise=noise, seed=seed)
        ref = structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        assert ssim3d(b, a, data_range=1.0) == pytest.approx(ref, abs=1e-5)


def test_identical_inputs():
    a, _ = pair()
    assert psnr(a, a, 1.0) == float("inf")
    assert ssim3d(a, a, 1.0) == pytest.approx(1.0, abs=1e-6)
    assert mae_hu(a, a) == 0.0


def test_mae_and_shape_errors():
    a, b = pair()
    assert mae_hu(b * 3000, a * 3000) == pytest.approx(np.mean(np.abs(b - a)) * 3000)
    with pytest.raises(ValueError):
        psnr(a, a[:-1], 1.0)
    with pytest.raises(ValueError):
        ssim3d(a[:8, :8, :8], a[:8, :8, :8], 1.0)  # smaller than the 11^3 window


def test_ct_metrics_window():
    a, b = pair()
    hu_t, hu_p = a * 3000 - 1000, b * 3000 - 1000
    m = ct_metrics(hu_p, hu_t)
    assert m["psnr"] == pytest.approx(psnr(b, a, 1.0))
    assert m["ssim"] == pytest.approx(ssim3d(b, a, 1.0))
    assert m["mae_hu"] == pytest.approx(mae_hu(hu_p, hu_t))
    # values outside [-1000, 2000] are clipped before scoring
    wild = hu_p.copy()
    wild[hu_p >= 1999] = 5000.0
    wild[hu_p <= -999] = -3000.0
    assert ct_metrics(wild, hu_t) == pytest.approx(m)
    # the [-1, 1] helper agrees with the HU one
    assert unit_metrics(b * 2 - 1, a * 2 - 1) == pytest.approx(m)
