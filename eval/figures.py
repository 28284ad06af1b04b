"""Figures of the evaluation and the benchmarks (matplotlib, written atomically).

- :func:`case_grid`: one row per case (e.g. the best, median and worst by spine PSNR);
  for each plane (axial, coronal, sagittal) the truth, the reconstruction and |error|.
- :func:`benchmark_plot`: seconds and peak memory against a setting (steps, size, batch).
- :func:`reconstruction_figure`: one reconstruction from X-rays: the input X-rays and the
  DRRs of the result, then the planes of truth, reconstruction, |error| and uncertainty
  (eval/reconstruct.py, train/latent.py validation).

Planes are shown as radiologists read them: axial and coronal with the patient's right on
the viewer's left, axial with anterior up, coronal and sagittal with superior up, sagittal
with anterior on the left (RAS voxel order, DESIGN.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from x2ct.fileio import atomic_path  # noqa: E402

__all__ = [
    "PLANES",
    "CasePlanes",
    "benchmark_plot",
    "case_grid",
    "central_planes",
    "reconstruction_figure",
    "save_figure",
]

PLANES = ("axial", "coronal", "sagittal")


def central_planes(volume) -> list[np.ndarray]:
    """Axial (Z/2), coronal (Y/2) and sagittal (X/2) planes of an (X, Y, Z) volume (or one
    with unit leading axes) as display-ready 2-D float32 arrays (rows top to bottom)."""
    v = np.asarray(volume.detach().cpu() if hasattr(volume, "detach") else volume, np.float32)
    v = v.reshape(v.shape[-3:])
    x, y, z = (n // 2 for n in v.shape)
    axial = v[::-1, :, z].T[::-1]  # rows: anterior -> posterior; columns: right -> left
    coronal = v[::-1, y, :].T[::-1]  # rows: superior -> inferior; columns: right -> left
    sagittal = v[x, ::-1, :].T[::-1]  # rows: superior -> inferior; columns: anterior -> posterior
    return [np.ascontiguousarray(p) for p in (axial, coronal, sagittal)]


class CasePlanes(NamedTuple):
    title: str  # e.g. "best: phantom_90003, spine PSNR 31.2 dB"
    truth: list[np.ndarray]  # central_planes of the ground truth (HU)
    pred: list[np.ndarray]  # central_planes of the reconstruction (HU)


def case_grid(cases: Sequence[CasePlanes], window: Sequence[float] = (-1000.0, 2000.0),
              title: str = "", error_max: float = 500.0):
    """Rows: cases; columns: truth | reconstruction | |error| (HU, 0..error_max) for each
    of the three planes. Returns the figure."""
    cols = 3 * len(PLANES)
    fig, axes = plt.subplots(len(cases), cols, figsize=(1.9 * cols, 2.1 * len(cases)),
                             squeeze=False)
    lo, hi = window
    for r, case in enumerate(cases):
        for p, plane in enumerate(PLANES):
            t, q = case.truth[p], case.pred[p]
            panels = [(t, "gray", lo, hi, "truth"), (q, "gray", lo, hi, "reconstruction"),
                      (np.abs(q - t), "magma", 0.0, error_max, "|error| HU")]
            for k, (img, cmap, vmin, vmax, name) in enumerate(panels):
                ax = axes[r, 3 * p + k]
                ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{plane}\n{name}", fontsize=8)
        axes[r, 0].set_ylabel(case.title, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def benchmark_plot(series: Mapping[str, Sequence[tuple[float, float, float | None]]],
                   xlabel: str, title: str = "", log_x: bool = False):
    """Two panels, seconds and peak memory (MB) against ``xlabel``; ``series`` maps a label
    to points (x, seconds, peak MB or None)."""
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in series.items():
        pts = sorted(points)
        xs = [p[0] for p in pts]
        ax_t.plot(xs, [p[1] for p in pts], marker="o", label=label)
        mem = [(p[0], p[2]) for p in pts if p[2] is not None]
        if mem:
            ax_m.plot(*zip(*mem), marker="o", label=label)
    ax_t.set_ylabel("seconds")
    ax_m.set_ylabel("peak memory (MB)")
    for ax in (ax_t, ax_m):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if log_x:
            ax.set_xscale("log", base=2)
    ax_t.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def reconstruction_figure(
    xrays,
    pred_hu,
    drr_pred,
    gt_hu=None,
    std_hu=None,
    window: Sequence[float] = (-1000.0, 2000.0),
    title: str = "",
    angles: Sequence[float] = (0.0, 90.0),
):
    """Row 1: input X-rays (V, H, W) and the DRRs of the reconstruction. Then the CT's
    axial, coronal and sagittal planes (:func:`central_planes`; volumes in HU): ground
    truth (when known), reconstruction, |error| (when known) and the uncertainty map
    (when given), each row with its colour bar in HU. Tensors (any device) or arrays."""
    as_np = lambda t: np.asarray(t.detach().float().cpu() if hasattr(t, "detach") else t)
    xr = as_np(xrays).reshape(-1, *xrays.shape[-2:])  # (V, H, W)
    dp = as_np(drr_pred).reshape(-1, *drr_pred.shape[-2:])
    vol = lambda t: as_np(t).reshape(t.shape[-3:])
    rows = []
    if gt_hu is not None:
        rows.append(("ground truth", vol(gt_hu), "gray", window))
    rows.append(("reconstruction", vol(pred_hu), "gray", window))
    if gt_hu is not None:
        rows.append(("|error| HU", np.abs(vol(pred_hu) - vol(gt_hu)), "magma", (0, 500)))
    if std_hu is not None:
        rows.append(("std HU", vol(std_hu), "viridis", (0, max(float(vol(std_hu).max()), 1e-6))))
    n_views = xr.shape[0]
    cols = max(3, 2 * n_views)
    fig, axes = plt.subplots(1 + len(rows), cols, figsize=(2.6 * cols, 2.6 * (1 + len(rows))))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    hi = max(float(xr.max()), float(dp.max()), 1e-6)
    names = {0.0: "AP", 90.0: "lateral"}
    for v in range(n_views):
        name = names.get(float(angles[v]), f"{float(angles[v]):g} deg") if v < len(angles) else v
        axes[0, v].imshow(xr[v], cmap="gray", vmin=0, vmax=hi)
        axes[0, v].set_title(f"input {name}", fontsize=9)
        axes[0, n_views + v].imshow(dp[v], cmap="gray", vmin=0, vmax=hi)
        axes[0, n_views + v].set_title(f"{name} DRR of reconstruction", fontsize=9)
    for r, (name, data, cmap, (lo, top)) in enumerate(rows, start=1):
        for c, (plane, img) in enumerate(zip(PLANES, central_planes(data))):
            image = axes[r, c].imshow(img, cmap=cmap, vmin=lo, vmax=top)
            axes[r, c].set_frame_on(True)
            if r == 1:
                axes[r, c].set_title(plane, fontsize=9)
            if c == 0:
                axes[r, c].set_ylabel(name)
        if cols > 3:  # the colour bar in the free cell beside the planes
            bar = fig.colorbar(image, cax=axes[r, 3].inset_axes([0.05, 0.05, 0.08, 0.9]))
        else:
            bar = fig.colorbar(image, ax=axes[r, 2], fraction=0.046, pad=0.04)
        bar.set_label(name if name.endswith("HU") else f"{name}, HU", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10 if len(title) > 80 else 12)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a figure atomically (format from the suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)
    return path
