"""Figures of the three central planes of a volume: input, reconstruction, error."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def central_planes(v: np.ndarray) -> list[np.ndarray]:
    """Axial (XY at Z/2), coronal (XZ at Y/2), sagittal (YZ at X/2) of an (X, Y, Z) array,
    transposed for display (rows = the second axis, superior/anterior up)."""
    x, y, z = (n // 2 for n in v.shape)
    return [v[:, :, z].T[::-1], v[:, y, :].T[::-1], v[x, :, :].T[::-1]]


def reconstruction_figure(x: torch.Tensor, x_hat: torch.Tensor, title: str = ""):
    """3x3 grid: rows input / reconstruction / |error|; columns axial, coronal, sagittal.

    x, x_hat: (X, Y, Z) or (1, 1, X, Y, Z) tensors in [-1, 1].
    """
    a = x.detach().float().cpu().reshape(x.shape[-3:]).numpy()
    b = x_hat.detach().float().cpu().reshape(x_hat.shape[-3:]).numpy()
    rows = [
        ("input", a, "gray", (-1, 1)),
        ("reconstruction", b, "gray", (-1, 1)),
        ("|error|", np.abs(b - a), "magma", (0, 0.25)),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(9, 9))
    for r, (name, vol, cmap, (lo, hi)) in enumerate(rows):
        for c, (plane, img) in enumerate(
            zip(("axial", "coronal", "sagittal"), central_planes(vol))
        ):
            ax = axes[r, c]
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(plane)
            if c == 0:
                ax.set_ylabel(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, tensorboard=None, tag: str = "", step: int = 0) -> None:
    """Write a PNG (and log it to a TensorBoard SummaryWriter when given), then close."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    if tensorboard is not None:
        tensorboard.add_figure(tag or path.stem, fig, global_step=step, close=False)
    plt.close(fig)
