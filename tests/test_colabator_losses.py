"""Colabator's effective loss weights and initialisation follow upstream (issue 15, items 5 and 8); the
generic form (no transmission) drops only the ASM term."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corun.colabator.finetune import ColabatorSection, init_from_pretrain
from corun.losses import ColabatorLoss
from corun.physics import reconstruct

LAYERS = {"relu1_1": 0.5, "relu2_1": 1.0}


class TinyFeatures(nn.Module):
    """Stands in for VGGFeatures: a dict of two fixed random feature maps."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, stride=2)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
            p.requires_grad_(False)

    def forward(self, x):
        f1 = F.relu(self.a(x))
        return {"relu1_1": f1, "relu2_1": F.relu(self.b(f1))}


def _tensors(seed=0, b=2, h=16, w=16):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    j_syn = r(b, 3, h, w) * 1.6 - 0.3                    # outside [0, 1] in places: the clamp matters
    return dict(j_syn=j_syn, clean=r(b, 3, h, w), j_real=r(b, 3, h, w), t_real=r(b, 1, h, w) * 0.8 + 0.1,
                real_strong=r(b, 3, h, w), labels=r(b, 3, h, w), weights=r(b, 1, h, w))


def test_default_weights_are_upstreams_effective_ones():
    c = ColabatorSection()
    assert (c.pixel_weight, c.syn_weight, c.real_weight) == (5.0, 0.5, 1.0)
    assert c.real_asm_weight == 0.005 and c.perceptual_weight == 0.04 and c.real_contrast_weight == 0.2
    assert c.clamp_syn_output and c.student_init == "params_ema" and c.haze_weighting == "clear"


def test_every_term_by_hand():
    vgg = TinyFeatures()
    loss = ColabatorLoss(ColabatorSection(), LAYERS, vgg=vgg)
    t = _tensors()
    total, terms = loss(**t)
    js = t["j_syn"].clamp(0, 1)
    w = t["weights"]
    expect = {
        # CB: 5 * [L1_0.5(clamp(out), gt) + mean(L1_0.5(real, label) * mask * 2)]
        "l_syn_pix": 5 * 0.5 * (js - t["clean"]).abs().mean(),
        "l_real_pix": 5 * (0.5 * (t["j_real"] - t["labels"]).abs() * w * 2).mean(),
        # CB: mean(L1_0.5(recon, strong) * mask) * 0.01
        "l_real_asm": (0.5 * (reconstruct(t["j_real"], t["t_real"]) - t["real_strong"]).abs() * w).mean() * 0.01,
        # ML perceptual_weight 0.2 inside, CB * 0.2 outside
        "l_percep": 0.2 * 0.2 * sum(lw * F.l1_loss(vgg(js)[n], vgg(t["clean"])[n]) for n, lw in LAYERS.items()),
        # ML 0.2 inside, added unscaled by CB
        "l_real_contrast": 0.2 * sum(lw * F.l1_loss(vgg(t["j_real"])[n], vgg(t["labels"])[n])
                                     / (F.l1_loss(vgg(t["j_real"])[n], vgg(t["real_strong"])[n]) + 1e-7)
                                     for n, lw in LAYERS.items()),
    }
    assert set(terms) == set(expect)
    for k, v in expect.items():
        assert torch.allclose(terms[k], v, rtol=1e-5, atol=1e-7), k
    assert torch.allclose(total, sum(expect.values()), rtol=1e-5)


def test_without_a_transmission_only_the_asm_term_is_left_out():
    vgg = TinyFeatures()
    loss = ColabatorLoss(ColabatorSection(), LAYERS, vgg=vgg)
    t = _tensors(2)
    _, with_t = loss(**t)
    total, without = loss(**{**t, "t_real": None})
    assert set(with_t) - set(without) == {"l_real_asm"}
    for k, v in without.items():
        assert torch.equal(v, with_t[k]), k
    assert torch.allclose(total, sum(with_t.values()) - with_t["l_real_asm"], rtol=1e-6)


def test_the_synthetic_clamp_is_a_switch():
    t = _tensors(1)
    on = ColabatorLoss(ColabatorSection(), LAYERS)(**t)[1]["l_syn_pix"]
    off = ColabatorLoss(ColabatorSection(clamp_syn_output=False), LAYERS)(**t)[1]["l_syn_pix"]
    assert torch.allclose(off, 2.5 * (t["j_syn"] - t["clean"]).abs().mean())
    assert not torch.allclose(on, off)
    # the clamp stops gradients where the output left [0, 1], like upstream's clamp
    j = t["j_syn"].clone().requires_grad_(True)
    ColabatorLoss(ColabatorSection(), LAYERS)(**{**t, "j_syn": j})[1]["l_syn_pix"].backward()
    outside = (t["j_syn"] < 0) | (t["j_syn"] > 1)
    assert (j.grad[outside] == 0).all() and (j.grad[~outside] != 0).all()


def _ckpt(tmp_path):
    from corun.model import CORUN

    a, b = CORUN(depth=2, dim=4), CORUN(depth=2, dim=4)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.5)
    path = tmp_path / "pre.pth"
    torch.save({"params": a.state_dict(), "params_ema": b.state_dict()}, path)
    return path, a.state_dict(), b.state_dict()


def test_student_and_teacher_start_from_params_ema_as_upstream(tmp_path):
    from corun.model import CORUN
    from corun.train import make_ema

    path, raw, ema_sd = _ckpt(tmp_path)
    for student, want in (("params_ema", ema_sd), ("params", raw)):
        model = CORUN(depth=2, dim=4)
        ema = make_ema(model, 0.999, False)
        init_from_pretrain(model, ema, path, student=student)
        for k, v in model.state_dict().items():
            assert torch.equal(v, want[k]), (student, k)
        for k, v in ema.module.state_dict().items():
            assert torch.equal(v, ema_sd[k]), k                      # the teacher: always params_ema
        assert int(ema.n_averaged) == 1


def test_unknown_student_init_is_refused(tmp_path):
    import pytest

    from corun.model import CORUN
    from corun.train import make_ema

    path, _, _ = _ckpt(tmp_path)
    model = CORUN(depth=2, dim=4)
    with pytest.raises(ValueError, match="student_init"):
        init_from_pretrain(model, make_ema(model, 0.9, False), path, student="raw")
