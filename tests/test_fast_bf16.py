"""bf16 CPU inference (corun/fast_bf16.py): detected at run time, close to fp32, proximal steps kept in fp32,
weights cached until they change, and a clean fallback (autocast) where the CPU has no bf16 instructions."""
from __future__ import annotations

import math

import pytest
import torch

from corun import CORUN, fast_bf16
from corun.inference import bf16_mode, run_model
from corun.model_fast import fast_path


def _scaled(model: CORUN, seed: int = 0) -> CORUN:
    """Unit-gain weights (the default 0.02 init leaves the MSTs close to the identity: too easy a test)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("rescale"):
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=g))
    return model.eval()


def _image(shape=(2, 3, 48, 64), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(shape[0], 3, shape[2] // 8, shape[3] // 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=shape[-2:], mode="bilinear", align_corners=False)
    return (x + 0.03 * torch.rand(shape, generator=g)).clamp(0, 1)


def _psnr(a, b) -> float:
    return 10 * math.log10(1.0 / (a - b).pow(2).mean().item())


@pytest.fixture
def bf16_cpu():
    reason = fast_bf16.unavailable_reason()
    if reason:
        pytest.skip(f"bf16 CPU path not available: {reason}")


def test_detection_is_consistent():
    caps = fast_bf16.cpu_bf16_capabilities()
    assert set(caps) == {"avx512_bf16", "amx_bf16", "onednn_bf16", "aten_capability"}
    assert fast_bf16.available() == (fast_bf16.unavailable_reason() is None)
    if not (caps["avx512_bf16"] or caps["amx_bf16"]):
        assert not fast_bf16.available()
    flags = fast_bf16._cpu_flags()
    if flags and "avx512_bf16" not in flags and "amx_bf16" not in flags:
        assert not fast_bf16.available()


def test_bf16_path_is_close_to_fp32_with_fp32_proximal_steps(bf16_cpu):
    from corun.weights import default_model

    model = default_model().eval()  # trained weights (the shipped default): the case users run
    x = _image((1, 3, 96, 128), seed=7)
    assert bf16_mode(model, "cpu") == "cpu-bf16"
    ref = run_model(model, x, keep_stages=True)
    out = run_model(model, x, keep_stages=True, precision="bf16")
    for a, b in zip([out.image, *out.stages, *out.transmissions], [ref.image, *ref.stages, *ref.transmissions]):
        assert a.dtype == torch.float32 and a.shape == b.shape
    assert 45 <= _psnr(out.image, ref.image) < 120  # close, and really bf16 (not the fp32 path again)
    # T̂_1 comes from the fp32 TGDM step on the input alone: identical
    assert torch.equal(out.transmissions[0], ref.transmissions[0])
    twin = fast_bf16.bf16_copy(model)
    mst = twin.first.dehaze_net
    assert isinstance(mst, fast_bf16.BF16MST)
    assert {p.dtype for p in mst.net.parameters()} == {torch.bfloat16}
    assert twin.first.trans_prox.step_lambda.dtype == torch.float32


def test_bf16_path_is_as_accurate_as_autocast_on_a_sensitive_network(bf16_cpu):
    # unit-gain random weights amplify every rounding (bf16 autocast itself is only ~31 dB from fp32 here)
    model = _scaled(CORUN(depth=3, dim=8))
    x = _image()
    ref = run_model(model, x).image
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        auto = model(x).image.float()
    out = run_model(model, x, precision="bf16").image
    assert _psnr(out, ref) >= _psnr(auto, ref) - 1.0


def test_odd_sizes_and_tiles_run_in_bf16(bf16_cpu):
    model = _scaled(CORUN(depth=2, dim=8), seed=2)
    x = _image((1, 3, 37, 50), seed=3)
    ref = run_model(model, x, tile=32, overlap=8)
    out = run_model(model, x, tile=32, overlap=8, precision="bf16")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run_model(model, x, tile=32, overlap=8).image.float()
    # a tiny random-weight model on an odd, tiled size: as close to fp32 as torch's own bf16 autocast
    # (measured 39.8 dB here; the >= 45 dB claim is the 512² benchmark's, on the paper network)
    assert out.image.shape == x.shape and _psnr(out.image, ref.image) >= _psnr(auto, ref.image) - 1.0


def test_the_bf16_copy_is_cached_until_the_weights_change(bf16_cpu):
    model = _scaled(CORUN(depth=2, dim=8), seed=4)
    x = _image((1, 3, 32, 32), seed=5)
    first = run_model(model, x, precision="bf16").image
    twin = fast_bf16.bf16_copy(model)
    assert fast_bf16.bf16_copy(model) is twin  # unchanged weights: reused
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(0.5)  # in place, as an optimiser step
    assert fast_bf16.bf16_copy(model) is not twin
    again = run_model(model, x, precision="bf16").image
    assert not torch.equal(first, again)
    assert _psnr(again, run_model(model, x).image) >= 45  # follows the new weights


def test_dense_convolutions_dtype_follows_the_cpu_or_the_override(bf16_cpu, monkeypatch):
    model = CORUN(depth=2, dim=8).eval()
    monkeypatch.delenv(fast_bf16.DENSE_CONV_ENV, raising=False)
    timing = fast_bf16.dense_conv_timing()
    assert set(timing) == {"fp32_s", "bf16_s"} and all(0 < t < 10 for t in timing.values())
    faster = timing["bf16_s"] < 0.8 * timing["fp32_s"]
    amx = fast_bf16.cpu_bf16_capabilities()["amx_bf16"]
    assert fast_bf16.dense_conv_dtype() == (torch.bfloat16 if amx or faster else torch.float32)
    # the measured choice, both ways (without AMX)
    monkeypatch.setattr(fast_bf16, "cpu_bf16_capabilities", lambda: {"amx_bf16": False})
    for bf16_s, dtype in ((0.5, torch.bfloat16), (0.9, torch.float32)):
        monkeypatch.setattr(fast_bf16, "dense_conv_timing", lambda b=bf16_s: {"fp32_s": 1.0, "bf16_s": b})
        assert fast_bf16.dense_conv_dtype() == dtype
    monkeypatch.undo()
    for choice, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        monkeypatch.setenv(fast_bf16.DENSE_CONV_ENV, choice)
        mst = fast_bf16.bf16_copy(model).first.dehaze_net
        assert {w.dtype for w in mst.conv_weights} == {dtype}


def test_without_bf16_instructions_precision_bf16_falls_back_to_autocast(monkeypatch):
    model = CORUN(depth=2, dim=8).eval()
    x = _image((1, 3, 32, 32), seed=6)
    monkeypatch.setattr(fast_bf16, "unavailable_reason", lambda: "test: no bf16 here")
    assert bf16_mode(model, "cpu") == "autocast"
    with pytest.raises(RuntimeError, match="not available"):
        fast_bf16.forward_bf16(model, x)
    out = run_model(model, x, precision="bf16")
    assert out.image.dtype == torch.float32 and (out.image - run_model(model, x).image).abs().max() < 0.02


def test_the_plain_path_switch_means_autocast(monkeypatch):
    monkeypatch.setattr(fast_bf16, "unavailable_reason", lambda: None)  # as on a CPU with bf16 instructions
    model = CORUN(depth=2, dim=8).eval()
    x = _image((1, 3, 32, 32), seed=6)
    assert bf16_mode(model, "cpu") == "cpu-bf16" and fast_bf16.supports(model, x)
    with fast_path(model, False):  # this model on the plain path: autocast, and forward_bf16 refuses it
        assert bf16_mode(model, "cpu") == "autocast" and not fast_bf16.supports(model, x)
        with pytest.raises(RuntimeError, match="switched off"):
            fast_bf16.forward_bf16(model, x)
    assert bf16_mode(CORUN(depth=2, dim=8, fast=False), "cpu") == "autocast"
    assert bf16_mode(model, "cuda") == "autocast"
