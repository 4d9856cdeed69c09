"""The atmospheric scattering model and the dark-channel-prior baseline (corun.physics)."""
from __future__ import annotations

import math

import pytest
import torch

from corun import physics


def test_hazy_of_transmission_matches_closed_form_on_hand_values():
    d = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    clean = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 1, 3)
    beta, A = 1.0, 0.9
    out = physics.hazy(clean, physics.transmission(d, beta), A)
    for j, dj in enumerate([0.0, 0.5, 1.0]):
        t = math.exp(-2 * beta * (1 - dj))
        for c, jc in enumerate([0.2, 0.4, 0.6]):
            assert out[0, c, 0, j].item() == pytest.approx(jc * t + A * (1 - t), abs=1e-6)


def test_per_image_beta_and_per_channel_airlight_broadcast():
    d = torch.full((2, 1, 4, 4), 0.25)
    t = physics.transmission(d, torch.tensor([0.5, 2.0]))
    assert t[0].unique().item() == pytest.approx(math.exp(-0.75))
    assert t[1].unique().item() == pytest.approx(math.exp(-3.0))
    A = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]])
    out = physics.hazy(torch.zeros(2, 3, 4, 4), t, A)
    assert out[0, :, 0, 0].tolist() == pytest.approx([(1 - math.exp(-0.75)) * a for a in (1.0, 0.5, 0.0)])


def test_reconstruct_is_hazy_with_unit_airlight():
    J, T = torch.rand(2, 3, 5, 6), torch.rand(2, 1, 5, 6)
    assert torch.allclose(physics.reconstruct(J, T), physics.hazy(J, T, 1.0))


def test_dark_channel_is_channel_then_patch_minimum():
    img = torch.ones(1, 3, 7, 7)
    img[0, 1, 3, 3] = 0.1
    dc = physics.dark_channel(img, patch=3)
    assert dc.shape == (1, 1, 7, 7)
    assert dc[0, 0, 2:5, 2:5].eq(0.1).all() and dc[0, 0, 0, 0] == 1.0


def test_guided_filter_preserves_constants():
    guide = torch.rand(1, 1, 20, 30)
    out = physics.guided_filter(guide, torch.full((1, 1, 20, 30), 0.3), radius=5, eps=1e-3)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-5)


def _textured_scene(h=96, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 8, w // 8, generator=g)
    clean = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest") * 0.8
    d = torch.linspace(0.0, 1.0, h).view(1, 1, h, 1).expand(1, 1, h, w).contiguous()
    return clean, d


def test_dcp_removes_haze_from_a_synthetic_hazy_image():
    clean, d = _textured_scene()
    I = physics.hazy(clean, physics.transmission(d, 1.0), 0.85)
    J, t, A = physics.dcp_dehaze(I)
    dark_in, dark_out = physics.dark_channel(I).mean(), physics.dark_channel(J).mean()
    assert dark_out < 0.35 * dark_in
    assert J.std() > 1.3 * I.std()                     # contrast restored
    assert A.shape == (1, 3) and torch.allclose(A, torch.full_like(A, 0.85), atol=0.1)
    assert ((J - clean).abs().mean() < (I - clean).abs().mean())


def test_dcp_is_batched_and_keeps_shapes():
    clean, d = _textured_scene()
    I = physics.hazy(clean.repeat(3, 1, 1, 1), physics.transmission(d.repeat(3, 1, 1, 1), torch.tensor([0.5, 1.0, 2.0])), 0.9)
    J, t, A = physics.dcp_dehaze(I)
    J0, _, _ = physics.dcp_dehaze(I[1:2])
    assert J.shape == I.shape and t.shape == (3, 1, 96, 128) and A.shape == (3, 3)
    assert torch.allclose(J[1:2], J0, atol=1e-5)
