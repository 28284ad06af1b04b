"""What a training batch shows the network: ideal DRRs or simulated radiographs."""

from __future__ import annotations

import torch

from x2ct.data import default_geometry, phantom_case
from x2ct.train.latent import network_xrays


def _batch():
    shape, spacing = (16, 16, 16), (8.0, 8.0, 8.0)
    g = default_geometry(shape, spacing, detector_shape=(16, 16))
    cases = [phantom_case(s, "lumbar", shape, spacing, g, materials=True) for s in (3, 4)]
    drr = torch.stack([c.drr for c in cases])
    paths = torch.stack([c.paths for c in cases])
    views = torch.stack([c.views for c in cases]).float()
    return drr, paths, views


def test_radiograph_styled_inputs_replace_the_drrs_of_the_picked_cases():
    drr, paths, views = _batch()
    assert paths.shape == (2, 3, 2, 16, 16) and bool((paths >= 0).all())
    plain = network_xrays(drr, paths, views, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, drr / 8.0)
    styled = network_xrays(drr, paths, views, 1.0, torch.Generator().manual_seed(0))
    again = network_xrays(drr, paths, views, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(styled, again)  # seeded
    assert not torch.allclose(styled, plain)
    # stored pixel values: whole numbers within the bit depth of each view
    assert torch.equal(styled, styled.round()) and float(styled.min()) >= 0
    assert float(styled.max()) <= 2**16 - 1
    other = network_xrays(drr, paths, views, 1.0, torch.Generator().manual_seed(1))
    assert not torch.allclose(other, styled)
