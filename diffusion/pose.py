"""Reconstruction alternated with pose refinement, for real radiographs whose views are
not exactly the model's (never exactly orthogonal or centred).

    out = recon(xrays, pose_refinement=PoseRefinement(rounds=1, iters=60, lr=0.3))
    out.pose        # (B, V, 3) fitted (d_angle deg, d_u mm, d_v mm) per case and view

Each round fits every view's pose (``x2ct.projector.refine_pose``: 1 - NCC between the
X-rays and the DRRs of the current reconstruction, starting from the last round's pose),
then reconstructs again with it:

- the detector shifts are undone on the X-rays (``shift_to_nominal``: exact, a shift of
  the detector in its plane only relabels pixels), so the model sees centred X-rays;
- the angle offsets become the views of a Geometry (``posed_geometry``) that the
  geometry-aware conditioning back-projects along (``LatentDenoiser.backprojector_for``)
  and projection guidance renders along. The X-ray encoder itself was trained on the
  nominal angles only, so large offsets remain outside its training distribution.

Cases are reconstructed one at a time after the first round (each has its own pose).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from x2ct.projector import hu_to_mu, posed_geometry, refine_pose, shift_to_nominal

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
    from x2ct.diffusion.pipeline import Reconstruction

    nominal = recon.geometry
    lo, hi = recon.autoencoder.config.hu_window
    out = recon(xrays, **kwargs)
    pose = torch.zeros(xrays.shape[0], nominal.num_views, 3)
    for _ in range(options.rounds):
        mu = hu_to_mu(out.hu.clamp(lo, hi))  # what simulate_xrays renders
        fit = refine_pose(
            mu, xrays.to(mu), nominal, recon.spacing, options.iters, options.lr, init=pose
        )
        pose = fit.pose
        parts = []
        for i in range(xrays.shape[0]):
            x_i = shift_to_nominal(xrays[i : i + 1], nominal, pose[i])
            parts.append(recon(x_i, view_geometry=posed_geometry(nominal, pose[i]), **kwargs))
        projection = None
        if parts[0].projection is not None:
            keys = parts[0].projection
            projection = {k: torch.cat([p.projection[k] for p in parts]) for k in keys}
        out = Reconstruction(
            torch.cat([p.hu for p in parts]),
            None if parts[0].std is None else torch.cat([p.std for p in parts]),
            torch.cat([p.latent for p in parts]),
            projection,
        )
    return out._replace(pose=pose)
