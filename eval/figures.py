"""Figures of the evaluation and the benchmarks (matplotlib, written atomically).

- :func:`case_grid`: one row per case (e.g. the best, median and worst by spine PSNR);
  for each plane (axial, coronal, sagittal) the truth, the reconstruction and |error|.
- :func:`benchmark_plot`: seconds and peak memory against a setting (steps, size, batch).

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

__all__ = ["PLANES", "CasePlanes", "benchmark_plot", "case_grid", "central_planes", "save_figure"]

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


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a figure atomically (format from the suffix) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)
    return path
