"""train/gap.py: the denoiser's loss on training against held-out cases, at fixed t.

Oracle: a network that has memorised its training cases (it looks each one's latent up by
its X-rays and returns the exact v-prediction target, worked out here from abar_t by
hand) scores zero on them and the plain target's mean square on new cases, at every t."""

import pytest
import torch
from latent_helpers import one_thread, tiny_config  # noqa: F401 (one_thread: autouse)
from torch import nn

from x2ct.diffusion.schedule import NoiseSchedule
from x2ct.train.gap import GAP_TIMESTEPS, loss_by_timestep


class Memoriser(nn.Module):
    """Returns the v target of the training case whose X-rays it is shown, zeros else."""

    def __init__(self, abar: torch.Tensor, xrays: torch.Tensor, latents: torch.Tensor):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # for the device
        self.abar, self.xrays, self.latents = abar, xrays, latents

    def forward(self, x_t, t, xrays, drop=None, views=None):
        # the gap scores the conditioned model: no case may have its X-rays dropped
        assert drop is None or not bool(drop.any())
        out = torch.zeros_like(x_t)
        for i in range(len(x_t)):
            hit = [j for j in range(len(self.xrays)) if torch.equal(self.xrays[j], xrays[i])]
            if hit:
                x0 = self.latents[hit[0]]
                a = self.abar[int(t[i])].double()
                eps = (x_t[i].double() - a.sqrt() * x0) / (1 - a).sqrt()
                out[i] = (a.sqrt() * eps - (1 - a).sqrt() * x0).float()
        return out


def cases(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 4, 4, 4, generator=g), torch.rand(n, 2, 16, 16, generator=g)


def test_a_memorising_network_scores_zero_on_its_cases_and_the_target_on_new_ones():
    schedule = NoiseSchedule(tiny_config(prediction_type="v_prediction"))
    abar = schedule.scheduler.alphas_cumprod.double()
    z_train, x_train = cases(0)
    z_new, x_new = cases(1)
    net = Memoriser(abar, x_train, z_train.double())
    seen = loss_by_timestep(net, schedule, z_train, x_train, None, batch_size=2)
    new = loss_by_timestep(net, schedule, z_new, x_new, None, seed=3, batch_size=2)
    assert list(seen) == list(new) == list(GAP_TIMESTEPS)
    assert max(seen.values()) < 1e-8
    noise = torch.randn(z_new.shape, generator=torch.Generator().manual_seed(3)).double()
    for t, loss in new.items():
        a = abar[t]
        v = a.sqrt() * noise - (1 - a).sqrt() * z_new.double()
        assert loss == pytest.approx(float(v.pow(2).mean()), rel=1e-5)


def test_the_same_cases_and_seed_give_the_same_losses_whatever_the_batch():
    schedule = NoiseSchedule(tiny_config())
    z, x = cases(2)
    net = Memoriser(schedule.scheduler.alphas_cumprod.double(), x[:2], z[:2].double())
    a = loss_by_timestep(net, schedule, z, x, None, timesteps=(10, 900), batch_size=1)
    b = loss_by_timestep(net, schedule, z, x, None, timesteps=(10, 900), batch_size=8)
    assert a == pytest.approx(b, rel=1e-6) and a[900] > 0


def test_mismatched_cases_and_timesteps_out_of_range_are_refused():
    schedule = NoiseSchedule(tiny_config())
    z, x = cases(0)
    net = Memoriser(schedule.scheduler.alphas_cumprod.double(), x, z.double())
    with pytest.raises(ValueError, match="as many X-rays"):
        loss_by_timestep(net, schedule, z, x[:3], None)
    with pytest.raises(ValueError, match="as many X-rays"):
        loss_by_timestep(net, schedule, z, x, torch.zeros(2, 2, 15))
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\)"):
        loss_by_timestep(net, schedule, z, x, None, timesteps=(1000,))
