"""The shipped model models/ldm-tiny on the path a user takes: a held-out whole-body phantom
made into a case as ``reconstruct.py --ct`` makes a patient's CT (the spine located in the
image, the X-rays rendered through the whole body), the same phantom's field moved and
turned off the spine, and radiograph files (8-bit PNG with a geometry.json, a random
acquisition within the model's range) read back as a user's, each with the model's
defaults (the mean of 16 samples). Thresholds sit about 1.35 dB below what this CPU
measured on these cases (never lowered when a new model scores a little less), and far
above the 18.6 dB of the earlier shipped model (trained on field-only phantoms) on such
cases. Skipped when the folder is absent."""

from pathlib import Path

import pytest
import torch

from x2ct.data import phantom_case
from x2ct.diffusion import Reconstructor
from x2ct.eval.metrics import ct_metrics

MODEL = Path(__file__).resolve().parents[1] / "models" / "ldm-tiny"
pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason=f"no {MODEL}")
# Measured on this 2-core CPU (the model's defaults: DDIM 5 steps, mean of 16 samples,
# seed 0), the stage-5 weights (12150 steps): 27.51 dB on phantom 90000, 29.16 dB on 90001
# moved and turned (28.99 dB in place), 30.13 dB from the radiograph files of 90002 (30.56 dB
# from its DRRs). Thresholds about 1.35 dB below what was measured, never lowered.
PSNR_HELD_OUT = 26.15
PSNR_MOVED = 27.8
PSNR_RADIOGRAPH = 28.75


@pytest.fixture(scope="module")
def recon():
    return Reconstructor.from_pretrained(MODEL)


def _case(recon, seed, **kwargs):
    return phantom_case(seed, "lumbar", recon.shape, recon.spacing, recon.geometry,
                        locate_by="image", window=recon.autoencoder.config.hu_window, **kwargs)


def _psnr(recon, case, out) -> float:
    window = recon.autoencoder.config.hu_window
    return ct_metrics(out.hu, case.hu.clamp(*window)[None, None], window)["psnr"]


def test_config_reads_radiographs_through_the_body(recon):
    c = recon.config
    assert c.xray_input == "rank" and c.xrays_through == "body"
    assert c.acquisitions is not None
    assert c.num_samples > 1  # the reconstruction is a mean of samples, std its spread


def test_held_out_whole_body_phantom(recon):
    case = _case(recon, 90000)
    assert case.info["spine"]["method"] == "image"
    out = recon(case.drr[None] / recon.config.xray_scale,
                generator=torch.Generator().manual_seed(0))
    assert out.hu.shape == (1, 1, *recon.shape)
    psnr = _psnr(recon, case, out)
    assert psnr > PSNR_HELD_OUT, psnr


def test_moved_and_turned_field(recon):
    """The field 12 mm off the located spine and turned 8 degrees (a patient placed
    otherwise than the default): the model reads where the anatomy is from the X-rays."""
    case = _case(recon, 90001, shift_mm=(9.0, -8.0, 0.0), turn_deg=8.0)
    out = recon(case.drr[None] / recon.config.xray_scale,
                generator=torch.Generator().manual_seed(0))
    psnr = _psnr(recon, case, out)
    assert psnr > PSNR_MOVED, psnr


def test_radiograph_files_read_back_as_a_user_would(recon, tmp_path):
    from x2ct.eval.radiograph_cases import radiograph_case
    from x2ct.projector import stack_views

    case = _case(recon, 90002, keep_body=True)
    rc = radiograph_case(case, recon.geometry, recon.config.acquisitions, tmp_path, seed=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ap.png", "geometry.json",
                                                          "lateral.png"]
    out = recon(rc.xrays, views=stack_views(rc.geometries, torch.float32),
                intensity="display", generator=torch.Generator().manual_seed(0))
    psnr = _psnr(recon, case, out)
    assert psnr > PSNR_RADIOGRAPH, psnr
