"""Reconstruction alternated with pose refinement, for real radiographs whose views are
not exactly the model's (never exactly orthogonal or centred).

    out = recon(xrays, pose_refinement=PoseRefinement(rounds=1, iters=60, lr=0.3))
    out.pose        # (B, V, 3) fitted (d_angle deg, d_u mm, d_v mm) per case and view

Each round fits every view's pose (``x2ct.projector.refine_pose``: 1 - NCC between the
X-rays and the DRRs of the current reconstruction, starting from the last round's pose),
then reconstructs again along the posed views (``x2ct.projector.pose_views``: each view
turned about the body axis and its detector shifted in its plane), which the geometry-
aware conditioning back-projects along and projection guidance renders along. The X-rays
themselves are not resampled: the model was trained on fields placed off centre, so a
shifted image is within what it has seen. Radiographs (``intensity="display"``) are first
mapped through their display curve fitted against the reconstruction's DRRs
(diffusion/calibration.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from x2ct.diffusion.calibration import fit_display_curve
from x2ct.projector import hu_to_mu, pose_views, refine_pose, view_vectors

__all__ = ["PoseRefinement", "reconstruct_with_pose"]


@dataclass(frozen=True)
class PoseRefinement:
    rounds: int = 1  # refine-and-reconstruct rounds after the first reconstruction
    iters: int = 60  # Adam iterations of each pose fit
    lr: float = 0.3  # Adam learning rate, degrees and mm

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.iters < 1 or not self.lr > 0:
            raise ValueError(f"need rounds >= 1, iters >= 1 and lr > 0, got {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def reconstruct_with_pose(recon, xrays: torch.Tensor, options: PoseRefinement, **kwargs):
    """Reconstruct, then ``options.rounds`` times refine the pose and reconstruct again;
    ``kwargs`` are :meth:`Reconstructor.__call__`'s. Returns the last reconstruction with
    ``pose`` (B, V, 3) set."""
    nominal = recon.geometry
    lo, hi = recon.autoencoder.config.hu_window
    intensity = kwargs.get("intensity", "line_integral")
    base = kwargs.pop("views", None)
    geometry = kwargs.pop("geometry", None)
    allow = kwargs.pop("allow_geometry_mismatch", False)
    if base is None and geometry is not None:
        base = recon.acquisition_views(geometry, allow)
    b, n_views = xrays.shape[:2]
    if base is None:
        base = view_vectors(nominal, torch.float32)
    base = base.float().expand(b, n_views, 15) if base.ndim == 2 else base.float()
    out = recon(xrays, views=base, **kwargs)
    pose = torch.zeros(b, n_views, 3)
    posed = base
    for _ in range(options.rounds):
        mu = hu_to_mu(out.hu.clamp(lo, hi))  # what simulate_xrays renders
        target = xrays.to(mu)
        if intensity == "display":
            drr = recon.simulate_xrays(out.hu.to(recon.device), views=posed.to(recon.device))
            target = fit_display_curve(target, drr.to(mu))
        fit = refine_pose(
            mu, target, nominal, recon.spacing, options.iters, options.lr, init=pose,
            views=base.to(mu),
        )
        pose = fit.pose
        posed = torch.stack([pose_views(base[i].double(), pose[i].double()) for i in range(b)])
        posed = posed.float()
        out = recon(xrays, views=posed, **kwargs)
    return out._replace(pose=pose)
