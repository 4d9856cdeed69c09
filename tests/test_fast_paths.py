"""CORUN's fast path (corun/model_fast.py) computes the same function as the plain (upstream-transcribed) path,
and is selected per model (per module), never by a process-wide switch.

The fast path reorders the arithmetic (Gram-matrix spectral attention, matrix products instead of 1×1
convolutions, fused oneDNN conv/linear + GELU kernels, row bands on CPU); in float64 the two agree to
rounding (~1e-13), in float32 within 1e-4, and their gradients agree too. The authors' fixture is checked
on every path in tests/test_model.py.
"""
from __future__ import annotations

import copy

import pytest
import torch

import corun.model_fast as mf
from corun import CORUN
from corun.inference import run_model
from corun.model_fast import fast_enabled, fast_path, set_fast


def _scaled_init(model: CORUN, seed: int = 0) -> CORUN:
    """Weights of unit-gain scale (the default init's 0.02 leaves the attention nearly uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("rescale"):
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=g))
            elif not name.endswith("step_lambda"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _outputs(out) -> list[torch.Tensor]:
    return [out.image, *out.stages, *out.transmissions]


def _max_diff(a, b) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(_outputs(a), _outputs(b)))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return _scaled_init(CORUN(depth=3, dim=8)).eval()


def _smooth(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    x = torch.rand(b, c, max(h // 4, 1), max(w // 4, 1), generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(shape, generator=g)).clamp(0, 1)


def test_fast_is_the_default_and_the_switch_is_per_model_and_restores():
    model, other = CORUN(depth=2, dim=8), CORUN(depth=2, dim=8)
    mods = mf.switchable(model)
    # SpectralAttention, FeedForward, MSAB, Downsample, Upsample, MST: every one a switch of its own
    assert {type(m).__name__ for m in mods} == {"SpectralAttention", "FeedForward", "MSAB", "Downsample",
                                                "Upsample", "MST"}
    assert fast_enabled(model) and all(m.fast for m in mods)
    with fast_path(model, False) as m:
        assert m is model and not any(x.fast for x in mods)
        assert fast_enabled(other)  # another model keeps its own setting
        with fast_path(model, True):
            assert fast_enabled(model)
        assert not fast_enabled(model)
    assert fast_enabled(model)
    mods[0].fast = False  # a mixed model: not "fast", and the context manager puts each module back
    assert not fast_enabled(model)
    with fast_path(model, True):
        assert fast_enabled(model)
    assert [x.fast for x in mods] == [False] + [True] * (len(mods) - 1)
    assert set_fast(model, False) is model and not any(x.fast for x in mods)
    assert set_fast(model) is model and fast_enabled(model)
    assert not fast_enabled(CORUN(depth=2, dim=8, fast=False)) and fast_enabled(CORUN(depth=2, dim=8, fast=True))
    with pytest.raises(TypeError, match="per model"):
        set_fast(False)  # the old process-wide call
    with pytest.raises(TypeError, match="per model"), fast_path(False):
        pass


def test_the_construction_default_decides_new_modules_only(monkeypatch):
    built = CORUN(depth=2, dim=8)
    monkeypatch.setattr(mf, "DEFAULT", False)
    assert not any(m.fast for m in mf.switchable(CORUN(depth=2, dim=8)))
    assert fast_enabled(built)  # a built model is never switched by the default


def test_plain_model_never_enters_the_fast_module(monkeypatch):
    # forward() reads the module's own flag: a plain model in the same process as fast ones stays plain
    model = CORUN(depth=2, dim=8, fast=False).eval()
    for name in ("spectral_attention", "feed_forward", "msab", "downsample", "upsample", "mst", "conv3x3"):
        monkeypatch.setattr(mf, name, lambda *a, _n=name, **k: pytest.fail(f"model_fast.{_n} called"))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 16, 16))
    assert out.image.shape == (1, 3, 16, 16)


def test_mixed_modules_compute_the_same_function(small):
    # MSAB's fast path runs a block's attention / feed-forward plainly where that module's own flag is off
    x = _smooth((1, 3, 32, 32), seed=6)
    model = copy.deepcopy(small)
    with torch.no_grad():
        ref = model(x)
        for m in mf.switchable(model):
            if type(m).__name__ in ("SpectralAttention", "FeedForward", "Upsample"):
                m.fast = False
        mixed = model(x)
    assert _max_diff(mixed, ref) <= 1e-4


@pytest.mark.parametrize("shape", [(2, 3, 48, 64), (1, 3, 37, 50), (1, 3, 16, 16)])
def test_fast_inference_equals_plain(small, shape):
    x = _smooth(shape)
    with torch.no_grad(), fast_path(small, False):
        ref = run_model(small, x, keep_stages=True)
    fast = run_model(small, x, keep_stages=True)  # inference_mode: the banded oneDNN kernels on CPU
    with torch.no_grad():
        fast_nograd = small(x) if shape[-1] % 8 == 0 and shape[-2] % 8 == 0 else None
    assert fast.image.shape == x.shape
    assert _max_diff(fast, ref) <= 1e-4
    if fast_nograd is not None:  # the autograd-capable fast path (what training runs)
        with torch.no_grad(), fast_path(small, False):
            assert _max_diff(fast_nograd, small(x)) <= 1e-4


@pytest.mark.parametrize("rows", [1, 3])
def test_row_bands_of_any_height_equal_whole_image(small, rows, monkeypatch):
    # bands of 1 and 3 rows: halos clipped at the image border, bands shorter than the halo, batch loop
    x = _smooth((2, 3, 24, 16), seed=1)
    whole = run_model(small, x, keep_stages=True)
    monkeypatch.setattr(mf, "BAND_ELEMENTS", 0)
    monkeypatch.setattr(mf, "MIN_BAND_ROWS", rows)
    banded = run_model(small, x, keep_stages=True)
    assert _max_diff(banded, whole) <= 2e-5


def test_same_function_in_float64():
    torch.manual_seed(1)
    model = _scaled_init(CORUN(depth=2, dim=8), seed=1).double().eval()
    x = _smooth((2, 3, 32, 40), seed=2).double()
    with torch.no_grad():
        fast = model(x)
        with fast_path(model, False):
            ref = model(x)
    assert _max_diff(fast, ref) <= 1e-10


def test_paper_width_equals_plain():
    # dim 30 as in the paper: 1, 2, 4 and 8 heads of 30 channels on the way down
    torch.manual_seed(2)
    model = _scaled_init(CORUN(depth=2, dim=30), seed=2).eval()
    x = _smooth((1, 3, 64, 64), seed=3)
    fast = run_model(model, x, keep_stages=True)
    with torch.no_grad(), fast_path(model, False):
        ref = model(x)
    assert _max_diff(fast, ref) <= 1e-4


def test_gradients_equal_plain():
    torch.manual_seed(3)
    base = _scaled_init(CORUN(depth=2, dim=8), seed=3)
    x = _smooth((2, 3, 32, 32), seed=4)
    grads = {}
    for fast in (False, True):
        model = copy.deepcopy(base)
        xi = x.clone().requires_grad_(True)
        with fast_path(model, fast):
            out = model(xi)
        loss = sum(((s - 0.5) ** 2).mean() for s in out.stages) + sum(t.mean() for t in out.transmissions)
        loss.backward()
        grads[fast] = {"input": xi.grad, **{n: p.grad for n, p in model.named_parameters()}}
    assert grads[True].keys() == grads[False].keys()
    for name, g_plain in grads[False].items():
        g_fast = grads[True][name]
        assert g_fast is not None, name
        scale = g_plain.abs().max().item() + 1e-12
        assert (g_fast - g_plain).abs().max().item() <= 1e-4 * max(scale, 1.0), name


def test_state_dict_is_upstreams_on_both_paths():
    model = CORUN(depth=2, dim=8)
    keys = list(model.state_dict())
    assert not any("qkv" in k or "fused" in k for k in keys)
    x = torch.rand(1, 3, 16, 16)
    model(x)  # running the fast path adds or changes no parameters or buffers
    assert list(model.state_dict()) == keys
    clone = CORUN(depth=2, dim=8)
    clone.load_state_dict(model.state_dict())


def test_bf16_autocast_precision_runs_close():
    # bf16 autocast is meant for CUDA; CPU autocast exercises the same code (Gram matrices kept fp32)
    torch.manual_seed(0)
    model = CORUN(depth=2, dim=8).eval()
    x = _smooth((1, 3, 32, 32), seed=5)
    ref = run_model(model, x)
    out = run_model(model, x, precision="bf16")
    assert out.image.dtype == torch.float32 and out.image.shape == x.shape
    assert (out.image - ref.image).abs().max().item() < 0.02
    with pytest.raises(ValueError, match="precision"):
        run_model(model, x, precision="fp8")


def test_conv3x3_weight_gradient_on_nchw_copies_is_exact():
    # the CPU training convolution: forward and input gradient channels-last, weight gradient on NCHW
    from corun.model_fast import Conv3x3WeightGradNCHW

    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(Conv3x3WeightGradNCHW.apply,
                                    (x.requires_grad_(True), w.requires_grad_(True)))
