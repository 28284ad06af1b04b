"""The main job's teaching parts: the progress bar toward the real stop (train/progress.py)
and the closing comparison with the mean CT and the shipped model (train/summary.py,
eval/comparison.py)."""

import numpy as np
import pytest
import torch

from x2ct.data import PhantomDataset
from x2ct.diffusion import Reconstructor
from x2ct.eval.comparison import comparison_table, mean_ct, recommendation, score_cases
from x2ct.models import resolve_model
from x2ct.train import progress
from x2ct.train.progress import BudgetBar, budget_line, format_seconds
from x2ct.train.summary import closing_comparison, mean_training_ct


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    return c


def test_bar_ends_at_the_time_budget_when_it_comes_first(clock):
    bar = BudgetBar("t", step=0, max_steps=100_000, deadline=clock.now + 300, disable=True)
    assert bar.estimate()["binding"] == "time" and bar.estimate()["final_step"] is None
    clock.now += 30
    bar.update(10)  # 10 steps in 30 s: 270 s left make 90 more
    e = bar.estimate()
    assert e["binding"] == "time" and e["left"] == pytest.approx(270)
    assert e["final_step"] == 100 and e["fraction"] == pytest.approx(0.1)
    assert "step 10, ~100 at the 5:00 budget | 4:30 left" in bar.bar.bar_format


def test_bar_ends_at_the_step_limit_when_it_comes_first(clock):
    bar = BudgetBar("t", step=40, max_steps=60, deadline=clock.now + 300, disable=True)
    clock.now += 30
    bar.update(10)  # resumed at 40; 10 steps in 30 s: the last 10 take 30 s more
    e = bar.estimate()
    assert e["binding"] == "steps" and e["left"] == pytest.approx(30)
    assert e["fraction"] == pytest.approx(0.5) and e["final_step"] == 60
    no_deadline = BudgetBar("t", step=0, max_steps=10, deadline=None, disable=True)
    assert no_deadline.estimate()["binding"] == "steps"
    assert no_deadline.estimate()["left"] is None  # no pace yet


def test_words_of_the_budget():
    assert format_seconds(65) == "1:05" and format_seconds(3725) == "1:02:05"
    assert budget_line(0, 100_000, 5.0).startswith(
        "training for 5:00 (m:ss) or until step 100000, whichever comes first, from scratch")
    assert "from step 7" in budget_line(7, 10, None)
    assert "from the weights of models/ldm-tiny" in budget_line(0, 10, None, "models/ldm-tiny")
    # a resumed run continues its own checkpoint, whatever --init-from says
    assert "from step 7" in budget_line(7, 10, None, "models/ldm-tiny")


def test_comparison_table_and_recommendation():
    mean = {"psnr": 24.0, "ssim": 0.7, "mae_hu": 90.0, "projection_error": 0.01}
    run = {"psnr": 26.0, "ssim": 0.8, "mae_hu": 70.0, "projection_error": 0.008}
    shipped = {"psnr": 30.0, "ssim": 0.9, "mae_hu": 40.0, "projection_error": 0.003}
    rows = {"mean": mean, "run": run, "shipped": shipped}
    table = comparison_table({**rows, "other": "not comparable: made for CT (32, 32, 32)"})
    assert "| run | 26.00 | 0.800 | 70.0 | 0.0080 |" in table
    assert "| other | not comparable" in table
    use, why = recommendation(rows, "run", "mean", "shipped", "runs/latent/model", "ldm-tiny")
    assert use == "ldm-tiny" and "2.00 dB above the mean" in why and "--model ldm-tiny" in why
    below = {**rows, "run": {**run, "psnr": 23.0}, "shipped": "not found"}
    use, why = recommendation(below, "run", "mean", "shipped", "runs/latent/model", None)
    assert use == "runs/latent/model" and "1.00 dB below" in why and "Train longer" in why
    best = {**rows, "run": {**run, "psnr": 31.0}}
    use, why = recommendation(best, "run", "mean", "shipped", "runs/latent/model", "ldm-tiny")
    assert use == "runs/latent/model" and "above the shipped ldm-tiny" in why


def test_mean_training_ct_is_cached_per_data_key(tmp_path):
    cts = [torch.full((1, 2, 2, 2), v) for v in (-1.0, 0.0, 0.5)]
    data = [{"ct": c} for c in cts]
    mean, n = mean_training_ct(data, (-1000.0, 2000.0), tmp_path / "m.safetensors", "k", limit=2)
    assert n == 2 and torch.allclose(mean, torch.full((1, 2, 2, 2), -250.0))  # unit -0.5
    again, n = mean_training_ct([], (-1000.0, 2000.0), tmp_path / "m.safetensors", "k")
    assert n == 2 and torch.equal(again, mean)  # read back, the data not touched
    other, n = mean_training_ct(data, (-1000.0, 2000.0), tmp_path / "m.safetensors", "k2")
    assert n == 3 and torch.allclose(other, torch.full((1, 2, 2, 2), 250.0))  # unit -1/6
    assert torch.equal(mean_ct(iter(cts[:1])), cts[0])


def test_closing_comparison_scores_the_shipped_model_on_the_same_cases():
    """The shipped model compared with itself: the same scores in both rows, so it is no
    better than the run, and the run's model is the one to use."""
    torch.set_num_threads(1)
    recon = Reconstructor.from_pretrained(resolve_model("ldm-tiny"))
    c = recon.config
    data = PhantomDataset(1, seed=80_000, shape=recon.shape, spacing=recon.spacing,
                          geometry=recon.geometry, xray_scale=c.xray_scale, cache_size=0)
    val = [data[0]]

    def validate(r):
        out = r(torch.stack([v["xrays"] for v in val]), sampler="ddim", steps=2, num_samples=2,
                generator=torch.Generator().manual_seed(0), projection_guidance=False)
        truth = [r.autoencoder.output_to_hu(v["ct"]) for v in val]
        return score_cases(out.hu, truth, [v["xrays"] for v in val], r.geometry, r.spacing,
                           c.xray_scale, r.autoencoder.config.hu_window)

    run_scores = validate(recon)
    truth_hu = recon.autoencoder.output_to_hu(val[0]["ct"])
    mean = (truth_hu + 10.0, 1)  # a "mean CT" 10 HU off the truth everywhere
    result = closing_comparison(run_scores, recon, val, mean, validate, "RUN/model",
                                say=lambda s: None)
    rows = result["rows"]
    assert rows["shipped ldm-tiny"] == pytest.approx(run_scores)
    assert rows["mean training CT (1 cases)"]["mae_hu"] == pytest.approx(10.0, abs=1e-3)
    assert result["use"] == "RUN/model"
    assert np.isfinite(rows["this run"]["psnr"]) and "| this run |" in result["table"]
