"""Rendering differentiable in the geometry, and pose refinement (projector/pose.py)."""

import pytest
import torch

from x2ct.data import default_geometry, spine_phantom
from x2ct.projector import hu_to_mu, project, view_vectors
from x2ct.projector.pose import (
    posed_geometry,
    posed_view_vectors,
    project_posed,
    refine_pose,
    shift_to_nominal,
)

SHAPE, SPACING = (40, 40, 40), (3.0, 3.0, 3.0)
# the example: a few degrees off and a few mm shifted, different per view
TRUTH = torch.tensor([[2.0, 3.0, 0.0], [-1.5, -2.0, 2.0]])  # (d_angle deg, d_u mm, d_v mm)


@pytest.fixture(scope="module")
def case():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    ph = spine_phantom(SHAPE, SPACING, seed=0)
    mu = hu_to_mu(torch.from_numpy(ph.hu))[None, None].float()  # (1, 1, X, Y, Z)
    geometry = default_geometry(SHAPE, SPACING, detector_shape=(32, 32))
    yield mu, geometry
    torch.set_num_threads(n)


def test_zero_pose_is_the_nominal_geometry(case):
    mu, g = case
    zero = torch.zeros(g.num_views, 3, dtype=torch.float64)
    assert torch.equal(posed_view_vectors(g, zero), view_vectors(g))
    ref = project(mu, g, SPACING, backend="torch")
    assert torch.allclose(project_posed(mu, g, zero.float(), SPACING), ref, atol=1e-5)
    # an angle offset alone is a Geometry with moved angles
    angle = torch.tensor([[1.5, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    moved = project(mu, posed_geometry(g, angle), SPACING, backend="torch")
    assert torch.allclose(project_posed(mu, g, angle, SPACING), moved, atol=1e-4)


def test_gradient_flows_to_every_pose_parameter(case):
    mu, g = case
    pose = torch.zeros(g.num_views, 3, requires_grad=True)
    target = project_posed(mu, g, TRUTH, SPACING)
    loss = (project_posed(mu, g, pose, SPACING) - target).abs().mean()
    (grad,) = torch.autograd.grad(loss, pose)
    assert torch.isfinite(grad).all()
    assert (grad.abs() > 0).all(), grad


def test_detector_shift_is_an_image_translation(case):
    mu, g = case
    shift = torch.tensor([[0.0, 2 * g.pixel_spacing[1], 0.0], [0.0, 0.0, -g.pixel_spacing[0]]])
    shifted = project_posed(mu, g, shift, SPACING)
    back = shift_to_nominal(shifted, g, shift)
    ref = project_posed(mu, g, torch.zeros(2, 3), SPACING)
    # whole-pixel shifts: exact away from the border rows/columns that were padded
    assert torch.allclose(back[0, 0, :, 2:-2], ref[0, 0, :, 2:-2], atol=1e-4)
    assert torch.allclose(back[0, 1, 1:-1], ref[0, 1, 1:-1], atol=1e-4)
    assert not torch.allclose(shifted, ref, atol=1e-2)


def test_refine_pose_recovers_a_perturbed_pose_on_the_true_ct(case):
    mu, g = case
    xrays = project_posed(mu, g, TRUTH, SPACING)  # X-rays taken with the perturbed poses
    fit = refine_pose(mu, xrays, g, SPACING, iters=60, lr=0.3)
    error_before = TRUTH.norm()  # starting from the nominal pose (all offsets 0)
    error_after = (fit.pose[0] - TRUTH).norm()
    # On the true CT with noise-free DRRs the optimum is the truth; what is left comes from
    # the coarser march (step 1 voxel vs the X-rays' 0.5) and 60 Adam iterations. It is
    # about 0.25 (deg, mm) against 4.9 at the start (a factor ~20) on this CPU; 4x leaves
    # margin while still failing a refinement that merely drifts.
    assert error_after < 0.25 * error_before, (fit.pose, TRUTH)
    assert float(fit.loss_after[0]) < float(fit.loss_before[0])


def test_refine_pose_rejects_bad_arguments(case):
    mu, g = case
    with pytest.raises(ValueError):
        refine_pose(mu, torch.zeros(2, 2, 32, 32), g, SPACING)
    with pytest.raises(ValueError):
        posed_view_vectors(g, torch.zeros(3, 3))


def test_reconstruct_with_pose_refits_and_reconstructs_along_the_refined_views(case):
    """The alternation with an oracle reconstructor (it returns the true CT): the fitted
    pose approaches the truth, and the second reconstruction gets the same X-rays with the
    views moved by the fitted pose."""
    from types import SimpleNamespace

    from x2ct.diffusion import PoseRefinement
    from x2ct.diffusion.pipeline import Reconstruction
    from x2ct.diffusion.pose import reconstruct_with_pose
    from x2ct.projector import mu_to_hu, pose_views, view_vectors

    mu, g = case
    hu = mu_to_hu(mu)
    calls = []

    class Oracle:
        geometry, spacing = g, SPACING
        autoencoder = SimpleNamespace(config=SimpleNamespace(hu_window=(-1000.0, 3000.0)))

        def __call__(self, xrays, views=None, **kwargs):
            calls.append((xrays, views))
            return Reconstruction(hu, None, torch.zeros(1, 1, 1, 2, 2, 2))

    xrays = project_posed(mu, g, TRUTH, SPACING)
    out = reconstruct_with_pose(Oracle(), xrays, PoseRefinement(rounds=1, iters=60))
    assert (out.pose[0] - TRUTH).norm() < 0.25 * TRUTH.norm()  # as in the test above
    assert len(calls) == 2
    nominal = view_vectors(g, torch.float32)
    torch.testing.assert_close(calls[0][1][0], nominal)
    moved = pose_views(nominal.double(), out.pose[0].double()).float()
    torch.testing.assert_close(calls[1][1][0], moved)
    assert torch.equal(calls[1][0], xrays)  # the images are not resampled
