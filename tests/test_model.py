"""CORUN against the authors' network (fixture), and the closed-form proximal steps on hand values."""
from __future__ import annotations

import json
import math
import zlib

import pytest
import torch

from corun import CORUN, load_checkpoint, sgdm, tgdm
from corun.model import EPS, STEP_INIT, T_MAX, T_MIN
from corun.model_fast import fast_path


def fixture_weights(manifest: dict) -> dict[str, torch.Tensor]:
    """Rebuild the fixture's weights exactly as shared/README.md prescribes."""
    sd = {}
    for key, shape in manifest["shapes"].items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        kw = dict(generator=g, dtype=torch.float64)
        if key.endswith("step_lambda"):
            t = 0.5744 + 0.05 * torch.rand(shape, **kw)
        elif key.endswith("rescale"):
            t = 1.0 + 0.1 * torch.rand(shape, **kw)
        elif ".norm." in key and key.endswith("weight"):
            t = 1.0 + 0.1 * torch.randn(shape, **kw)
        elif key.endswith("bias"):
            t = 0.01 * torch.randn(shape, **kw)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) >= 2 else shape[0]
            t = torch.randn(shape, **kw) / math.sqrt(max(fan_in, 1))
        sd[key] = t.float()
    return sd


@pytest.fixture(scope="module")
def official(shared_dir):
    root = shared_dir / "fixtures" / "official_corun"
    manifest = json.loads((root / "manifest.json").read_text())
    case = torch.load(root / "case_a.pt", map_location="cpu")
    return manifest, case


def test_state_dict_keys_and_shapes_equal_upstream(official):
    manifest, _ = official
    ours = {k: list(v.shape) for k, v in CORUN(depth=4).state_dict().items()}
    assert ours == manifest["shapes"]


@pytest.mark.parametrize("path", ["plain", "fast", "fast_inference"])
def test_matches_official_outputs(official, tmp_path, path):
    # plain: upstream's arithmetic as written; fast: the default path under no_grad (the autograd-capable
    # code that training runs); fast_inference: inference_mode, CPU fp32 → banded oneDNN kernels
    manifest, case = official
    ckpt = tmp_path / "CORUN.pth"
    torch.save({manifest["checkpoint_key"]: fixture_weights(manifest)}, ckpt)
    model = CORUN(depth=4).eval()
    load_checkpoint(model, ckpt)
    if path == "fast_inference":
        with torch.inference_mode():
            out = model(case["input"])
    else:
        with torch.no_grad(), fast_path(model, path == "fast"):
            out = model(case["input"])
    # upstream lists the final stage first
    for ref_key in ("stage_outputs", "stage_outputs_finetune"):
        assert len(case[ref_key]) == 4
        for ours, ref in zip(out.stages[::-1], case[ref_key]):
            assert (ours - ref).abs().max().item() <= 1e-4
    for ours, ref in zip(out.transmissions[::-1], case["stage_transmissions"]):
        assert ours.shape == ref.shape == (2, 1, 48, 64)
        assert (ours - ref).abs().max().item() <= 1e-4
    assert torch.equal(out.image, out.stages[-1].clamp(0, 1))


# ---- closed-form proximal steps -----------------------------------------------------------------

def _scene(seed=0, shape=(2, 3, 5, 7)):
    g = torch.Generator().manual_seed(seed)
    j = 0.05 + 0.9 * torch.rand(shape, generator=g)
    t = 0.1 + 0.85 * torch.rand((shape[0], 1, *shape[2:]), generator=g)
    return j, t, j * t + 1 - t  # P = J·T + 1 − T (A = 1)


@pytest.mark.parametrize("step", [0.1, STEP_INIT, 3.0])
def test_sgdm_fixed_point(step):
    j, t, p = _scene()
    assert torch.allclose(sgdm(p, j, t, torch.tensor(step)), j, atol=1e-6)


@pytest.mark.parametrize("step", [0.1, STEP_INIT, 3.0])
def test_tgdm_fixed_point(step):
    j, t, p = _scene(1)
    assert torch.allclose(tgdm(p, j, t, torch.tensor(step)), t, atol=1e-6)


def test_tgdm_hand_value_and_clamp():
    # one pixel: P = (0.5, 0.6, 0.7), Ĵ = (0.2, 0.4, 0.6), T_prev = 0.5, λ = 0.5
    p = torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1)
    jh = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    s = 1 - jh
    num = (1 - p + 0.5 * 0.5 / s).sum()
    den = (s + 0.5 / s).sum()
    got = tgdm(p, jh, torch.full((1, 1, 1, 1), 0.5), torch.tensor(0.5))
    assert got.shape == (1, 1, 1, 1)
    assert got.item() == pytest.approx((num / den).item(), rel=1e-6)
    # far outside the range: clamped to [0.05, 0.999]
    hi = tgdm(torch.zeros_like(p), jh, torch.full((1, 1, 1, 1), 50.0), torch.tensor(0.5))
    lo = tgdm(torch.ones_like(p), jh, torch.zeros((1, 1, 1, 1)), torch.tensor(0.5))
    assert hi.item() == pytest.approx(T_MAX) and lo.item() == pytest.approx(T_MIN)


def test_sgdm_hand_value_and_clamp():
    p = torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1)
    jp = torch.tensor([0.3, 0.2, 0.1]).view(1, 3, 1, 1)
    t, g = 0.6, 0.5
    expected = ((t * p + t * t - t + g * jp) / (t * t + g)).clamp(0, 1)
    got = sgdm(p, jp, torch.full((1, 1, 1, 1), t), torch.tensor(g))
    assert torch.allclose(got, expected, atol=1e-7)
    assert sgdm(torch.zeros_like(p), jp, torch.full((1, 1, 1, 1), 0.9), torch.tensor(0.01)).min() == 0


def test_zero_denominators_use_eps_not_nan():
    # Ĵ = 1 makes s = 0 (→ ε); with λ = 0 and T̂ = 0 the SGDM denominator is exactly 0 (→ ε).
    p = torch.full((1, 3, 2, 2), 0.7)
    t = tgdm(p, torch.ones_like(p), torch.full((1, 1, 2, 2), 0.5), torch.tensor(0.5))
    assert torch.isfinite(t).all() and ((t >= T_MIN) & (t <= T_MAX)).all()
    j = sgdm(p, p, torch.zeros(1, 1, 2, 2), torch.tensor(0.0))
    assert torch.isfinite(j).all()
    assert EPS == 1e-7


# ---- the network's contract ---------------------------------------------------------------------

def test_forward_contract_and_init():
    torch.manual_seed(0)
    model = CORUN(depth=3, dim=8).eval()
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        out = model(x)
    assert len(out.stages) == len(out.transmissions) == 3
    assert out.image.shape == x.shape and 0 <= out.image.min() and out.image.max() <= 1
    for t in out.transmissions:
        assert t.shape == (2, 1, 16, 24) and t.min() >= T_MIN and t.max() <= T_MAX
    assert not hasattr(model.last, "trans_net") and hasattr(model.first, "trans_net")
    assert len(model.basic) == 1
    lam = model.first.trans_prox.step_lambda
    assert lam.shape == (1,) and lam.item() == pytest.approx(0.5744, abs=1e-4)
    attn = model.first.dehaze_net.bottleneck.blocks[0][0]
    assert attn.heads == 8 and torch.all(attn.proj.bias == 0) and attn.to_q.weight.std() < 0.05
    norm = model.first.dehaze_net.bottleneck.blocks[0][1].norm
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = CORUN(depth=2, dim=8)
    out = model(torch.rand(1, 3, 16, 16))
    (out.stages[-1].mean() + out.transmissions[-1].mean()).backward()
    # the last stage's TGDM output feeds nothing downstream of J_K except the loss; every parameter
    # that influences J_K or T̂_K must get a gradient
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


@pytest.mark.parametrize("shape", [(1, 3, 12, 16), (1, 1, 16, 16), (3, 16, 16)])
def test_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="multiples of 8|expects"):
        CORUN(depth=2, dim=8)(torch.rand(shape))


def test_depth_must_be_at_least_two():
    with pytest.raises(ValueError, match="depth >= 2"):
        CORUN(depth=1)
