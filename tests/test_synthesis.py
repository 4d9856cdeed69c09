"""The RIDCP online haze synthesis and the pseudo-real degrader (corun.synthesis)."""
from __future__ import annotations

import torch

from corun import physics
from corun.synthesis import (NOISE_COLOUR, NOISE_CORRELATED, NOISE_GRAY, NOISE_NONE, HazeSynthesisConfig,
                             HazeSynthesizer, PseudoRealDegrader, sample_haze_params)


def _batch(n=4, h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g), torch.rand(n, 1, h, w, generator=g)


def test_fixed_seed_is_reproducible_and_seeds_differ():
    clean, d = _batch()
    a = HazeSynthesizer(seed=3)(clean, d)
    b = HazeSynthesizer(seed=3)(clean, d)
    c = HazeSynthesizer(seed=4)(clean, d)
    assert torch.equal(a.hazy, b.hazy) and torch.equal(a.t, b.t)
    assert not torch.equal(a.hazy, c.hazy)
    assert a.hazy.shape == clean.shape and a.t.shape == d.shape and a.clean is clean
    assert a.hazy.min() >= 0 and a.hazy.max() <= 1


def test_draw_frequencies_match_configured_probabilities():
    n = 600
    p = sample_haze_params(HazeSynthesisConfig(), n, torch.Generator().manual_seed(0))
    assert p.beta.min() >= 0.2 and p.beta.max() <= 2.8 and abs(p.beta.mean() - 1.5) < 0.1
    base = p.A - p.color_shift
    assert base.min() >= 0.25 and base.max() <= 1.0 and abs(base.mean() - 0.625) < 0.03
    assert (p.color_shift != 0).all() and p.color_shift.abs().max() <= 0.025      # color_p = 1
    assert abs(torch.isfinite(p.gamma).float().mean() - 0.5) < 0.07
    g = p.gamma[torch.isfinite(p.gamma)]
    assert g.min() >= 1.5 and g.max() <= 3.0
    noisy = p.noise_mode != NOISE_NONE
    assert abs(noisy.float().mean() - 0.5) < 0.07
    modes = p.noise_mode[noisy]
    for code, prob in ((NOISE_COLOUR, 0.4), (NOISE_GRAY, 0.4), (NOISE_CORRELATED, 0.2)):
        assert abs((modes == code).float().mean() - prob) < 0.08
    lv = (p.noise_sigma[noisy] * 255).round()
    assert lv.min() >= 2 and lv.max() <= 25 and (lv[modes == NOISE_CORRELATED] == 25).all()
    jq = p.jpeg_quality[p.jpeg_quality > 0]
    assert abs(len(jq) / n - 0.5) < 0.07 and jq.min() >= 30 and jq.max() <= 95


def test_every_probability_is_a_config_field():
    cfg = HazeSynthesisConfig(gamma_p=0.0, noise_p=1.0, jpeg_p=1.0, color_p=0.0, beta_range=(1.0, 1.0))
    p = sample_haze_params(cfg, 50, torch.Generator().manual_seed(1))
    assert not torch.isfinite(p.gamma).any() and (p.noise_mode != NOISE_NONE).all()
    assert (p.jpeg_quality > 0).all() and (p.color_shift == 0).all() and (p.beta == 1.0).all()


def test_without_degradations_output_is_exactly_the_scattering_model():
    cfg = HazeSynthesisConfig(gamma_p=0, noise_p=0, jpeg_p=0, color_p=0, normalise_depth=False)
    clean, d = _batch()
    r = HazeSynthesizer(cfg, seed=0)(clean, d)
    expect = physics.hazy(clean, physics.transmission(d, r.params.beta), r.params.A).clamp(0, 1)
    assert torch.allclose(r.hazy, expect, atol=1e-6)


def test_gamma_darkens_and_gray_noise_is_shared_by_channels():
    clean, d = _batch(n=2)
    cfg = HazeSynthesisConfig(gamma_p=1, noise_p=0, jpeg_p=0, color_p=0, beta_range=(0.0, 0.0))
    r = HazeSynthesizer(cfg, seed=0)(clean * 0.8 + 0.1, d)      # β = 0: t = 1, no haze
    assert (r.hazy <= clean * 0.8 + 0.1 + 1e-6).all() and r.hazy.mean() < 0.8 * (clean * 0.8 + 0.1).mean()
    cfg = HazeSynthesisConfig(gamma_p=0, noise_p=1, noise_mode_probs=(0, 1, 0), jpeg_p=0, color_p=0,
                              beta_range=(0.0, 0.0))
    flat = torch.full((2, 3, 16, 16), 0.5)
    r = HazeSynthesizer(cfg, seed=0)(flat, d[:, :, :16, :16])
    noise = r.hazy - flat
    assert noise.abs().mean() > 0 and torch.allclose(noise[:, 0], noise[:, 1]) and torch.allclose(noise[:, 1], noise[:, 2])


def test_jpeg_step_changes_pixels_like_a_codec():
    clean, d = _batch(n=2, h=64, w=64)
    off = HazeSynthesizer(HazeSynthesisConfig(gamma_p=0, noise_p=0, jpeg_p=0), seed=5)(clean, d)
    on = HazeSynthesizer(HazeSynthesisConfig(gamma_p=0, noise_p=0, jpeg_p=1), seed=5)(clean, d)
    diff = (on.hazy - off.hazy).abs().mean()
    assert 1e-3 < diff < 0.2


def test_pseudo_real_is_spatially_non_uniform_and_different():
    clean, _ = _batch(n=2, h=64, w=64)
    d = torch.full((2, 1, 64, 64), 0.3)
    d[..., 0, 0] = 0.0
    d[..., -1, -1] = 1.0                          # so normalisation keeps 0.3 in the middle
    r = PseudoRealDegrader(seed=0)(clean, d)
    inner = r.t[:, :, 8:56, 8:56]
    assert inner.std() > 0.01                     # same depth, different transmission: β varies in space
    assert r.params["kind"] == "pseudo-real"
    r2 = PseudoRealDegrader(seed=0)(clean, d)
    assert torch.equal(r.hazy, r2.hazy)


def _ramp_scene(h=600, w=64):
    """A linear inverse-depth ramp, far (0) at the top row, near (1) at the bottom, and a textured image."""
    d = torch.linspace(0, 1, h).view(1, 1, h, 1).expand(1, 1, h, w).contiguous()
    clean = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    return clean, d


def test_a_crop_keeps_the_transmission_of_its_place_in_the_whole_image():
    # issue 15.1: the default synthesiser must not re-normalise a crop's depth
    clean, d = _ramp_scene()
    cfg = HazeSynthesisConfig(gamma_p=0, noise_p=0, jpeg_p=0, beta_range=(2.72, 2.72))
    whole = HazeSynthesizer(cfg, seed=7)(clean, d)
    means = []
    for top in (0, 156, 312):                           # far, middle and near 288-row crops
        crop = HazeSynthesizer(cfg, seed=7)(clean[..., top:top + 288, :], d[..., top:top + 288, :])
        assert torch.allclose(crop.t, whole.t[..., top:top + 288, :], atol=1e-6)
        assert torch.allclose(crop.hazy, whole.hazy[..., top:top + 288, :], atol=1e-6)
        means.append(float(crop.t.mean()))
    assert means[0] < means[1] < means[2]               # far crops are hazier than near ones
    assert abs(means[0] - 0.021) < 0.002 and abs(means[2] - 0.356) < 0.005  # issue 15's upstream numbers


def test_normalise_depth_is_an_explicit_option_for_whole_raw_depth_maps():
    clean, d = _ramp_scene(h=64)
    cfg = HazeSynthesisConfig(gamma_p=0, noise_p=0, jpeg_p=0, beta_range=(1.0, 1.0), normalise_depth=True)
    raw = HazeSynthesizer(cfg, seed=1)(clean, d * 40 + 3)          # raw disparity in [3, 43]
    ref = HazeSynthesizer(cfg, seed=1)(clean, d)
    assert torch.allclose(raw.t, ref.t, atol=1e-6)
    crop = HazeSynthesizer(cfg, seed=1)(clean[..., :32, :], d[..., :32, :])
    assert float(crop.t.min()) < 0.2 and float(crop.t.max()) == 1.0   # the per-crop behaviour, on request


def test_training_crops_of_a_dataset_keep_whole_image_depth(tmp_path):
    import numpy as np
    from PIL import Image

    from corun.data import CleanDepthDataset

    (tmp_path / "clean").mkdir()
    (tmp_path / "depth").mkdir()
    Image.fromarray(np.full((200, 64, 3), 128, np.uint8)).save(tmp_path / "clean" / "a.png")
    np.save(tmp_path / "depth" / "a.npy", np.linspace(5, 50, 200, dtype=np.float32)[:, None].repeat(64, 1))
    ds = CleanDepthDataset(tmp_path, crop=64, flip=False, seed=0)
    tops = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        d = ds[0]["inv_depth"]
        top = float(d[0, 0, 0])
        assert float(d.max() - d.min()) < 0.35          # a 64-row crop spans 64/200 of the depth range
        tops.append(top)
    assert max(tops) - min(tops) > 0.05                 # crops cut elsewhere see other depths
