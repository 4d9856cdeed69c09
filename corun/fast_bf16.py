"""bf16 CPU inference: CORUN's learned proximal networks (the MSTs) with bfloat16 weights and activations.

``run_model(..., precision="bf16")`` on a CPU that has bf16 instructions (AVX-512 BF16, or AMX) runs
:func:`forward_bf16`: the closed-form proximal steps (TGDM, SGDM, the paper's Eqs. for T̂_k and Ĵ_k) and
each MST's residual ``+ x`` stay in float32, while everything inside the MSTs (the dense 3×3
convolutions, the 1×1 products, the depthwise convolutions with their fused GELUs, the spectral
attention's v·M) runs on bf16 tensors through oneDNN's bf16 kernels, in the same row bands as the fp32
fast path (:mod:`corun.model_fast`). The attention's C×C Gram matrices and its softmax stay float32: they are
sums over every pixel, where bf16 rounding would move the attention weights.

What it gains depends on the CPU. With AMX, oneDNN's bf16 matrix products run on tile units many times
faster than fp32 FMAs. With AVX-512 BF16 alone it depends on the core: ``vdpbf16ps`` does 32
multiply-adds per instruction, but how many issue per cycle differs. On an Intel Xeon without AMX the
dense 3×3 convolutions were 1.5× *slower* in bf16 than in fp32 (only the memory-bound kernels gained,
from half the bytes), on an AMD EPYC (Zen 5) about 2× faster (a 2048³ matrix product 4×). So without AMX
a one-off timing picks their dtype (:func:`dense_conv_dtype`). ``benchmarks/bench_inference.py
--compare bf16`` measures the path against the fp32 fast path in one process.

Weights: a bf16 copy of the model's MSTs is made on first use and cached per model; it is rebuilt when
any parameter changes (new tensor or in-place update). The model itself is never modified.
"""
from __future__ import annotations

import copy
import functools
import os
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import CORUN, MST, CORUNOutput
from .model_fast import fast_enabled, fuse_concat, set_fast

BF16 = torch.bfloat16


# --------------------------------------------------------------------------------------------------
# What this CPU can do (detected at run time, never assumed)
# --------------------------------------------------------------------------------------------------

def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _torch_cpu_check(name: str) -> bool | None:
    """torch.cpu's private capability probes (cpuinfo-based), None where this torch lacks them."""
    fn = getattr(torch.cpu, name, None)
    if fn is None:
        return None
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001 - a probe that fails means "unknown", not an error
        return None


def cpu_bf16_capabilities() -> dict:
    """``{"avx512_bf16", "amx_bf16", "onednn_bf16", "aten_capability"}`` for this process's CPU.

    ``avx512_bf16`` / ``amx_bf16`` come from torch's cpuinfo probes, or /proc/cpuinfo's flags where torch
    has none; ``onednn_bf16`` is oneDNN's own answer (``torch.ops.mkldnn._is_mkldnn_bf16_supported``).
    """
    flags = _cpu_flags()
    avx = _torch_cpu_check("_is_avx512_bf16_supported")
    amx = _torch_cpu_check("_is_amx_tile_supported")
    if avx is None:
        avx = "avx512_bf16" in flags
    if amx is None:
        amx = "amx_bf16" in flags and "amx_tile" in flags
    else:
        amx = amx and ("amx_bf16" in flags or not flags)
    try:
        onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    try:
        aten = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        aten = "unknown"
    return {"avx512_bf16": bool(avx), "amx_bf16": bool(amx), "onednn_bf16": onednn, "aten_capability": aten}


def unavailable_reason() -> str | None:
    """Why the bf16 CPU path cannot run here (None when it can)."""
    caps = cpu_bf16_capabilities()
    if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return "oneDNN (torch.backends.mkldnn) is not available or disabled"
    if not (caps["avx512_bf16"] or caps["amx_bf16"]):
        return "this CPU has neither AVX-512 BF16 nor AMX (bf16 would only be emulated)"
    if not caps["onednn_bf16"]:
        return "oneDNN reports no bf16 support on this CPU"
    if not all(hasattr(torch.ops.mkldnn, op) for op in ("_convolution_pointwise", "_linear_pointwise")):
        return "this torch lacks oneDNN's fused pointwise kernels"
    return None


def available() -> bool:
    """Whether :func:`forward_bf16` runs with native bf16 kernels on this CPU."""
    return unavailable_reason() is None


#: Environment override of the dense 3×3 convolutions' dtype: "fp32" or "bf16" (default: by CPU).
DENSE_CONV_ENV = "CORUN_BF16_DENSE_CONV"


def dense_conv_dtype() -> torch.dtype:
    """The dtype the MSTs' dense 3×3 convolutions run in: bf16 with AMX; on AVX-512 BF16 alone, whichever
    a one-off timing (:func:`dense_conv_timing`) finds faster on this CPU — bf16 convolutions were 1.5×
    slower than fp32 on an Intel Xeon without AMX, and about 4× faster on an AMD EPYC (Zen 5), so the
    choice is measured, not assumed. :data:`DENSE_CONV_ENV` overrides it."""
    choice = os.environ.get(DENSE_CONV_ENV, "").lower()
    if choice in ("fp32", "bf16"):
        return torch.float32 if choice == "fp32" else BF16
    if cpu_bf16_capabilities()["amx_bf16"]:
        return BF16
    timing = dense_conv_timing()
    return BF16 if timing["bf16_s"] < 0.8 * timing["fp32_s"] else torch.float32


@functools.lru_cache(maxsize=1)
def dense_conv_timing(channels: int = 32, side: int = 192, repeats: int = 4) -> dict:
    """Seconds of one 3×3 convolution (``channels`` → ``channels``, ``side``², channels-last, the MSTs' case)
    in fp32 and in bf16 on this CPU with this process's threads: the best of ``repeats`` alternating runs
    after a warm-up. Measured once per process (about 0.1 s)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3, generator=gen) * 0.05
    cases = {"fp32_s": (x, w), "bf16_s": (x.to(BF16), w.to(BF16))}
    best = {k: float("inf") for k in cases}
    with torch.inference_mode():
        for k, (xi, wi) in cases.items():
            F.conv2d(xi, wi, None, 1, 1)  # warm-up: oneDNN builds its kernel
        for _ in range(repeats):
            for k, (xi, wi) in cases.items():
                t0 = time.perf_counter()
                F.conv2d(xi, wi, None, 1, 1)
                best[k] = min(best[k], time.perf_counter() - t0)
    return best


# --------------------------------------------------------------------------------------------------
# The bf16 copy of a model's MSTs
# --------------------------------------------------------------------------------------------------

class BF16MST(nn.Module):
    """An MST whose body runs in bf16; inputs, the residual ``+ x`` and the output stay float32.

    Holds a bf16 copy of the MST (:attr:`net`) and, when the dense convolutions run in fp32, float32
    copies of their weights. ``forward(x, y)`` computes the same function as ``MST.forward`` (its fast
    path): embed cat[x, y], encoder MSABs with 3×3 + PixelUnshuffle downsampling, bottleneck, decoder
    with 3×3 + PixelShuffle upsampling and the concatenation-free 1×1 fusion, 3×3 mapping, + x.
    """

    def __init__(self, mst: MST, conv_dtype: torch.dtype):
        super().__init__()
        self.net = copy.deepcopy(mst).to(BF16)
        self.conv_dtype = conv_dtype
        convs = [mst.embedding, *(lvl[1].body[0] for lvl in mst.encoder_layers),
                 *(lvl[0].body[0] for lvl in mst.decoder_layers), mst.mapping]
        self.conv_weights = [c.weight.detach().to(conv_dtype).contiguous() for c in convs]

    def _conv(self, x: Tensor, i: int) -> Tensor:
        """The i-th dense 3×3 convolution (no bias, padding 1) in :attr:`conv_dtype`; bf16 out."""
        w = self.conv_weights[i]
        return F.conv2d(x.to(w.dtype), w, None, 1, 1).to(BF16)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        net = self.net
        inp = torch.cat([x, y], dim=1).contiguous(memory_format=torch.channels_last)
        fea = self._conv(inp, 0)
        skips = []
        for i, (msab, _) in enumerate(net.encoder_layers):
            fea = msab(fea)
            skips.append(fea)
            fea = F.pixel_unshuffle(self._conv(fea, 1 + i), 2)
        fea = net.bottleneck(fea)
        levels = len(net.encoder_layers)
        for i, (_, fusion, msab) in enumerate(net.decoder_layers):
            up = F.pixel_shuffle(self._conv(fea, 1 + levels + i), 2)
            fea = msab(fuse_concat(fusion.weight, up, skips.pop()))
        w = self.conv_weights[-1]
        out = F.conv2d(fea.to(w.dtype), w, None, 1, 1)
        return out.float() + x  # the residual in fp32: T̂_k / Ĵ_k keep their precision


def _signature(model: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced or updated in place (optimiser steps, load_state_dict)."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def bf16_copy(model: CORUN) -> CORUN:
    """A copy of ``model`` whose MSTs are :class:`BF16MST` (cached until ``model``'s weights change)."""
    conv_dtype = dense_conv_dtype()
    sig = (_signature(model), conv_dtype)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    twin = set_fast(copy.deepcopy(model).float().eval(), True)  # the bf16 kernels are the fast path's
    for stage in (twin.first, *twin.basic, twin.last):
        if not stage.last:
            stage.trans_net = BF16MST(stage.trans_net, conv_dtype)
        stage.dehaze_net = BF16MST(stage.dehaze_net, conv_dtype)
    twin.requires_grad_(False)
    _CACHE[model] = (sig, twin)
    return twin


def supports(model: nn.Module, x: Tensor) -> bool:
    """Whether ``forward_bf16(model, x)`` applies: a CORUN, CPU float input, ``model`` on the fast path
    (:func:`corun.model_fast.fast_enabled`), bf16 here."""
    return (isinstance(model, CORUN) and x.device.type == "cpu" and x.is_floating_point()
            and fast_enabled(model) and available())


@torch.inference_mode()
def forward_bf16(model: CORUN, x: Tensor) -> CORUNOutput:
    """``model(x)`` with bf16 MSTs (see module docstring); outputs float32, like ``model(x)``'s."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"bf16 CPU inference is not available: {reason}")
    if not fast_enabled(model):
        raise RuntimeError("bf16 CPU inference runs CORUN's fast path; this model has it switched off "
                           "(corun.model_fast.set_fast(model, False) or fast_path(model, False))")
    return bf16_copy(model)(x.float())
