"""x2ct.eval.metrics, each metric against an independent oracle (scikit-image, a NumPy
formula, a brute-force count or an analytic value)."""

import builtins
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from x2ct.eval import metrics
from x2ct.eval.metrics import (
    SliceFID,
    bone_dice,
    case_metrics,
    dice,
    dilate_mm,
    frechet_distance,
    load_feature_network,
    load_lpips,
    lpips_2d,
    plane_slices,
    projection_error,
    psnr_2d_mean,
    psnr_3d,
    spine_region,
    ssim3d,
    ssim_2d_mean,
    ssim_3d,
    vertebra_dice,
)

SHAPE = (13, 14, 15)  # odd, unequal sizes catch axis mix-ups; >= 11 for the SSIM window


def pair(shape=SHAPE, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(shape)
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    return a, b


def centre_box(shape=SHAPE, half=(3, 4, 5)):
    m = np.zeros(shape, bool)
    c = [n // 2 for n in shape]
    m[tuple(slice(ci - h, ci + h + 1) for ci, h in zip(c, half))] = True
    return m


# --------------------------------------------------------------------------- PSNR
def test_psnr_3d_whole_and_masked():
    a, b = pair()
    assert psnr_3d(b, a) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0))
    mask = centre_box()
    ref = 10 * math.log10(1.0 / np.mean((a[mask] - b[mask]) ** 2))
    assert psnr_3d(b, a, 1.0, mask) == pytest.approx(ref, abs=1e-9)
    assert psnr_3d(torch.tensor(b)[None, None], torch.tensor(a)[None, None], 1.0,
                   torch.tensor(mask)) == pytest.approx(ref, abs=1e-9)
    assert math.isnan(psnr_3d(b, a, 1.0, np.zeros(SHAPE, bool)))


def test_psnr_2d_mean_is_the_x2ct_gan_slice_mean():
    a, b = pair()
    per_axis = []
    for axis in range(3):
        sa, sb = np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)
        per_axis.append(np.mean([peak_signal_noise_ratio(x, y, data_range=1.0)
                                 for x, y in zip(sa, sb)]))
    assert psnr_2d_mean(b, a) == pytest.approx(np.mean(per_axis), abs=1e-9)
    # a slice matching exactly counts as 100 dB (X2CT-GAN), not inf
    c = b.copy()
    c[0] = a[0]
    assert math.isfinite(psnr_2d_mean(c, a))
    x0 = np.mean([100.0] + [peak_signal_noise_ratio(x, y, data_range=1.0)
                            for x, y in zip(a[1:], c[1:])])
    assert psnr_2d_mean(c, a) > psnr_2d_mean(b, a)
    rest = [np.mean([peak_signal_noise_ratio(x, y, data_range=1.0, )
                     for x, y in zip(np.moveaxis(a, ax, 0), np.moveaxis(c, ax, 0))])
            for ax in (1, 2)]
    assert psnr_2d_mean(c, a) == pytest.approx((x0 + sum(rest)) / 3, abs=1e-9)


# --------------------------------------------------------------------------- SSIM
def test_ssim_3d_masked_matches_skimage_map():
    a, b = pair(noise=0.2, seed=3)
    _, full = structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0, full=True)
    r = 5  # (11 - 1) / 2: the valid region skimage averages over
    crop = (slice(r, -r),) * 3
    assert ssim_3d(b, a) == pytest.approx(full[crop].mean(), abs=1e-5)
    assert ssim_3d(b, a) == pytest.approx(ssim3d(b, a, 1.0))
    mask = centre_box(half=(2, 1, 3))
    assert ssim_3d(b, a, 1.0, mask) == pytest.approx(full[crop][mask[crop]].mean(), abs=1e-5)
    border = np.zeros(SHAPE, bool)
    border[0] = True  # outside the valid region: no SSIM value
    assert math.isnan(ssim_3d(b, a, 1.0, border))


@pytest.mark.parametrize("kernel,win", [("gaussian", 11), ("uniform", 7)])
def test_ssim_2d_mean_matches_skimage_per_slice(kernel, win):
    a, b = pair(noise=0.2, seed=1)
    kw = dict(gaussian_weights=True, sigma=1.5) if kernel == "gaussian" else dict(win_size=win)
    per_axis = [
        np.mean([structural_similarity(x, y, data_range=1.0, use_sample_covariance=False, **kw)
                 for x, y in zip(np.moveaxis(b, ax, 0), np.moveaxis(a, ax, 0))])
        for ax in range(3)
    ]
    assert ssim_2d_mean(b, a, 1.0, win_size=win, kernel=kernel) == pytest.approx(
        np.mean(per_axis), abs=1e-5)


def test_identical_inputs_give_inf_psnr_and_unit_ssim():
    a, _ = pair()
    assert psnr_3d(a, a) == float("inf")
    assert psnr_3d(a, a, 1.0, centre_box()) == float("inf")
    assert psnr_2d_mean(a, a) == float("inf")
    assert ssim_3d(a, a) == pytest.approx(1.0, abs=1e-6)
    assert ssim_3d(a, a, 1.0, centre_box()) == pytest.approx(1.0, abs=1e-6)
    assert ssim_2d_mean(a, a) == pytest.approx(1.0, abs=1e-6)
    hu = a * 3000 - 1000
    m = case_metrics(hu, hu, (2.0, 2.0, 2.0))
    for k in ("psnr_3d", "psnr_2d_mean", "psnr_3d_spine"):
        assert m[k] == float("inf")
    for k in ("ssim_3d", "ssim_2d_mean", "ssim_3d_spine", "dice_bone"):
        assert m[k] == pytest.approx(1.0, abs=1e-6)
    assert m["mae_hu"] == 0.0 and m["mae_hu_spine"] == 0.0


# --------------------------------------------------------------------------- regions, Dice
def test_dilate_mm_is_a_spacing_aware_ball():
    shape, spacing, radius = (15, 13, 11), (1.0, 2.0, 3.0), 5.0
    seed = np.zeros(shape, bool)
    seed[7, 6, 5] = True
    out = dilate_mm(seed, spacing, radius)
    # brute force: voxels whose centre is within 5 mm of the seed's centre
    idx = np.indices(shape)
    d2 = sum(((idx[i] - c) * s) ** 2 for i, (c, s) in enumerate(zip((7, 6, 5), spacing)))
    np.testing.assert_array_equal(out, d2 <= radius**2)
    # lattice points of the ellipsoid: x in [-5, 5], |y| <= 2, |z| <= 1, counted by hand
    assert out.sum() == sum(
        1 for x in range(-5, 6) for y in range(-2, 3) for z in range(-1, 2)
        if x * x + 4 * y * y + 9 * z * z <= 25
    )
    assert not dilate_mm(np.zeros(shape, bool), spacing, radius).any()


def test_spine_region_prefers_vertebra_labels_over_bone():
    shape = (20, 20, 20)
    hu = np.full(shape, -1000.0)
    hu[2:4, 2:4, 2:4] = 1000.0  # bone that is not spine (a rib, say)
    labels = np.zeros(shape, np.int16)
    labels[10, 10, 10] = 22  # L3
    labels[10, 10, 14] = 100  # a disc: not a vertebra
    region = spine_region(hu, (2.0, 2.0, 2.0), labels, margin_mm=2.0)
    expect = np.zeros(shape, bool)
    expect[10, 10, 10] = True
    for d in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        for s in (1, -1):
            expect[10 + s * d[0], 10 + s * d[1], 10 + s * d[2]] = True
    np.testing.assert_array_equal(region, expect)
    # without labels (or with labels holding no vertebra) the bone is the core
    np.testing.assert_array_equal(spine_region(hu, (2.0,) * 3, None, margin_mm=0.0), hu >= 250)
    np.testing.assert_array_equal(spine_region(hu, (2.0,) * 3, labels * 0, margin_mm=0.0),
                                  hu >= 250)


def test_dice_of_boxes_is_analytic():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[0:4, 0:5, 0:6] = True  # 120 voxels
    b[2:6, 0:5, 0:6] = True  # 120 voxels, overlap 2*5*6 = 60
    assert dice(a, b) == pytest.approx(2 * 60 / 240)
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    hu_a, hu_b = np.where(a, 700.0, -1000.0), np.where(b, 251.0, 249.0)
    assert bone_dice(hu_b, hu_a) == pytest.approx(0.5)


def test_vertebra_dice_per_level():
    shape = (12, 12, 12)
    labels = np.zeros(shape, np.int16)
    labels[:, :, 0:4] = 20  # L1
    labels[:, :, 4:6] = 100  # disc
    labels[:, :, 6:10] = 21  # L2
    labels[:, :, 10:12] = 19  # T12: no bone in the truth there, so left out
    target = np.full(shape, -1000.0)
    target[2:6, 2:6, :10] = 800.0  # a bone column through L1, the disc and L2
    pred = np.full(shape, -1000.0)
    pred[2:6, 4:8, 0:4] = 800.0  # L1: shifted, overlap half
    pred[2:6, 2:6, 6:10] = 800.0  # L2: exact
    pred[0, 0, 10:12] = 900.0  # T12: bone where the truth has none
    d = vertebra_dice(pred, target, labels)
    assert set(d) == {20, 21}
    assert d[20] == pytest.approx(0.5) and d[21] == pytest.approx(1.0)
    m = case_metrics(pred, target, (2.0, 2.0, 2.0), labels=labels)
    assert m["dice_L1"] == pytest.approx(0.5) and m["dice_L2"] == pytest.approx(1.0)
    assert m["dice_vertebra_mean"] == pytest.approx(0.75)
    assert "dice_T12" not in m


# --------------------------------------------------------------------------- projection
def test_projection_error_against_the_projector():
    from x2ct.data import default_geometry
    from x2ct.projector import DRR_SCALE, hu_to_mu, project

    shape, spacing = (12, 12, 12), (4.0, 4.0, 4.0)
    geometry = default_geometry(shape, spacing)
    rng = np.random.default_rng(0)
    hu = (rng.random(shape) * 2000 - 1000).astype(np.float32)
    # an independent path: HU -> mu -> line integrals, normalised
    drr = project(hu_to_mu(torch.from_numpy(hu))[None, None], geometry, spacing, 0.5)[0]
    drr = drr.double() / DRR_SCALE
    err, rel = projection_error(hu, drr, geometry, spacing)
    assert err == pytest.approx(0.0, abs=1e-6) and rel == pytest.approx(0.0, abs=1e-6)
    err, rel = projection_error(hu, 2 * drr, geometry, spacing)
    assert err == pytest.approx(float(drr.abs().mean()), rel=1e-5)
    assert rel == pytest.approx(0.5, rel=1e-5)
    m = case_metrics(hu, hu, spacing, xrays=2 * drr, geometry=geometry)
    assert m["projection_error_rel"] == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(ValueError):
        projection_error(hu, drr[:, :5], geometry, spacing)


# --------------------------------------------------------------------------- LPIPS
class StandIn(torch.nn.Module):
    """An LPIPS stand-in: the mean squared difference of each image pair; records its inputs."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, a, b):
        self.seen.append((tuple(a.shape), float(a.min()), float(a.max())))
        return ((a - b) ** 2).mean(dim=(1, 2, 3), keepdim=True) * self.w


def test_lpips_plumbing_with_a_stand_in_network():
    a, b = pair()
    net = StandIn()
    got = lpips_2d(b, a, net, max_slices=4, batch_size=3)
    # oracle: 4 evenly spaced inner slices per axis in NumPy, MSE in [-1, 1] units
    per_plane = []
    for ax in range(3):
        n = SHAPE[ax]
        idx = np.unique(np.linspace(0, n - 1, 6)[1:-1].round().astype(int))
        sa, sb = np.take(a, idx, axis=ax), np.take(b, idx, axis=ax)
        diff = (2 * sb - 2 * sa) ** 2
        per_plane.append(np.mean(np.moveaxis(diff, ax, 0).reshape(len(idx), -1).mean(1)))
    assert got == pytest.approx(np.mean(per_plane), rel=1e-6)
    shapes = [s for s, lo, hi in net.seen]
    assert all(s[1] == 3 for s in shapes) and max(s[0] for s in shapes) <= 3
    assert all(lo >= -1 and hi <= 1 for _, lo, hi in net.seen)
    m = case_metrics(b * 3000 - 1000, a * 3000 - 1000, (2.0,) * 3, lpips_net=net, lpips_slices=4)
    assert m["lpips"] == pytest.approx(got, rel=1e-6)


def test_missing_lpips_is_reported(monkeypatch):
    real_import = builtins.__import__

    def no_lpips(name, *args, **kwargs):
        if name == "lpips":
            raise ImportError("No module named 'lpips'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lpips)
    net, reason = load_lpips()
    assert net is None and "LPIPS left out" in reason and "pip install lpips" in reason


# --------------------------------------------------------------------------- FID
def frechet_numpy(x, y):
    """Frechet distance by eigendecompositions: Tr (S1 S2)^(1/2) = sum sqrt(eig(A S2 A)),
    A = S1^(1/2) (symmetric), independent of scipy.linalg.sqrtm."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(a @ s2 @ a)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def test_frechet_distance_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    y = rng.standard_normal((150, 6)) * 1.5 + 0.3
    assert frechet_distance(x, y) == pytest.approx(frechet_numpy(x, y), rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # a shifted copy: the covariances agree, so FID = |shift|^2
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert frechet_distance(x + shift, x) == pytest.approx((shift**2).sum(), rel=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(x[:1], y[:1])


class TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 5, 3)

    def forward(self, x):  # (N, 1, H, W) -> (N, 5, H-2, W-2): averaged by SliceFID
        return torch.tanh(self.conv(x))


def test_slice_fid_plumbing_with_a_tiny_torchscript_network(tmp_path):
    path = tmp_path / "features.pt"
    torch.jit.script(TinyFeatures()).save(str(path))
    net, reason = load_feature_network(str(path))
    assert reason == "ok"
    reference_net = TinyFeatures()
    fid = SliceFID(net, max_slices=3)
    feats_p, feats_t = [], []
    for seed in range(3):
        a, b = pair(seed=seed)
        fid.update(b, a)
        for vol, store in ((b, feats_p), (a, feats_t)):
            for ax in range(3):
                idx = np.unique(np.linspace(0, SHAPE[ax] - 1, 5)[1:-1].round().astype(int))
                s = torch.from_numpy(np.moveaxis(np.take(vol, idx, axis=ax), ax, 0).copy())
                with torch.no_grad():
                    store.append(reference_net(s[:, None].float()).mean(dim=(2, 3)).double())
    assert len(fid) == 3 * 3 * 3
    ref = frechet_numpy(torch.cat(feats_p).numpy(), torch.cat(feats_t).numpy())
    assert fid.compute() == pytest.approx(ref, rel=1e-4, abs=1e-8)


def test_unloadable_feature_networks_are_reported(tmp_path):
    net, reason = load_feature_network(str(tmp_path / "missing.pt"))
    assert net is None and "FID left out" in reason
    (tmp_path / "junk.pt").write_text("not a module")
    net, reason = load_feature_network(str(tmp_path / "junk.pt"))
    assert net is None and "TorchScript" in reason
    try:
        import torchvision  # noqa: F401
    except ImportError:
        net, reason = load_feature_network("inception")
        assert net is None and "FID left out" in reason and "Inception" in reason


def test_plane_slices_shapes():
    a, _ = pair()
    x, y, z = plane_slices(a)
    assert x.shape == (13, 14, 15) and y.shape == (14, 13, 15) and z.shape == (15, 13, 14)
    x, y, z = plane_slices(a, 4)
    assert x.shape == (4, 14, 15) and z.shape == (4, 13, 14)
    np.testing.assert_allclose(y[0].numpy(), a[:, 3, :], rtol=1e-6)  # linspace(0,13,6)[1]=2.6


def test_case_metrics_keys_and_spine_numbers():
    from x2ct.data import spine_phantom

    ph = spine_phantom((24, 24, 24), (4.0, 4.0, 4.0), seed=1)
    rng = np.random.default_rng(0)
    hu = ph.hu.astype(np.float64)
    pred = hu + 80 * rng.standard_normal(hu.shape)
    m = case_metrics(pred, hu, (4.0,) * 3, labels=ph.labels)
    for k in ("mae_hu", "psnr_3d", "ssim_3d", "psnr_2d_mean", "ssim_2d_mean", "mae_hu_spine",
              "psnr_3d_spine", "ssim_3d_spine", "dice_bone", "dice_vertebra_mean"):
        assert math.isfinite(m[k]), k
    region = spine_region(hu, (4.0,) * 3, ph.labels)
    lo, hi = metrics.HU_WINDOW
    p01 = (np.clip(pred, lo, hi) - lo) / (hi - lo)
    t01 = (np.clip(hu, lo, hi) - lo) / (hi - lo)
    assert m["psnr_3d_spine"] == pytest.approx(
        10 * np.log10(1 / np.mean((p01[region] - t01[region]) ** 2)), abs=1e-9)
    assert m["mae_hu_spine"] == pytest.approx(
        np.abs(np.clip(pred, lo, hi) - np.clip(hu, lo, hi))[region].mean(), rel=1e-9)
    assert any(k.startswith("dice_L") for k in m)
