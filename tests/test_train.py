"""Shared training pieces (train/): checkpoints, EMA, data order, figures, run folder."""

import os

import pytest
import torch
from accelerate import Accelerator

from x2ct.train.checkpoint import (
    checkpoint_name,
    find_latest_checkpoint,
    list_checkpoints,
    resume_latest,
    save_checkpoint,
)
from x2ct.train.ema import EMA
from x2ct.train.figures import central_planes, reconstruction_figure, save_figure
from x2ct.train.run import Deadline, RunDir, StepCounter, save_args
from x2ct.train.sampling import batch_indices, make_generator, random_crop


def test_find_latest_checkpoint_ignores_tmp(tmp_path):
    assert find_latest_checkpoint(tmp_path / "none") is None
    for name in ["step_0000010", "step_0000200", "step_0000030", "step_0000300.tmp", "other"]:
        (tmp_path / name).mkdir()
    assert find_latest_checkpoint(tmp_path).name == "step_0000200"
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step_0000010",
        "step_0000030",
        "step_0000200",
    ]
    assert checkpoint_name(42) == "step_0000042"


def test_save_and_resume_checkpoint(tmp_path):
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    ema, counter = EMA(model, 0.9), StepCounter()
    model, opt = accelerator.prepare(model, opt)
    state = {"model": model, "optimizer": opt, "ema": ema, "step": counter}
    for step in range(1, 6):
        model(torch.randn(4, 3)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
        counter.step = step
        save_checkpoint(accelerator, tmp_path, step, state, keep=2)
    # only the last two survive, no temporaries
    assert sorted(os.listdir(tmp_path)) == ["step_0000004", "step_0000005"]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_ema = {k: v.clone() for k, v in ema.model.state_dict().items()}
    saved_opt = opt.state_dict()["state"][0]["exp_avg"].clone()
    # scramble everything, then resume
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for p in ema.model.parameters():
            p.add_(1.0)
    counter.step = 0
    model(torch.randn(4, 3)).pow(2).mean().backward()
    opt.step()
    assert resume_latest(accelerator, tmp_path, state).name == "step_0000005"
    assert counter.step == 5
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    for k, v in ema.model.state_dict().items():
        torch.testing.assert_close(v, saved_ema[k], rtol=0, atol=0)
    torch.testing.assert_close(opt.state_dict()["state"][0]["exp_avg"], saved_opt, rtol=0, atol=0)
    # a half-written newer checkpoint is ignored
    (tmp_path / "step_0000006.tmp").mkdir()
    assert find_latest_checkpoint(tmp_path).name == "step_0000005"


def test_ema_update_and_state():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    d0 = ema.current_decay()
    assert d0 == pytest.approx(1 / 10)  # warm-up: (1 + 0) / (10 + 0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 1 - d0))
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9
    torch.testing.assert_close(ema.model.weight, torch.ones(1, 2), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in ema.model.parameters())
    other = EMA(torch.nn.Linear(2, 1, bias=False), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 201 and other.decay == 0.9
    torch.testing.assert_close(other.model.weight, ema.model.weight)
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)


def test_batch_indices_are_a_function_of_seed_and_step():
    n, b = 10, 3
    a = [batch_indices(n, b, seed=0, micro_step=s) for s in range(10)]
    assert a == [batch_indices(n, b, seed=0, micro_step=s) for s in range(10)]
    assert a != [batch_indices(n, b, seed=1, micro_step=s) for s in range(10)]
    flat = [i for batch in a for i in batch]
    for epoch in range(3):  # every epoch is a permutation of the n items
        assert sorted(flat[epoch * n : (epoch + 1) * n]) == list(range(n))
    # two processes split each step's samples: together they follow the same order
    r0 = [batch_indices(n, b, 0, s, rank=0, world_size=2) for s in range(5)]
    r1 = [batch_indices(n, b, 0, s, rank=1, world_size=2) for s in range(5)]
    merged = [i for s in range(5) for i in r0[s] + r1[s]]
    assert merged == flat[:30]


def test_random_crop_deterministic():
    x = torch.arange(2 * 8 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8, 8)
    c1 = random_crop(x, 4, make_generator(0, 5))
    c2 = random_crop(x, 4, make_generator(0, 5))
    c3 = random_crop(x, 4, make_generator(0, 6))
    assert c1.shape == (2, 1, 4, 4, 4)
    torch.testing.assert_close(c1, c2)
    assert not torch.equal(c1, c3)
    assert random_crop(x, None, make_generator(0)) is x
    assert random_crop(x, 8, make_generator(0)) is x
    # crops are contiguous blocks of the volume
    corner = c1[0, 0, 0, 0, 0].long().item()
    i, j, k = corner // 64, corner // 8 % 8, corner % 8
    torch.testing.assert_close(c1[0, 0], x[0, 0, i : i + 4, j : j + 4, k : k + 4])


def test_figure_and_run_folder(tmp_path):
    run = RunDir(tmp_path / "run").make()
    assert run.checkpoints.is_dir() and run.logs.is_dir() and run.figures.is_dir()
    save_args(run, {"lr": 1e-3, "seed": 0})
    assert '"lr": 0.001' in run.args_json.read_text()
    v = torch.zeros(8, 10, 12)
    v[7, 9, 11] = 1
    planes = central_planes(v.numpy())
    assert [p.shape for p in planes] == [(10, 8), (12, 8), (12, 10)]
    fig = reconstruction_figure(torch.rand(1, 1, 8, 10, 12) * 2 - 1, torch.zeros(8, 10, 12), "t")
    save_figure(fig, run.figures / "x.png")
    assert (run.figures / "x.png").stat().st_size > 1000
    c = StepCounter()
    c.load_state_dict({"step": 7})
    assert c.state_dict() == {"step": 7}
    assert not Deadline(None).passed() and Deadline(0).passed()


def test_loop_lr_schedule_log_sums_and_val_seeds():
    from x2ct.train.loop import VAL_SEED_OFFSET, add_terms, lr_lambda, val_seeds

    const = lr_lambda(warmup=4, schedule="constant", max_steps=10)
    assert [const(s) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]
    cos = lr_lambda(warmup=1, schedule="cosine", max_steps=10)
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.1) and cos(20) == cos(10)
    logs = {}
    for _ in range(2):
        add_terms(logs, {"rec": torch.tensor(1.0), "kl": torch.tensor(0.5)}, grad_accum=2)
    assert logs == {"train/rec": 1.0, "train/kl": 0.5}
    assert val_seeds(3, 2) == [VAL_SEED_OFFSET + 3, VAL_SEED_OFFSET + 4]
