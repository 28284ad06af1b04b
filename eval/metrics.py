"""Metrics of a reconstructed CT against its ground truth, one case at a time.

Volumes are (X, Y, Z), (C, X, Y, Z) or (B, C, X, Y, Z) tensors or arrays. Intensity metrics
score HU clipped to a window (default [-1000, 2000] HU) mapped linearly to [0, 1]:

    psnr = 10 log10(data_range^2 / mean((pred - target)^2))    (inf for identical inputs)
    ssim: Wang et al. 2004, 11^n Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
          averaged over the valid (unpadded) region (MONAI compute_ssim_and_cs; matches
          skimage structural_similarity(gaussian_weights=True, sigma=1.5,
          use_sample_covariance=False)).

Names say what is averaged over what:

- ``psnr_3d``, ``ssim_3d``: over the volume (or a region of it, ``mask``).
- ``psnr_2d_mean``, ``ssim_2d_mean``: the slice-wise 2-D metric averaged over the slices
  along each axis, then over the three axes (axial, coronal, sagittal), as X2CT-GAN's
  evaluation code reports them (Ying et al. 2019, ``lib/utils/metrics_np.py``; there a
  slice whose MSE is zero counts as 100 dB). Its SSIM used scikit-image's defaults (7x7
  uniform window, sample covariance); ``ssim_2d_mean(..., win_size=7, kernel="uniform")``
  comes close to that (population covariance).
- ``*_spine``: inside the spine region (:func:`spine_region`: the vertebra mask, or the bone
  where there is no mask, dilated by 5 mm), where a surgeon looks; whole-volume numbers are
  dominated by air and soft tissue.
- ``dice_bone``: Dice of bone (HU >= 250) in prediction and truth; ``dice_<level>``:
  per vertebra, the bone inside that vertebra's mask (VerSe labels 1-26; discs, 100, are
  not vertebrae); ``dice_vertebra_mean`` their mean.
- ``projection_error``: mean |DRR(prediction) - input X-rays| in the networks' normalised
  X-ray units (line integral / xray_scale); ``projection_error_rel`` divides it by
  mean |X-rays|.
- ``lpips``: LPIPS (Zhang et al. 2018) over 2-D slices of the three planes, when the
  ``lpips`` package and its weights are at hand (:func:`load_lpips`).
- FID is a distance between sets, not a per-case number: :class:`SliceFID` collects slice
  features of many cases (MONAI ``FIDMetric``, Heusel et al. 2017) with a feature network
  the user chooses (:func:`load_feature_network`).

:func:`case_metrics` computes the whole dict for one case; evaluation and training
validation call it. The older helpers (``psnr``, ``ssim3d``, ``mae_hu``, ``ct_metrics``,
``unit_metrics``) keep their names and results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.metrics import FIDMetric
from monai.metrics.regression import compute_ssim_and_cs
from scipy import ndimage

__all__ = [
    "BONE_HU",
    "HU_WINDOW",
    "SPINE_MARGIN_MM",
    "VERTEBRA_LABELS",
    "SliceFID",
    "bone_dice",
    "case_metrics",
    "ct_metrics",
    "dice",
    "dilate_mm",
    "frechet_distance",
    "level_name",
    "load_feature_network",
    "load_lpips",
    "lpips_2d",
    "mae_hu",
    "plane_slices",
    "projection_error",
    "psnr",
    "psnr_2d_mean",
    "psnr_3d",
    "spine_region",
    "ssim3d",
    "ssim_2d_mean",
    "ssim_3d",
    "to_unit_window",
    "unit_metrics",
    "vertebra_dice",
]

HU_WINDOW = (-1000.0, 2000.0)
BONE_HU = 250.0  # HU at and above which a voxel is bone (x2ct.data.transforms.BONE_HU)
SPINE_MARGIN_MM = 5.0  # the spine region: vertebra (or bone) mask dilated by this many mm
VERTEBRA_LABELS = tuple(range(1, 27))  # VerSe: C1-C7 1-7, T1-T12 8-19, L1-L6 20-25, S1 26
ZERO_MSE_DB = 100.0  # X2CT-GAN's value for a slice whose MSE is zero (psnr_2d_mean)


# --------------------------------------------------------------------------- shapes
def _tensor(a) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(a)
    return a.detach().to(torch.float64)


def _bc(a: torch.Tensor) -> torch.Tensor:
    """(X,Y,Z) / (C,X,Y,Z) / (B,C,X,Y,Z) -> (B,C,X,Y,Z)."""
    while a.ndim < 5:
        a = a.unsqueeze(0)
    if a.ndim != 5:
        raise ValueError(f"expected a 3-D volume (up to 5 dims), got shape {tuple(a.shape)}")
    return a


def _vol(a) -> torch.Tensor:
    """One volume as (X, Y, Z) float64 on the CPU: leading axes must be 1."""
    t = _tensor(a).cpu()
    if t.ndim < 3 or any(n != 1 for n in t.shape[:-3]):
        raise ValueError(
            f"expected one volume (X, Y, Z) with unit leading axes, got {tuple(t.shape)}"
        )
    return t.reshape(t.shape[-3:])


def _mask(mask, shape) -> torch.Tensor:
    m = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
    m = m.detach().cpu().bool()
    m = m.reshape(m.shape[-3:]) if m.ndim >= 3 else m
    if tuple(m.shape) != tuple(shape[-3:]):
        raise ValueError(f"mask shape {tuple(m.shape)} does not match the volume {tuple(shape)}")
    return m


def _same_shape(p: torch.Tensor, t: torch.Tensor) -> None:
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch {tuple(p.shape)} vs {tuple(t.shape)}")


def to_unit_window(hu, hu_window: Sequence[float] = HU_WINDOW) -> torch.Tensor:
    """HU clipped to ``hu_window`` and mapped linearly to [0, 1] (float64)."""
    lo, hi = (float(w) for w in hu_window)
    if not hi > lo:
        raise ValueError(f"hu_window must be (low, high) with high > low, got {hu_window}")
    return (_tensor(hu).clamp(lo, hi) - lo) / (hi - lo)


# --------------------------------------------------------------------------- PSNR
def psnr(pred, target, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB; float('inf') when pred == target."""
    p, t = _tensor(pred), _tensor(target)
    _same_shape(p, t)
    mse = float(torch.mean((p - t) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(data_range**2 / mse)


def psnr_3d(pred, target, data_range: float = 1.0, mask=None) -> float:
    """PSNR over the volume, or over the voxels where ``mask`` is true (nan if none)."""
    if mask is None:
        return psnr(pred, target, data_range)
    p, t = _vol(pred), _vol(target)
    _same_shape(p, t)
    m = _mask(mask, p.shape)
    if not bool(m.any()):
        return float("nan")
    return psnr(p[m], t[m], data_range)


def psnr_2d_mean(pred, target, data_range: float = 1.0, zero_mse_db: float = ZERO_MSE_DB) -> float:
    """Per-slice PSNR averaged over the slices along each axis, then over the three axes
    (X2CT-GAN). A slice whose MSE is zero counts as ``zero_mse_db`` (so one exactly matching
    air slice does not make the mean infinite); identical volumes give inf."""
    p, t = _vol(pred), _vol(target)
    _same_shape(p, t)
    se = (p - t) ** 2
    if not bool(se.any()):
        return float("inf")
    per_axis = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        mse = se.mean(dim=other)  # (n_axis,)
        db = 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-300))
        db = torch.where(mse == 0, torch.full_like(db, zero_mse_db), db)
        per_axis.append(float(db.mean()))
    return float(np.mean(per_axis))


# --------------------------------------------------------------------------- SSIM
def _ssim_map(
    p: torch.Tensor,
    t: torch.Tensor,
    data_range: float,
    win_size: int,
    sigma: float,
    spatial_dims: int,
    kernel: str = "gaussian",
) -> torch.Tensor:
    """SSIM map over the valid region: (B, C, n - win_size + 1, ...)."""
    if kernel not in ("gaussian", "uniform"):
        raise ValueError(f"kernel must be 'gaussian' or 'uniform', got {kernel!r}")
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if min(p.shape[2:]) < win_size:
        raise ValueError(f"image {tuple(p.shape[2:])} smaller than the SSIM window {win_size}")
    ssim_map, _ = compute_ssim_and_cs(
        y_pred=p,
        y=t,
        spatial_dims=spatial_dims,
        kernel_size=[win_size] * spatial_dims,
        kernel_sigma=[sigma] * spatial_dims,
        data_range=data_range,
        kernel_type=kernel,
        k1=0.01,
        k2=0.03,
    )
    return ssim_map


def ssim3d(pred, target, data_range: float, win_size: int = 11, sigma: float = 1.5) -> float:
    """Mean 3-D SSIM (Gaussian window) over the valid region; 1.0 for identical inputs."""
    p, t = _bc(_tensor(pred)), _bc(_tensor(target))
    _same_shape(p, t)
    return float(_ssim_map(p, t, data_range, win_size, sigma, 3).mean())


def _masked_mean_valid(ssim_map: torch.Tensor, mask: torch.Tensor, win_size: int) -> float:
    """Mean of a valid-region SSIM map (1, 1, X-w+1, ...) over ``mask`` (X, Y, Z) cropped
    to the same region (each map value belongs to the window's centre voxel)."""
    r = (win_size - 1) // 2
    crop = mask[tuple(slice(r, n - r) for n in mask.shape)]
    if not bool(crop.any()):
        return float("nan")
    return float(ssim_map.reshape(crop.shape)[crop].double().mean())


def ssim_3d(
    pred, target, data_range: float = 1.0, mask=None, win_size: int = 11, sigma: float = 1.5
) -> float:
    """3-D SSIM averaged over the valid region, or over its voxels where ``mask`` is true
    (nan when the mask lies within win_size // 2 of the border only)."""
    if mask is None:
        return ssim3d(pred, target, data_range, win_size, sigma)
    p, t = _vol(pred), _vol(target)
    _same_shape(p, t)
    ssim_map = _ssim_map(p[None, None], t[None, None], data_range, win_size, sigma, 3)
    return _masked_mean_valid(ssim_map, _mask(mask, p.shape), win_size)


def ssim_2d_mean(
    pred,
    target,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    kernel: str = "gaussian",
) -> float:
    """Per-slice 2-D SSIM averaged over the slices along each axis, then over the three axes
    (X2CT-GAN). ``kernel="uniform"`` uses a win_size^2 box window."""
    p, t = _vol(pred), _vol(target)
    _same_shape(p, t)
    per_axis = []
    for axis in range(3):
        ps = p.movedim(axis, 0)[:, None]  # (n, 1, H, W)
        ts = t.movedim(axis, 0)[:, None]
        ssim_map = _ssim_map(ps, ts, data_range, win_size, sigma, 2, kernel)
        per_axis.append(float(ssim_map.double().mean(dim=(1, 2, 3)).mean()))
    return float(np.mean(per_axis))


# --------------------------------------------------------------------------- MAE
def mae_hu(pred_hu, target_hu, mask=None) -> float:
    """Mean absolute error in HU (over ``mask`` when given; nan for an empty mask)."""
    p, t = _tensor(pred_hu), _tensor(target_hu)
    if mask is None:
        return float(torch.mean(torch.abs(p - t)))
    p, t = _vol(p), _vol(t)
    m = _mask(mask, p.shape)
    if not bool(m.any()):
        return float("nan")
    return float(torch.mean(torch.abs(p[m] - t[m])))


def ct_metrics(pred_hu, target_hu, hu_window: tuple[float, float] = HU_WINDOW) -> dict[str, float]:
    """PSNR and SSIM over `hu_window` mapped to [0, 1], and MAE in HU of the clipped volumes."""
    lo, hi = hu_window
    p = _tensor(pred_hu).clamp(lo, hi)
    t = _tensor(target_hu).clamp(lo, hi)
    p01, t01 = (p - lo) / (hi - lo), (t - lo) / (hi - lo)
    return {"psnr": psnr(p01, t01, 1.0), "ssim": ssim3d(p01, t01, 1.0), "mae_hu": mae_hu(p, t)}


def unit_metrics(pred, target) -> dict[str, float]:
    """The same metrics for volumes already in the model's [-1, 1] scale (window HU_WINDOW)."""
    lo, hi = HU_WINDOW
    to_hu = lambda v: (_tensor(v).clamp(-1, 1) + 1.0) / 2.0 * (hi - lo) + lo
    return ct_metrics(to_hu(pred), to_hu(target), HU_WINDOW)


# --------------------------------------------------------------------------- regions, Dice
def level_name(label: int) -> str:
    """VerSe label -> level name (C1..C7, T1..T12, L1..L6, S1)."""
    label = int(label)
    if 1 <= label <= 7:
        return f"C{label}"
    if 8 <= label <= 19:
        return f"T{label - 7}"
    if 20 <= label <= 25:
        return f"L{label - 19}"
    if label == 26:
        return "S1"
    return f"label{label}"


def dilate_mm(mask, spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` (Euclidean, in mm, anisotropic
    ``spacing``) of a voxel of ``mask``: a spacing-aware dilation (X, Y, Z) bool."""
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    m = m.reshape(m.shape[-3:])
    if not m.any():
        return np.zeros_like(m)
    if radius_mm <= 0:
        return m.copy()
    # distance (mm) from each voxel to the nearest mask voxel
    dist = ndimage.distance_transform_edt(~m, sampling=tuple(float(s) for s in spacing))
    return dist <= radius_mm


def spine_region(
    target_hu,
    spacing: Sequence[float],
    labels=None,
    margin_mm: float = SPINE_MARGIN_MM,
    bone_hu: float = BONE_HU,
) -> np.ndarray:
    """Where the spine is: the vertebra mask (labels 1-26) of the ground truth, or its bone
    (HU >= bone_hu) where there is no label map or it holds no vertebra, dilated by
    ``margin_mm`` (:func:`dilate_mm`). (X, Y, Z) bool."""
    t = _vol(target_hu).numpy()
    core = None
    if labels is not None:
        lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        lab = lab.reshape(lab.shape[-3:])
        if lab.shape != t.shape:
            raise ValueError(f"labels {lab.shape} do not match the volume {t.shape}")
        core = np.isin(lab, VERTEBRA_LABELS)
        if not core.any():
            core = None
    if core is None:
        core = t >= bone_hu
    return dilate_mm(core, spacing, margin_mm)


def dice(a, b) -> float:
    """Dice coefficient 2|a & b| / (|a| + |b|) of two boolean masks; 1.0 when both are empty."""
    a = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a).astype(bool)
    b = np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((a & b).sum()) / total


def bone_dice(pred_hu, target_hu, threshold: float = BONE_HU) -> float:
    """Dice of the bone (HU >= threshold) of prediction and truth."""
    p, t = _vol(pred_hu), _vol(target_hu)
    _same_shape(p, t)
    return dice((p >= threshold).numpy(), (t >= threshold).numpy())


def vertebra_dice(pred_hu, target_hu, labels, threshold: float = BONE_HU) -> dict[int, float]:
    """Per vertebra k (labels 1-26 present in ``labels``): Dice of the thresholded bone of
    prediction and truth inside that vertebra's mask. A vertebra whose mask holds no bone
    of the truth is left out (its Dice is undefined)."""
    p, t = _vol(pred_hu).numpy(), _vol(target_hu).numpy()
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    lab = lab.reshape(lab.shape[-3:])
    if lab.shape != p.shape or p.shape != t.shape:
        raise ValueError(f"shape mismatch: pred {p.shape}, target {t.shape}, labels {lab.shape}")
    pb, tb = p >= threshold, t >= threshold
    out = {}
    for k in np.unique(lab):
        if int(k) not in VERTEBRA_LABELS:
            continue
        inside = lab == k
        if not (tb & inside).any():
            continue
        out[int(k)] = dice(pb & inside, tb & inside)
    return out


# --------------------------------------------------------------------------- projection
def projection_error(
    pred_hu,
    xrays,
    geometry,
    spacing: Sequence[float],
    xray_scale: float | None = None,
    hu_window: Sequence[float] = HU_WINDOW,
    step: float = 0.5,
) -> tuple[float, float]:
    """(mean |DRR(pred) - xrays|, that / mean |xrays|): the biplanar DRRs of the prediction
    (HU clipped to ``hu_window``, rendered as the datasets render X-rays:
    ``ct_to_drr(hu_to_unit(pred)) / xray_scale``) against the input X-rays (V, H, W)."""
    from x2ct.data import ct_to_drr, hu_to_unit
    from x2ct.projector import DRR_SCALE

    scale = DRR_SCALE if xray_scale is None else float(xray_scale)
    p = _vol(pred_hu).float()
    unit = hu_to_unit(p, tuple(hu_window))[None, None]  # (1, 1, X, Y, Z)
    drr = ct_to_drr(unit, geometry, tuple(float(s) for s in spacing), tuple(hu_window), step)
    drr = drr[0].double() / scale  # (V, H, W)
    x = _tensor(xrays).cpu()
    if x.numel() != drr.numel():
        raise ValueError(
            f"X-rays {tuple(x.shape)} do not match the geometry's DRRs {tuple(drr.shape)}"
        )
    x = x.reshape(drr.shape)
    err = float((drr - x).abs().mean())
    ref = float(x.abs().mean())
    return err, (err / ref if ref > 0 else float("nan"))


# --------------------------------------------------------------------------- 2-D slices
def plane_slices(volume, max_slices: int | None = None) -> list[torch.Tensor]:
    """Slices of (X, Y, Z) along X (sagittal), Y (coronal) and Z (axial): three float32
    tensors (n, H, W). With ``max_slices``, n <= max_slices evenly spaced inner slices."""
    v = _vol(volume).float()
    out = []
    for axis in range(3):
        n = v.shape[axis]
        if max_slices is None or max_slices >= n:
            idx = torch.arange(n)
        else:  # evenly spaced, the two border slices left out
            idx = torch.from_numpy(
                np.unique(np.linspace(0, n - 1, max_slices + 2)[1:-1].round().astype(np.int64))
            )
        out.append(v.index_select(axis, idx).movedim(axis, 0).contiguous())
    return out


# --------------------------------------------------------------------------- LPIPS
def load_lpips(net: str = "alex", device="cpu") -> tuple[torch.nn.Module | None, str]:
    """(LPIPS network, "ok") or (None, why not): needs the ``lpips`` package and its
    backbone's ImageNet weights (torchvision downloads them on first use)."""
    try:
        import lpips
    except Exception as e:  # ImportError, or a broken torchvision underneath
        return (
            None,
            f"LPIPS left out: the `lpips` package cannot be imported ({e}); pip install lpips",
        )
    try:
        model = lpips.LPIPS(net=net, verbose=False)
    except Exception as e:
        return None, f"LPIPS left out: the {net!r} backbone weights cannot be loaded ({e})"
    return model.eval().requires_grad_(False).to(device), "ok"


def _module_device(net) -> torch.device:
    """Where a network's parameters live (the CPU for a plain callable)."""
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def lpips_2d(pred01, target01, net: Callable, max_slices: int = 16, batch_size: int = 32) -> float:
    """LPIPS averaged over up to ``max_slices`` slices of each plane, then over the planes.
    Volumes in [0, 1]; ``net(a, b)`` takes (N, 3, H, W) images in [-1, 1] (as ``lpips.LPIPS``)
    and returns (N, ...) distances."""
    device = _module_device(net)
    per_plane = []
    for ps, ts in zip(plane_slices(pred01, max_slices), plane_slices(target01, max_slices)):
        d = []
        for i in range(0, ps.shape[0], batch_size):
            a = (ps[i : i + batch_size, None] * 2 - 1).expand(-1, 3, -1, -1).to(device)
            b = (ts[i : i + batch_size, None] * 2 - 1).expand(-1, 3, -1, -1).to(device)
            d.append(net(a, b).reshape(a.shape[0], -1).mean(1).double().cpu())
        per_plane.append(float(torch.cat(d).mean()))
    return float(np.mean(per_plane))


# --------------------------------------------------------------------------- FID
def frechet_distance(features_a, features_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F), (M, F):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (MONAI ``FIDMetric``)."""
    a, b = _tensor(features_a).cpu(), _tensor(features_b).cpu()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"expected feature sets (N, F) and (M, F), got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if min(a.shape[0], b.shape[0]) < 2 or a.shape[1] < 2:
        raise ValueError("FID needs at least 2 feature vectors of at least 2 features per set")
    return float(FIDMetric()(a, b))


class _InceptionFeatures(torch.nn.Module):
    """torchvision Inception-v3 (ImageNet weights) pool features (N, 2048) of grey slices:
    replicated to RGB, resized to 299 x 299, ImageNet-normalised. (pytorch-fid ports the
    TensorFlow weights instead; numbers differ slightly from TF-FID.)"""

    def __init__(self):
        super().__init__()
        from torchvision.models import Inception_V3_Weights, inception_v3

        self.net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1, aux_logits=True)
        self.net.fc = torch.nn.Identity()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W) in [0, 1]
        x = torch.nn.functional.interpolate(
            x.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear", align_corners=False
        )
        return self.net((x - self.mean) / self.std)


FEATURE_NETWORKS = ("inception",)
"""Built-in FID feature networks; any other value is a TorchScript file."""


def load_feature_network(name: str, device="cpu") -> tuple[torch.nn.Module | None, str]:
    """(feature network, "ok") or (None, why not) for FID. ``name``: "inception"
    (torchvision's ImageNet Inception-v3; needs torchvision and its weights) or the path of
    a TorchScript module mapping slices (N, 1, H, W) in [0, 1] to features (N, F) (or
    (N, F, ...), averaged over the trailing axes), e.g. a network trained on medical
    images. Loading never downloads silently into a wrong result: failures are reported.
    A TorchScript file is a program (its code runs when it is loaded and called): load only
    files you trust, never one from a stranger's model folder."""
    if name == "inception":
        try:
            net = _InceptionFeatures()
        except Exception as e:
            return None, (
                f"FID left out: the Inception-v3 feature network cannot be loaded "
                f"({type(e).__name__}: {e}); install torchvision and cache its "
                "ImageNet weights, or pass a TorchScript feature network"
            )
    else:
        from pathlib import Path

        if not Path(name).is_file():
            return None, (
                f"FID left out: feature network {name!r} is neither one of "
                f"{FEATURE_NETWORKS} nor a TorchScript file"
            )
        try:
            net = torch.jit.load(name, map_location="cpu")
        except Exception as e:
            return None, f"FID left out: {name} is not a loadable TorchScript module ({e})"
    return net.eval().to(device), "ok"


class SliceFID:
    """FID over 2-D slices of the three planes: ``update(pred01, target01)`` per case adds
    the features of up to ``max_slices`` slices per plane of each volume (in [0, 1]);
    ``compute()`` is the Frechet distance between the prediction and truth feature sets."""

    def __init__(self, net: Callable, max_slices: int = 16, batch_size: int = 64, device="cpu"):
        self.net = net
        self.max_slices = int(max_slices)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.pred: list[torch.Tensor] = []
        self.real: list[torch.Tensor] = []

    @torch.no_grad()
    def features(self, volume01) -> torch.Tensor:
        """(n_slices, F) float64 features of a volume's slices."""
        out = []
        for s in plane_slices(volume01, self.max_slices):
            for i in range(0, s.shape[0], self.batch_size):
                f = self.net(s[i : i + self.batch_size, None].to(self.device))
                out.append(f.reshape(f.shape[0], f.shape[1], -1).mean(-1).double().cpu())
        return torch.cat(out)

    def update(self, pred01, target01) -> None:
        self.pred.append(self.features(pred01))
        self.real.append(self.features(target01))

    def __len__(self) -> int:
        return sum(len(f) for f in self.pred)

    @property
    def num_features(self) -> int:
        """F, the feature network's output width (0 before any update)."""
        return self.pred[0].shape[1] if self.pred else 0

    def compute(self) -> float:
        if not self.pred:
            raise ValueError("SliceFID.compute() before any update()")
        return frechet_distance(torch.cat(self.pred), torch.cat(self.real))


# --------------------------------------------------------------------------- one case
def case_metrics(
    pred_hu,
    target_hu,
    spacing: Sequence[float],
    labels=None,
    xrays=None,
    geometry=None,
    xray_scale: float | None = None,
    hu_window: Sequence[float] = HU_WINDOW,
    bone_hu: float = BONE_HU,
    spine_margin_mm: float = SPINE_MARGIN_MM,
    lpips_net: Callable | None = None,
    lpips_slices: int = 16,
    projection_step: float = 0.5,
) -> dict[str, float]:
    """Every per-case metric of a predicted CT against the truth, both in HU (X, Y, Z) (or
    with unit leading axes) at ``spacing`` mm. Intensities are clipped to ``hu_window``
    (and mapped to [0, 1] for PSNR and SSIM).

    Always: mae_hu, psnr_3d, ssim_3d, psnr_2d_mean, ssim_2d_mean, mae_hu_spine,
    psnr_3d_spine, ssim_3d_spine (inside :func:`spine_region`), dice_bone.
    With ``labels`` (VerSe label map): dice_vertebra_mean and dice_<level> per vertebra.
    With ``xrays`` (V, H, W) and ``geometry``: projection_error, projection_error_rel.
    With ``lpips_net``: lpips.
    """
    lo, hi = (float(w) for w in hu_window)
    p_hu, t_hu = _vol(pred_hu).clamp(lo, hi), _vol(target_hu).clamp(lo, hi)
    _same_shape(p_hu, t_hu)
    p01, t01 = to_unit_window(p_hu, hu_window), to_unit_window(t_hu, hu_window)
    region = torch.from_numpy(spine_region(t_hu, spacing, labels, spine_margin_mm, bone_hu))
    # one 3-D SSIM map for the whole volume and the spine region
    win = 11
    ssim_map = _ssim_map(p01[None, None], t01[None, None], 1.0, win, 1.5, 3)
    out = {
        "mae_hu": mae_hu(p_hu, t_hu),
        "psnr_3d": psnr(p01, t01, 1.0),
        "ssim_3d": float(ssim_map.double().mean()),
        "psnr_2d_mean": psnr_2d_mean(p01, t01, 1.0),
        "ssim_2d_mean": ssim_2d_mean(p01, t01, 1.0),
        "mae_hu_spine": mae_hu(p_hu, t_hu, region),
        "psnr_3d_spine": psnr_3d(p01, t01, 1.0, region),
        "ssim_3d_spine": _masked_mean_valid(ssim_map, region, win),
        "dice_bone": bone_dice(p_hu, t_hu, bone_hu),
    }
    if labels is not None:
        per = vertebra_dice(p_hu, t_hu, labels, bone_hu)
        out["dice_vertebra_mean"] = float(np.mean(list(per.values()))) if per else float("nan")
        out.update({f"dice_{level_name(k)}": v for k, v in sorted(per.items())})
    if xrays is not None and geometry is not None:
        err, rel = projection_error(
            p_hu, xrays, geometry, spacing, xray_scale, hu_window, projection_step
        )
        out["projection_error"] = err
        out["projection_error_rel"] = rel
    if lpips_net is not None:
        out["lpips"] = lpips_2d(p01, t01, lpips_net, lpips_slices)
    return out
