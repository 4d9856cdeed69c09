"""torch.compile gives CORUN's eager results: inference outputs and training gradients within fp32 rounding.

The compiled graphs run the fast path's generic ops (inside torch.compile the banded oneDNN kernels are
not used: inductor lowers them only with constant weights, and fuses the plain ops itself). The model is
tiny (depth 2, width 8, one MST level) because inductor's C++ build dominates the time on a small CPU.
Skipped, with the reason, where inductor cannot build C++ here (no compiler, or a broken toolchain).
"""
from __future__ import annotations

import copy
import functools
import shutil

import pytest
import torch

from corun import CORUN
from corun.losses import CORUNLoss, LossConfig

pytestmark = pytest.mark.slow  # trainings, notebooks, subprocesses: `make test-fast` skips this file


@functools.lru_cache(maxsize=1)
def _inductor_problem() -> str | None:
    """None when inductor compiles and runs a small CPU function here, else why not."""
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "no C++ compiler on PATH (inductor's CPU backend builds C++)"
    try:
        fn = torch.compile(lambda a: torch.nn.functional.gelu(a) * 2 + 1, backend="inductor")
        a = torch.linspace(-2, 2, 64)
        torch.testing.assert_close(fn(a), torch.nn.functional.gelu(a) * 2 + 1)
    except Exception as exc:  # noqa: BLE001 - any toolchain failure is a reason to skip
        return f"torch.compile (inductor, CPU) does not work here: {type(exc).__name__}: {str(exc)[:200]}"
    return None


@pytest.fixture(scope="module")
def inductor():
    problem = _inductor_problem()
    if problem:
        pytest.skip(problem)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _tiny(seed: int = 0) -> CORUN:
    torch.manual_seed(seed)
    model = CORUN(depth=2, dim=8, levels=1, num_blocks=(1,))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # unit-gain weights: the default 0.02 init leaves the attention nearly uniform
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("rescale"):
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=g))
    return model


def _image(shape=(2, 3, 24, 32), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(shape[0], 3, 6, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=shape[-2:], mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(shape, generator=g)).clamp(0, 1)


def _outputs(out) -> list[torch.Tensor]:
    return [out.image, *out.stages, *out.transmissions]


def test_compiled_inference_matches_eager(inductor):
    model = _tiny().eval()
    x = _image()
    compiled = torch.compile(model, backend="inductor")
    with torch.inference_mode():
        ref = model(x)  # eager: the banded oneDNN kernels of the CPU fast path
        out = compiled(x)
    for a, b in zip(_outputs(out), _outputs(ref), strict=True):
        assert a.shape == b.shape and a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)


def test_compiled_training_step_matches_eager_gradients(inductor):
    eager = _tiny(seed=3).train()
    comp_model = copy.deepcopy(eager)
    compiled = torch.compile(comp_model, backend="inductor")
    x, y = _image(seed=4), _image(seed=5)
    criterion = CORUNLoss(LossConfig(perceptual_weight=0.0))

    losses, grads = [], []
    for model, net in ((eager, eager), (comp_model, compiled)):
        loss, _ = criterion(net(x), y, x)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-7)
    scale = max(g.abs().max().item() for g in grads[0].values())
    assert scale > 0
    worst = max((grads[1][n] - grads[0][n]).abs().max().item() for n in grads[0])
    assert worst <= 1e-5 * scale, f"max |Δgrad| {worst:.3e} for max |grad| {scale:.3e}"
    assert grads[1].keys() == grads[0].keys()


def test_switching_a_compiled_model_takes_effect():
    # the path is an attribute of each module: torch.compile guards on it, so set_fast on a compiled model
    # recompiles (no inductor needed: a counting backend)
    from torch._dynamo.testing import CompileCounter

    from corun.model_fast import set_fast

    torch._dynamo.reset()
    model = _tiny(seed=6).eval()
    x = _image((1, 3, 16, 16), seed=7)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    with torch.no_grad():
        fast = compiled(x)
        frames = counter.frame_count
        compiled(x)
        assert counter.frame_count == frames  # same path: no recompilation
        set_fast(model, False)
        plain = compiled(x)
        assert counter.frame_count > frames  # the plain path: traced anew
        eager_plain = model(x)
    torch._dynamo.reset()
    for a, b in zip(_outputs(plain), _outputs(eager_plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(_outputs(fast), _outputs(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
