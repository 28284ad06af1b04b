"""The shipped model models/ldm-tiny reconstructs a held-out phantom from its two X-rays
clearly better than the mean-CT baseline can (which stays under 25.5 dB on these seeds),
with its default projection-consistent sampling; pose refinement wins back views taken
off pose. Skipped when the folder is absent."""

from pathlib import Path

import pytest
import torch

from x2ct.data import PhantomDataset, unit_to_hu
from x2ct.diffusion import Reconstructor
from x2ct.eval.metrics import ct_metrics

MODEL = Path(__file__).resolve().parents[1] / "models" / "ldm-tiny"
pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason=f"no {MODEL}")


def test_shipped_model_reconstructs_a_held_out_phantom():
    recon = Reconstructor.from_pretrained(MODEL)
    item = PhantomDataset(1, seed=90000, geometry=recon.geometry)[0]
    with torch.no_grad():
        out = recon(item["xrays"][None], sampler="ddim", steps=10,
                    generator=torch.Generator().manual_seed(0))
    truth = unit_to_hu(item["ct"])[None]
    assert out.hu.shape == truth.shape
    # projection-consistent sampling is the shipped default (config.json)
    assert recon.config.projection_guidance == {"strength": 0.05, "steps": 5, "inner": 3}
    assert float(out.projection["final"][0, 0]) <= float(out.projection["before"][0, 0])
    scores = ct_metrics(out.hu, truth)
    # The mean training CT scores 24.2 +- 0.9 dB / SSIM 0.68 on held-out phantoms.
    assert scores["psnr"] > 27.0 and scores["ssim"] > 0.85, scores


def test_pose_refinement_recovers_views_taken_off_pose():
    """X-rays of a held-out phantom taken with each view a few degrees off and its detector
    a few mm shifted (projector/pose.py): the shipped model reconstructs worse from them;
    pose refinement moves the views toward the truth and wins back part of the loss."""
    from x2ct.diffusion import PoseRefinement
    from x2ct.eval.evaluate import pose_errors, posed_xrays

    truth_pose = torch.tensor([[2.5, 2.0, -1.0], [-2.0, -1.5, 2.5]])  # deg, mm, mm per view
    recon = Reconstructor.from_pretrained(MODEL)
    window = recon.autoencoder.config.hu_window
    item = PhantomDataset(1, seed=90001, geometry=recon.geometry)[0]
    truth = unit_to_hu(item["ct"])[None]
    xrays = posed_xrays(truth, recon.geometry, recon.spacing, window, recon.config.xray_scale,
                        truth_pose[None])
    # (projection guidance off: this is about the pose alone)
    plain = recon(xrays, steps=10, generator=torch.Generator().manual_seed(0),
                  projection_guidance=False)
    posed = recon(xrays, steps=10, generator=torch.Generator().manual_seed(0),
                  projection_guidance=False,
                  pose_refinement=PoseRefinement(rounds=1, iters=60, lr=0.3))
    before = pose_errors(torch.zeros(2, 3), truth_pose)
    after = pose_errors(posed.pose[0], truth_pose)
    # On three held-out phantoms with poses up to 3 deg / 4 mm the fit removed 40-75% of the
    # angle error and 45-65% of the shift error, and PSNR rose by 1.6-1.9 dB (of the 2-3 dB
    # the off-pose views cost); asking for 25% and 0.5 dB still fails a fit that drifts.
    assert after["pose_error_deg"] < 0.75 * before["pose_error_deg"], (posed.pose, truth_pose)
    assert after["pose_error_mm"] < 0.75 * before["pose_error_mm"], (posed.pose, truth_pose)
    gain = ct_metrics(posed.hu, truth, window)["psnr"] - ct_metrics(plain.hu, truth, window)["psnr"]
    assert gain > 0.5, gain


def test_shift_trained_model_reads_the_position_from_the_xrays():
    """A held-out phantom placed (-7.2, -6.5, 6.1) mm off centre: models/ldm-tiny, trained
    on phantoms all placed alike, fails on it (18.8 dB at DDIM 25, below the mean CT);
    models/ldm-tiny-shift8, trained on phantoms up to 8 mm off centre, does not (28.2 dB;
    27.9 +- 0.8 dB over 20 such phantoms)."""
    shifted = MODEL.parent / "ldm-tiny-shift8"
    scores = {}
    for folder in (MODEL, shifted):
        recon = Reconstructor.from_pretrained(folder)
        item = PhantomDataset(1, seed=90002, geometry=recon.geometry, max_shift_mm=8.0)[0]
        out = recon(item["xrays"][None], steps=10, generator=torch.Generator().manual_seed(0),
                    projection_guidance=False)
        scores[folder.name] = ct_metrics(out.hu, unit_to_hu(item["ct"])[None])["psnr"]
    assert scores["ldm-tiny-shift8"] > 26.0, scores
    assert scores["ldm-tiny-shift8"] > scores["ldm-tiny"] + 3.0, scores


def test_shipped_regression_baseline_reconstructs_in_one_pass():
    recon = Reconstructor.from_pretrained(MODEL.parent / "ldm-tiny-regression")
    assert recon.config.objective == "regression"
    item = PhantomDataset(1, seed=90000, geometry=recon.geometry)[0]
    a = recon(item["xrays"][None], projection_guidance=False)
    b = recon(item["xrays"][None], projection_guidance=False, steps=3, sampler="rflow",
              generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.hu, b.hu)  # deterministic: the sampler and the noise do not enter
    scores = ct_metrics(a.hu, unit_to_hu(item["ct"])[None])
    # 31.05 +- 1.03 dB over 20 held-out phantoms; the mean CT stays under 25.5 dB
    assert scores["psnr"] > 28.0 and scores["ssim"] > 0.88, scores
