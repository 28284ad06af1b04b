"""autoencoder/losses.py: values, gradients, and LPIPS availability handling."""

import sys
import types

import pytest
import torch

from x2ct.autoencoder.losses import (
    PerceptualLoss,
    ProjectionLoss,
    discriminator_loss,
    edge_loss,
    generator_adversarial_loss,
    kl_loss,
    lpips_status,
    make_discriminator,
    reconstruction_loss,
)


def volume(shape=(16, 16, 16), seed=0):
    return torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_reconstruction_loss():
    x, y = volume(seed=0), volume(seed=1)
    assert float(reconstruction_loss(x, x, l2_weight=1.0)) == 0.0
    l1 = float((x - y).abs().mean())
    assert float(reconstruction_loss(y, x)) == pytest.approx(l1)
    assert float(reconstruction_loss(y, x, l2_weight=2.0)) == pytest.approx(
        l1 + 2 * float(((x - y) ** 2).mean())
    )


def test_edge_loss():
    x = volume()
    assert float(edge_loss(x, x)) == 0.0
    assert float(edge_loss(x + 0.3, x)) == pytest.approx(0.0, abs=1e-6)  # shift-invariant
    # a blurred copy keeps the mean but loses edges
    blurred = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert float(edge_loss(blurred, x)) > 0.1


def test_kl_loss():
    mu, sigma = torch.zeros(1, 3, 4, 4, 4), torch.ones(1, 3, 4, 4, 4)
    assert float(kl_loss(mu, sigma)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_loss(mu + 1, sigma)) == pytest.approx(0.5)
    # 0.5 (s^2 - log s^2 - 1) at s = 2
    assert float(kl_loss(mu, 2 * sigma)) == pytest.approx(
        0.5 * (4 - torch.log(torch.tensor(4.0)) - 1)
    )


def test_adversarial_losses_have_gradients():
    torch.manual_seed(0)
    disc = make_discriminator(channels=4)
    x = volume((32, 32, 32))
    x_hat = (x * 0.5).requires_grad_(True)
    g = generator_adversarial_loss(disc, x_hat)
    g.backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    d = discriminator_loss(disc, x, x_hat)
    assert d.ndim == 0 and d.item() > 0
    disc.zero_grad()
    d.backward()
    assert all(p.grad is not None for p in disc.parameters())


def test_lpips_unavailable_here_gives_a_message():
    lpips_status.cache_clear()
    ok, reason = lpips_status()
    if ok:
        pytest.skip("lpips and its weights are available on this machine")
    assert "lpips" in reason.lower()
    with pytest.raises(RuntimeError, match="perceptual loss requested but unavailable"):
        PerceptualLoss()


def test_lpips_missing_weights_gives_a_message(monkeypatch):
    """The package imports but its backbone weights cannot be fetched (offline)."""
    fake = types.ModuleType("lpips")

    def no_weights(*args, **kwargs):
        raise OSError("could not download alexnet weights")

    fake.LPIPS = no_weights
    monkeypatch.setitem(sys.modules, "lpips", fake)
    lpips_status.cache_clear()
    try:
        ok, reason = lpips_status()
        assert not ok
        assert "weights" in reason and "could not download" in reason
        with pytest.raises(RuntimeError, match="weights"):
            PerceptualLoss()
    finally:
        lpips_status.cache_clear()


def test_perceptual_loss_with_a_stand_in_network(monkeypatch):
    """With a working LPIPS (here a stand-in: mean |a - b| per image), the loss is 0 for
    identical volumes and otherwise the mean over the three planes of the stand-in over
    max_slices evenly spaced 3-channel slices of each."""
    seen = []

    class FakeLPIPS(torch.nn.Module):
        def forward(self, a, b):
            assert a.shape[1] == 3 and a.ndim == 4 and a.shape == b.shape
            seen.append(tuple(a.shape))
            return (a - b).abs().mean(dim=(1, 2, 3))

    fake = types.ModuleType("lpips")
    fake.LPIPS = lambda **kw: FakeLPIPS()
    monkeypatch.setitem(sys.modules, "lpips", fake)
    lpips_status.cache_clear()
    try:
        loss = PerceptualLoss(max_slices=4)
        x, y = volume((8, 10, 12), seed=0), volume((8, 10, 12), seed=1)
        assert float(loss(x, x)) == 0.0
        seen.clear()
        value = float(loss(y, x))
    finally:
        lpips_status.cache_clear()
    assert seen == [(4, 3, 10, 12), (4, 3, 8, 12), (4, 3, 8, 10)]  # X, Y and Z slices
    expected = 0.0
    for axis in (2, 3, 4):
        idx = torch.linspace(0, x.shape[axis] - 1, 4).round().long()
        expected += float((y.index_select(axis, idx) - x.index_select(axis, idx)).abs().mean())
    assert value == pytest.approx(expected / 3, rel=1e-6)


def test_projection_loss():
    pytest.importorskip("x2ct.projector")
    loss = ProjectionLoss(spacing=(2.0, 2.0, 2.0), detector_shape=(16, 16), step=1.0)
    x = volume((16, 16, 16))
    assert float(loss(x, x)) == 0.0
    x_hat = (x * 0.9).requires_grad_(True)
    value = loss(x_hat, x)
    assert value.item() > 0
    value.backward()
    assert x_hat.grad.abs().sum() > 0
    assert loss.drr(x).shape == (1, 2, 16, 16)
