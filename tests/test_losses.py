"""Pretraining losses: weights, the contrastive perceptual term (with a randomly initialised VGG19 saved to
disk, since ImageNet weights cannot be downloaded here), the missing-VGG warning and the CLIP hook."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import vgg19

from corun import losses
from corun.losses import (UPSTREAM_LAYER_WEIGHTS, VGG19_RELU, ContrastPerceptualLoss, CORUNLoss, LossConfig,
                          VGGFeatures)
from corun.model import CORUN, CORUNOutput


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-random.pth"
    torch.save(vgg19(weights=None).state_dict(), path)
    return path


def _fake_output(j, t):
    return CORUNOutput(image=j.clamp(0, 1), stages=[j * 0.5, j], transmissions=[t * 0.5, t])


def test_defaults_are_upstreams():
    cfg = LossConfig()
    assert (cfg.pixel_weight, cfg.asm_weight, cfg.perceptual_weight, cfg.clip_weight) == (1.0, 0.01, 0.2, 0.0)
    assert cfg.perceptual_layers == {"relu1_1": 1 / 32, "relu2_1": 1 / 16, "relu3_1": 1 / 8, "relu4_1": 1 / 4,
                                     "relu5_1": 1.0}


@pytest.mark.slow  # builds a VGG19 (seconds)
def test_vgg_features_match_torchvision_slices(vgg_file):
    feats = VGGFeatures(list(UPSTREAM_LAYER_WEIGHTS), weights=vgg_file)
    ref = vgg19(weights=None)
    ref.load_state_dict(torch.load(vgg_file, weights_only=True))
    x = torch.rand(1, 3, 32, 32)
    out = feats(x)
    assert list(out) == list(UPSTREAM_LAYER_WEIGHTS)
    for name, idx in ((n, VGG19_RELU[n]) for n in UPSTREAM_LAYER_WEIGHTS):
        torch.testing.assert_close(out[name], ref.features[: idx + 1](x.clone()))
    assert not any(p.requires_grad for p in feats.parameters())
    feats.train()
    assert not feats.training


@pytest.mark.slow  # builds a VGG19 (seconds)
def test_contrastive_perceptual_formula(vgg_file):
    vgg = VGGFeatures(list(UPSTREAM_LAYER_WEIGHTS), weights=vgg_file)
    loss = ContrastPerceptualLoss(vgg, UPSTREAM_LAYER_WEIGHTS, weight=0.2)
    torch.manual_seed(1)
    x, pos, neg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    fx, fp, fn = vgg(x), vgg(pos), vgg(neg)
    expected = 0.2 * sum(w * F.l1_loss(fx[k], fp[k]) / F.l1_loss(fx[k], fn[k])
                         for k, w in UPSTREAM_LAYER_WEIGHTS.items())
    torch.testing.assert_close(loss(x, pos, neg), expected, rtol=1e-4, atol=1e-6)
    # moving the output towards the positive lowers it; towards the negative raises it
    assert loss(0.5 * x + 0.5 * pos, pos, neg) < loss(x, pos, neg) < loss(0.5 * x + 0.5 * neg, pos, neg)


@pytest.mark.slow  # builds a VGG19 (seconds)
def test_full_loss_terms_and_gradients(vgg_file):
    cfg = LossConfig(vgg_weights=str(vgg_file))
    crit = CORUNLoss(cfg)
    assert crit.perceptual is not None and "on" in crit.perceptual_status
    torch.manual_seed(2)
    j = torch.rand(2, 3, 32, 32, requires_grad=True)
    t = torch.rand(2, 1, 32, 32).clamp(0.05, 1)
    clean, hazy = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    total, terms = crit(_fake_output(j, t), clean, hazy)
    assert set(terms) == {"l_pix", "l_asm", "l_contrast_percep"}
    torch.testing.assert_close(terms["l_pix"], F.l1_loss(j, clean))
    torch.testing.assert_close(terms["l_asm"], 0.01 * F.l1_loss(j * t + 1 - t, hazy))
    torch.testing.assert_close(total, sum(terms.values()))
    total.backward()
    assert torch.isfinite(j.grad).all() and j.grad.abs().sum() > 0


def test_missing_vgg_switches_perceptual_off_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(losses, "_warned_missing_vgg", False)
    cfg = LossConfig(vgg_weights=str(tmp_path / "absent.pth"))
    with pytest.warns(UserWarning, match="perceptual loss is OFF"):
        crit = CORUNLoss(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CORUNLoss(cfg)  # no second warning
    assert crit.perceptual is None and "off" in crit.perceptual_status
    _, terms = crit(_fake_output(torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16)),
                    torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    assert set(terms) == {"l_pix", "l_asm"}


def test_vgg_weights_null_is_off_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crit = CORUNLoss(LossConfig(vgg_weights=None))
    assert crit.perceptual is None and "null" in crit.perceptual_status


def test_clip_hook():
    with pytest.raises(ValueError, match="haze scorer"):
        CORUNLoss(LossConfig(vgg_weights=None, clip_weight=1.0))
    scorer = lambda img: img.mean(dim=(1, 2, 3))  # noqa: E731 - a stand-in "haze probability"
    crit = CORUNLoss(LossConfig(vgg_weights=None, clip_weight=0.5), haze_scorer=scorer)
    j = torch.rand(2, 3, 16, 16)
    _, terms = crit(_fake_output(j, torch.rand(2, 1, 16, 16)), torch.rand_like(j), torch.rand_like(j))
    torch.testing.assert_close(terms["l_clip"], 0.5 * j.mean())


@pytest.mark.slow  # builds a VGG19 (seconds)
def test_loss_on_a_real_corun_output(vgg_file):
    torch.manual_seed(3)
    model = CORUN(depth=2, dim=8)
    hazy, clean = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    crit = CORUNLoss(LossConfig(vgg_weights=str(vgg_file)))
    total, _ = crit(model(hazy), clean, hazy)
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_floored_target_keeps_the_clean_image_above_the_floor_and_only_visible_detail_below():
    from corun import physics
    from corun.losses import floored_target

    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 8, 8, generator=g)
    t = torch.linspace(0.01, 0.9, 64).view(1, 1, 8, 8).repeat(2, 1, 1, 1)
    A = torch.tensor([[0.8, 0.8, 0.8], [0.6, 0.65, 0.7]])
    out = floored_target(clean, t, A, 0.1)
    above = (t >= 0.1).expand_as(clean)
    assert torch.equal(out[above], clean[above])
    # below the floor: the hazy image dehazed with t0 = 0.1, i.e. (I - A) / t0 + A, no more detail than I shows
    hazy = physics.hazy(clean, t, A)
    expect = ((hazy - A.view(2, 3, 1, 1)) / 0.1 + A.view(2, 3, 1, 1)).clamp(0, 1)
    assert torch.allclose(out[~above], expect[~above], atol=1e-6)
    assert torch.equal(floored_target(clean, t, A, 0.0), clean)


# ---------------------------------------------------------------------------------------- any restorer

def test_split_output_reads_corun_tensors_and_tuples():
    j, t = torch.rand(1, 3, 8, 8) * 1.4 - 0.2, torch.rand(1, 1, 8, 8)
    out = losses.split_output(_fake_output(j, t))
    assert out.raw is not None and torch.equal(out.raw, j) and torch.equal(out.transmission, t)
    assert torch.equal(out.image, j.clamp(0, 1))
    for plain in (j, (j, "extra"), [j]):
        out = losses.split_output(plain)
        assert torch.equal(out.raw, j) and out.transmission is None and torch.equal(out.image, j.clamp(0, 1))
    with pytest.raises(TypeError, match="image tensor"):
        losses.split_output({"image": j})


def test_corun_loss_on_a_network_without_transmission_has_no_asm_term():
    j, t = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    clean, hazy = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    crit = CORUNLoss(LossConfig(vgg_weights=None))
    total_t, with_t = crit(_fake_output(j, t), clean, hazy)
    total, terms = crit(j, clean, hazy)
    assert set(with_t) == {"l_pix", "l_asm"} and set(terms) == {"l_pix"}
    assert torch.equal(terms["l_pix"], with_t["l_pix"]) and torch.equal(total, terms["l_pix"])
