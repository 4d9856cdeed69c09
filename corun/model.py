"""CORUN: the Cooperative Unfolding Network of Fang et al. (NeurIPS 2024, arXiv:2406.07966).

Hazy image P = J·T + A·(1 − T) with A = 1 (the network works on P / A, A = 1 upstream).
CORUN unrolls K stages of proximal gradient descent on J (scene) and T (transmission):

    stage k:  T̂_k = TGDM(P, Ĵ_{k−1}, T_{k−1})          closed-form proximal step for T
              T_k  = T-CPMM(T̂_k, J_{k−1})               learned proximal operator (absent in stage K)
              Ĵ_k = SGDM(P, J_{k−1}, T̂_k)              closed-form proximal step for J
              J_k  = S-CPMM(Ĵ_k, T̂_k)                   learned proximal operator

with J_0 = Ĵ_0 = P and T_0 = T̂_0 = 0.5. Both CPMMs are small U-shaped spectral-attention transformers
(:class:`MST`). Module and parameter names equal the authors' ``corun_arch.py`` so their released
``CORUN.pth`` loads unchanged (see :func:`corun.checkpoint.load_checkpoint`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-7  #: replaces exact zeros in the proximal steps' denominators, as upstream
T_MIN, T_MAX = 0.05, 0.999  #: TGDM clamps its transmission estimate to this range
STEP_INIT = 1.0 / (1.0 + math.exp(-0.3))  #: λ and γ start at sigmoid(0.3) ≈ 0.5744


# --------------------------------------------------------------------------------------------------
# The fast path switch
# --------------------------------------------------------------------------------------------------
#
# The MST modules below compute the same function two ways. The plain path is upstream's arithmetic as
# written in corun_arch.py (separate q/k/v projections, permutes, unfused GELUs). The fast path, the
# default, reorders it: spectral attention through the Gram matrix of its input
# (:meth:`SpectralAttention.mixing_matrix`), 1×1 convolutions as matrix products on channel-last tokens,
# residual adds accumulated into the products, no concatenation before the decoder's 1×1 fusion, and
# channels-last memory throughout. For CPU fp32 inference it also runs each MSAB in bands of rows with
# oneDNN's fused conv/linear + exact-GELU kernels, so the 4C-wide temporaries never exist at full size.
# In float64 the two paths agree to ~1e-13 (the same function); in float32 to rounding (~1e-6, tested
# at 1e-4 against each other and against the authors' network), gradients included. Parameters and
# state-dict keys are the same on both paths, so the authors' checkpoints load and ours stay theirs.

_FAST = True


def set_fast(enabled: bool) -> None:
    """Use the fast path (the default) or the plain upstream-arithmetic path, process-wide."""
    global _FAST
    _FAST = bool(enabled)


def fast_enabled() -> bool:
    """Whether CORUN currently runs its fast path."""
    return _FAST


@contextlib.contextmanager
def fast_path(enabled: bool = True) -> Iterator[None]:
    """``with fast_path(False): model(x)`` runs the plain path (the benchmarks' baseline) and restores."""
    global _FAST
    old, _FAST = _FAST, bool(enabled)
    try:
        yield
    finally:
        _FAST = old


_MK = torch.ops.mkldnn
_HAS_FUSED_KERNELS = all(hasattr(_MK, op) for op in ("_convolution_pointwise", "_linear_pointwise"))
_ONE = [1, 1]


def _mkldnn_fusable(x: Tensor) -> bool:
    """Whether the banded oneDNN kernels run: CPU fp32 (or bf16, see corun.fast_bf16) inference (no
    autograd, no autocast), oneDNN on, and not inside torch.compile (inductor lowers these fused ops only
    with constant weights; it fuses the plain ops itself)."""
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and _HAS_FUSED_KERNELS and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


#: Banded CPU inference keeps each band's widest temporary near this many floats (16 MiB): large enough
#: for two threads to share each kernel well, small enough to come from the heap. Full-size 4C-wide
#: temporaries (126 MB per FFN at 512²) are above glibc's 32 MiB mmap threshold, so they are mapped,
#: page-faulted in and unmapped on every call: measured at 512² on one thread, the plain path takes
#: 3.1 M page faults (9–11 s of system time) per forward, the banded fast path 0.55 M (1.7–2 s).
BAND_ELEMENTS = 1 << 22
MIN_BAND_ROWS = 16  #: at least this many rows per band (the halo is 1–2 rows)


def _band_rows(h: int, w: int, channels: int) -> int:
    return max(MIN_BAND_ROWS, BAND_ELEMENTS // max(1, w * channels))


class _Conv3x3WeightGradNCHW(torch.autograd.Function):
    """A 3×3 convolution (stride 1, zero padding 1, no bias) whose weight gradient runs on NCHW copies.

    For channels-last input, oneDNN's CPU weight-gradient kernel for these dense convolutions is 2–4×
    slower than on NCHW (measured at 60→120 channels, 144²: 299 ms against 92 ms for the weight
    gradient, while forward and input gradient are faster channels-last). So forward and input gradient
    stay channels-last and only the weight gradient takes two layout copies. Same math, fp32 rounding.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, None, 1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = None
        conv_bwd = torch.ops.aten.convolution_backward
        if ctx.needs_input_grad[0]:
            gx = conv_bwd(grad, x, weight, None, _ONE, _ONE, _ONE, False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = conv_bwd(grad.contiguous(), x.contiguous(), weight, None, _ONE, _ONE, _ONE, False, [0, 0], 1,
                          [False, True, False])[1]
        return gx, gw


def _conv3x3(x: Tensor, weight: Tensor) -> Tensor:
    """conv2d(x, weight, padding=1); when training on CPU (no autocast), with the faster weight gradient."""
    if (torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and (x.requires_grad or weight.requires_grad)):
        return _Conv3x3WeightGradNCHW.apply(x, weight)
    return F.conv2d(x, weight, None, 1, 1)


def _dwconv_gelu(x: Tensor, weight: Tensor) -> Tensor:
    """GELU(depthwise 3×3 conv(x)), exact (erf) GELU, zero padding, one oneDNN kernel; (B,C,H,W) CPU."""
    return _MK._convolution_pointwise(x, weight, None, _ONE, _ONE, _ONE, weight.shape[0], "gelu", [],
                                      "none")


# --------------------------------------------------------------------------------------------------
# The two closed-form proximal steps (gradient-descent modules)
# --------------------------------------------------------------------------------------------------

def _nonzero(x: Tensor) -> Tensor:
    """Replace exact zeros by EPS (upstream's masked_fill(x == 0, eps))."""
    return torch.where(x == 0, torch.full_like(x, EPS), x)


def tgdm(p: Tensor, j_hat_prev: Tensor, t_prev: Tensor, step: Tensor) -> Tensor:
    """Transmission-guided gradient-descent module (TGDM): closed-form proximal step for T.

    With s = 1 − Ĵ_{k−1} (zeros → ε) and sums over the three colour channels:

        T̂_k = Σ_c (1 − P + λ·T_{k−1}/s) / Σ_c (1 − Ĵ_{k−1} + λ/s),   clamped to [0.05, 0.999].

    p, j_hat_prev: (B,3,H,W); t_prev: (B,1,H,W); step: λ (a scalar tensor). Returns (B,1,H,W).
    """
    s = _nonzero(1 - j_hat_prev)
    num = (1 - p + step * t_prev / s).sum(dim=1, keepdim=True)
    den = _nonzero((1 - j_hat_prev + step / s).sum(dim=1, keepdim=True))
    return (num / den).clamp(T_MIN, T_MAX)


def sgdm(p: Tensor, j_prev: Tensor, t_hat: Tensor, step: Tensor) -> Tensor:
    """Scene gradient-descent module (SGDM): closed-form proximal step for J.

        Ĵ_k = (T̂·P + T̂² − T̂ + γ·J_{k−1}) / (T̂² + γ),   clamped to [0, 1].

    p, j_prev: (B,3,H,W); t_hat: (B,1,H,W); step: γ (a scalar tensor). Returns (B,3,H,W).
    """
    t2 = t_hat * t_hat
    num = t_hat * p + t2 - t_hat + step * j_prev
    return (num / _nonzero(t2 + step)).clamp(0.0, 1.0)


class _LearnedStep(nn.Module):
    """A closed-form proximal step with its learnable step size (``step_lambda`` in the state dict)."""

    def __init__(self):
        super().__init__()
        self.step_lambda = nn.Parameter(torch.tensor([STEP_INIT]))


class ProximalTransmissionBlock(_LearnedStep):
    """TGDM with its learnable step λ (``trans_prox`` in upstream's state dict)."""

    def forward(self, p: Tensor, j_hat_prev: Tensor, t_prev: Tensor) -> Tensor:
        return tgdm(p, j_hat_prev, t_prev, self.step_lambda)


class ProximalDehazingBlock(_LearnedStep):
    """SGDM with its learnable step γ (``dehaze_prox`` in upstream's state dict)."""

    def forward(self, p: Tensor, j_prev: Tensor, t_hat: Tensor) -> Tensor:
        return sgdm(p, j_prev, t_hat, self.step_lambda)


# --------------------------------------------------------------------------------------------------
# MST: the U-shaped spectral-attention transformer used by both CPMMs
# --------------------------------------------------------------------------------------------------

class SpectralAttention(nn.Module):
    """MS-MSA: multi-head attention across channels ("spectral"), not across pixels.

    For each head, q, k, v are (d × N) with N = H·W tokens; q and k are L2-normalised along tokens,
    attn = softmax(rescale · k qᵀ) is d × d, and the output is proj(attn · v) plus a positional branch
    (depthwise 3×3 → GELU → depthwise 3×3) applied to v. Works on channel-last (B,H,W,C) tensors.
    """

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.rescale = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(inner, dim, bias=True)
        self.pos_emb = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False, groups=dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False, groups=dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        if _FAST:
            return self.forward_residual(x, residual=False)
        return self.forward_plain(x)

    def mixing_matrix(self, tokens: Tensor) -> Tensor:
        """The (B, C, C) matrix M with proj(attn · v) = v·M + proj.bias, from the Gram matrix of x.

        q and k are only ever used through the d × d products k̂ q̂ᵀ, and both are linear in the tokens
        X (N × C): k_h = X W_kʰᵀ, q_h = X W_qʰᵀ. So with the C × C Gram matrix G = XᵀX,

            k_h q_hᵀ = W_kʰ G W_qʰᵀ,   ‖k_i‖² = (W_k G W_kᵀ)_ii,   ‖q_j‖² = (W_q G W_qᵀ)_jj,

        and the per-token q and k projections, their normalisation and the two N-long products are
        replaced by one Gram matrix (N·C² multiply-adds) and C × C algebra. attn·v then ``proj`` is
        v·M + bias with M = blockdiag(attn_hᵀ)·W_projᵀ. Computed in (at least) fp32, also under autocast.
        """
        dev = tokens.device.type
        if tokens.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(dev):
            return self._mixing(tokens)
        with torch.autocast(dev, enabled=False):
            return self._mixing(tokens.float())

    def _mixing(self, xf: Tensor) -> Tensor:
        b, _, c = xf.shape
        heads, d = self.heads, self.dim_head
        wq, wk = self.to_q.weight.to(xf.dtype), self.to_k.weight.to(xf.dtype)
        g = torch.bmm(xf.transpose(1, 2), xf)  # (B, C, C)
        pq = torch.matmul(wq, g)  # (B, C, C): W_q G
        pk = torch.matmul(wk, g)  # W_k G
        nq = (pq * wq).sum(-1).clamp_min(1e-24).sqrt()  # ‖q_j‖, floored as F.normalize does (eps 1e-12)
        nk = (pk * wk).sum(-1).clamp_min(1e-24).sqrt()
        kq = torch.matmul(pk.view(b, heads, d, c), wq.view(heads, d, c).transpose(1, 2))
        attn = kq / (nk.view(b, heads, d, 1) * nq.view(b, heads, 1, d)) * self.rescale.to(xf.dtype)
        attn = attn.softmax(dim=-1)  # (B, heads, d, d)
        wp = self.proj.weight.to(xf.dtype).t().reshape(heads, d, c)  # W_projᵀ split by input head
        return torch.matmul(attn.transpose(-2, -1), wp).reshape(b, c, c)

    def forward_residual(self, x: Tensor, residual: bool = True) -> Tensor:
        """Fast path: MS-MSA(x) (+ x when ``residual``), the same function as :meth:`forward_plain`.

        Uses :meth:`mixing_matrix`; on CPU in fp32 inference the rest (v, v·M, the positional branch)
        runs in row bands with oneDNN's fused depthwise conv + GELU, so no full-size temporaries.
        """
        b, h, w, c = x.shape
        x = x.contiguous()
        tokens = x.view(b, h * w, c)
        m = self.mixing_matrix(tokens)
        if _mkldnn_fusable(x):
            return self._banded(x, m, residual)
        w1, w2 = self.pos_emb[0].weight, self.pos_emb[2].weight
        v = F.linear(tokens, self.to_v.weight)  # (B, N, C)
        base = tokens + self.proj.bias if residual else self.proj.bias.expand(b, h * w, c)
        out = torch.baddbmm(base, v, m.to(v.dtype))  # (B, N, C): [x +] proj(attn · v)
        v4 = v.view(b, h, w, c).permute(0, 3, 1, 2)  # (B,C,H,W) view, channels-last in memory
        p = F.conv2d(F.gelu(F.conv2d(v4, w1, None, 1, 1, 1, c)), w2, None, 1, 1, 1, c)
        return out.view(b, h, w, c) + p.permute(0, 2, 3, 1)

    def _banded(self, x: Tensor, m: Tensor, residual: bool) -> Tensor:
        """CPU fp32 inference: [x +] v·M + bias + pos_emb(v) in bands of rows (2-row halo for v).

        The residual goes into the matrix: x + v·M = x·(I + W_vᵀ M), one product and no copy of x.
        """
        b, h, w, c = x.shape
        wv, w1, w2, bias = self.to_v.weight, self.pos_emb[0].weight, self.pos_emb[2].weight, self.proj.bias
        if residual:
            m = torch.eye(c, dtype=m.dtype) + torch.matmul(wv.t().to(m.dtype), m)  # (B, C, C), applied to x
        m = m.to(x.dtype)  # bf16 activations (corun.fast_bf16): M is computed in fp32, applied in bf16
        out = torch.empty_like(x)
        rows = _band_rows(h, w, c)
        for i in range(b):
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                a, e = max(r0 - 2, 0), min(r1 + 2, h)
                v = F.linear(x[i:i + 1, a:e], wv)  # (1, e−a, W, C)
                p = _dwconv_gelu(v.permute(0, 3, 1, 2), w1)  # zero padding = image border
                q = _MK._convolution_pointwise(p, w2, bias, _ONE, _ONE, _ONE, c, "none", [], None)
                o = out[i, r0:r1].view(-1, c)
                src = x[i, r0:r1] if residual else v[0, r0 - a:r1 - a]
                torch.mm(src.reshape(-1, c), m[i], out=o)
                o += q.permute(0, 2, 3, 1)[0, r0 - a:r1 - a].reshape(-1, c)
        return out

    def forward_plain(self, x: Tensor) -> Tensor:
        """Plain path, as upstream: separate q/k/v projections, normalise, k qᵀ, softmax, attn·v, proj."""
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        v_inp = self.to_v(tokens)

        def heads_first(t: Tensor) -> Tensor:  # (B, N, heads·d) -> (B, heads, d, N)
            return t.reshape(b, h * w, self.heads, self.dim_head).permute(0, 2, 3, 1)

        q = F.normalize(heads_first(self.to_q(tokens)), dim=-1, p=2)
        k = F.normalize(heads_first(self.to_k(tokens)), dim=-1, p=2)
        v = heads_first(v_inp)
        attn = (k @ q.transpose(-2, -1)) * self.rescale  # (B, heads, d, d)
        out = attn.softmax(dim=-1) @ v  # (B, heads, d, N)
        out = out.permute(0, 3, 1, 2).reshape(b, h * w, self.heads * self.dim_head)
        out_c = self.proj(out).view(b, h, w, c)
        out_p = self.pos_emb(v_inp.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return out_c + out_p


class FeedForward(nn.Module):
    """1×1 (C→4C) → GELU → depthwise 3×3 → GELU → 1×1 (4C→C), no biases; channel-last in and out."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        hidden = dim * mult
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, 1, bias=False),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False, groups=hidden),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        if _FAST:
            return self.forward_residual(x, None)
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward_residual(self, x: Tensor, residual: Tensor | None) -> Tensor:
        """Fast path: FFN(x) (+ ``residual``) on channel-last (B,H,W,C) tokens without permutes.

        The 1×1 convolutions are matrix products over tokens, the last one accumulating into the
        residual. (CPU fp32 inference goes through :meth:`PreNorm.forward_residual`'s banded kernel.)
        """
        b, h, w, c = x.shape
        w1, wd, w2 = self.net[0].weight, self.net[2].weight, self.net[4].weight
        hidden = w1.shape[0]
        y = F.gelu(F.linear(x.contiguous(), w1.view(hidden, c)))
        y = F.gelu(F.conv2d(y.permute(0, 3, 1, 2), wd, None, 1, 1, 1, hidden))
        y = y.permute(0, 2, 3, 1).reshape(b * h * w, hidden)
        w2t = w2.view(c, hidden).t()
        if residual is None:
            out = torch.mm(y, w2t)
        else:
            out = torch.addmm(residual.reshape(b * h * w, c), y, w2t)
        return out.view(b, h, w, c)

    def banded_residual(self, x: Tensor, norm: nn.LayerNorm, inplace: bool = False) -> Tensor:
        """CPU fp32 inference: x + FFN(norm(x)) in bands of rows (1-row halo), all GELUs fused.

        norm(x) once, then band by band: 1×1 + GELU (oneDNN linear) → depthwise 3×3 + GELU (oneDNN
        conv) → 1×1 accumulated into the output rows, so the 4C-wide intermediates never exist at full
        size. ``inplace``: accumulate into ``x`` itself (a temporary the caller owns).
        """
        b, h, w, c = x.shape
        w1, wd, w2 = self.net[0].weight, self.net[2].weight, self.net[4].weight
        hidden = w1.shape[0]
        w1m, w2t = w1.view(hidden, c), w2.view(c, hidden).t()
        x = x.contiguous()
        xn = F.layer_norm(x, (c,), norm.weight, norm.bias, norm.eps)
        out = x if inplace else x.clone()
        rows = _band_rows(h, w, hidden)
        for i in range(b):
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                a, e = max(r0 - 1, 0), min(r1 + 1, h)
                y = _MK._linear_pointwise(xn[i:i + 1, a:e], w1m, None, "gelu", [], "none")  # (1,e−a,W,4C)
                y = _dwconv_gelu(y.permute(0, 3, 1, 2), wd)  # zero padding = image border
                y = y.permute(0, 2, 3, 1)[0, r0 - a:r1 - a].reshape(-1, hidden)
                out[i, r0:r1].view(-1, c).addmm_(y, w2t)
        return out


class PreNorm(nn.Module):
    """LayerNorm then ``fn`` (keys ``norm.*`` and ``fn.*`` as upstream)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))

    def forward_residual(self, x: Tensor, inplace: bool = False) -> Tensor:
        """fn(norm(x)) + x with the residual added inside ``fn`` (fast path).

        ``inplace`` lets the CPU inference kernel accumulate into ``x`` (only for temporaries).
        """
        if isinstance(self.fn, FeedForward) and _mkldnn_fusable(x):
            return self.fn.banded_residual(x, self.norm, inplace=inplace)
        return self.fn.forward_residual(self.norm(x), x)


class MSAB(nn.Module):
    """Spectral-attention block(s): x ← x + MS-MSA(x); x ← x + FFN(LayerNorm(x)). (B,C,H,W) in and out."""

    def __init__(self, dim: int, dim_head: int, heads: int, num_blocks: int = 1):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([SpectralAttention(dim, dim_head, heads), PreNorm(dim, FeedForward(dim))])
            for _ in range(num_blocks)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        if _FAST:  # channels-last input makes this permute free
            x = x.contiguous()
            for attn, ff in self.blocks:
                x = ff.forward_residual(attn.forward_residual(x), inplace=True)
            return x.permute(0, 3, 1, 2)
        for attn, ff in self.blocks:
            x = attn(x) + x
            x = ff(x) + x
        return x.permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """conv 3×3 (C → C/2, no bias) + PixelUnshuffle(2): halves H, W and doubles C."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        if _FAST:
            return F.pixel_unshuffle(_conv3x3(x, self.body[0].weight), 2)
        return self.body(x)


class Upsample(nn.Module):
    """conv 3×3 (C → 2C, no bias) + PixelShuffle(2): doubles H, W and halves C."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, 1, 1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        if _FAST:
            return F.pixel_shuffle(_conv3x3(x, self.body[0].weight), 2)
        return self.body(x)


class EncoderLevel(nn.ModuleList):
    """[MSAB, Downsample] (indexed 0, 1 in the state dict, as upstream)."""

    def __init__(self, dim: int, dim_head: int, num_blocks: int):
        super().__init__([MSAB(dim, dim_head, dim // dim_head, num_blocks), Downsample(dim)])


class DecoderLevel(nn.ModuleList):
    """[Upsample, 1×1 fusion conv of cat(up, skip), MSAB] (indexed 0, 1, 2 as upstream)."""

    def __init__(self, dim: int, dim_head: int, num_blocks: int):
        # dim: channels coming in from the coarser level; the level works at dim // 2.
        super().__init__([
            Upsample(dim),
            nn.Conv2d(dim, dim // 2, 1, 1, bias=False),
            MSAB(dim // 2, dim_head, (dim // 2) // dim_head, num_blocks),
        ])


class MST(nn.Module):
    """U-shaped spectral-attention transformer (the CPMM proximal network).

    ``forward(x, y)`` embeds cat[x, y] (``in_dim`` channels), runs ``levels`` encoder levels, a
    bottleneck MSAB and ``levels`` decoder levels with skip connections, maps to ``out_dim`` channels and
    adds the residual ``x`` (so ``out_dim`` equals x's channel count).
    """

    def __init__(self, in_dim: int, out_dim: int, dim: int = 30, levels: int = 3,
                 num_blocks: tuple[int, ...] = (1, 1, 1)):
        super().__init__()
        if len(num_blocks) != levels:
            raise ValueError(f"num_blocks needs one entry per level ({levels}), got {num_blocks}")
        self.levels = levels
        self.embedding = nn.Conv2d(in_dim, dim, 3, 1, 1, bias=False)
        self.encoder_layers = nn.ModuleList(
            EncoderLevel(dim * 2**i, dim, num_blocks[i]) for i in range(levels)
        )
        width = dim * 2**levels
        self.bottleneck = MSAB(width, dim, width // dim, num_blocks[-1])
        self.decoder_layers = nn.ModuleList(
            DecoderLevel(width // 2**i, dim, num_blocks[levels - 1 - i]) for i in range(levels)
        )
        self.mapping = nn.Conv2d(dim, out_dim, 3, 1, 1, bias=False)
        self.apply(_init_weights)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        inp = torch.cat([x, y], dim=1)
        if _FAST:  # channels-last all the way through: convolutions, and MSAB's permutes are free
            inp = inp.contiguous(memory_format=torch.channels_last)
        fea = _conv3x3(inp, self.embedding.weight) if _FAST else self.embedding(inp)
        skips = []
        for msab, down in self.encoder_layers:
            fea = msab(fea)
            skips.append(fea)
            fea = down(fea)
        fea = self.bottleneck(fea)
        for up, fusion, msab in self.decoder_layers:
            if _FAST:
                fea = msab(_fuse_concat(fusion.weight, up(fea), skips.pop()))
            else:
                fea = msab(fusion(torch.cat([up(fea), skips.pop()], dim=1)))
        return (_conv3x3(fea, self.mapping.weight) if _FAST else self.mapping(fea)) + x


def _fuse_concat(weight: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """conv1×1(cat[a, b], weight) as two matrix products over channel-last tokens, without the cat.

    Returns (B,C,H,W) in channels-last memory (a view of a (B,H,W,C) tensor).
    """
    n, ca, h, w = a.shape
    wm = weight.view(weight.shape[0], -1)
    out = torch.mm(a.permute(0, 2, 3, 1).reshape(-1, ca), wm[:, :ca].t())
    bt = b.permute(0, 2, 3, 1).reshape(-1, b.shape[1])
    if torch.is_grad_enabled() or torch.is_autocast_enabled(out.device.type):
        out = torch.addmm(out, bt, wm[:, ca:].t())
    else:  # inference: accumulate in place, no second full-size temporary
        out.addmm_(bt, wm[:, ca:].t())
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)


def _init_weights(m: nn.Module) -> None:
    """Upstream's init: Linear trunc-normal(std 0.02, cut at ±2) and zero bias; LayerNorm 1 / 0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# One unfolding stage and the whole network
# --------------------------------------------------------------------------------------------------

class CORUNStage(nn.Module):
    """One unfolding stage: TGDM → T-CPMM (unless last) → SGDM → S-CPMM."""

    def __init__(self, dim: int = 30, levels: int = 3, num_blocks: tuple[int, ...] = (1, 1, 1),
                 last: bool = False):
        super().__init__()
        self.last = last
        self.trans_prox = ProximalTransmissionBlock()
        if not last:
            self.trans_net = MST(in_dim=4, out_dim=1, dim=dim, levels=levels, num_blocks=num_blocks)
        self.dehaze_prox = ProximalDehazingBlock()
        self.dehaze_net = MST(in_dim=4, out_dim=3, dim=dim, levels=levels, num_blocks=num_blocks)

    def forward(self, p: Tensor, t_prev: Tensor, j_prev: Tensor, j_hat_prev: Tensor):
        t_hat = self.trans_prox(p, j_hat_prev, t_prev)  # TGDM
        t = t_hat if self.last else self.trans_net(t_hat, j_prev)  # T-CPMM
        j_hat = self.dehaze_prox(p, j_prev, t_hat)  # SGDM
        j = self.dehaze_net(j_hat, t_hat)  # S-CPMM
        return t, j, t_hat, j_hat


@dataclass
class CORUNOutput:
    """What :class:`CORUN` returns.

    image: clamp(J_K, 0, 1), the dehazed image. stages: [J_1, …, J_K] raw (unclamped) stage outputs.
    transmissions: [T̂_1, …, T̂_K], the TGDM transmission estimates, each (B,1,H,W).
    """

    image: Tensor
    stages: list[Tensor] = field(default_factory=list)
    transmissions: list[Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class CORUNConfig:
    """Architecture hyper-parameters (the paper's network is the default)."""

    depth: int = 4  #: number of unfolding stages K (≥ 2)
    dim: int = 30  #: MST base width; also the attention head size
    levels: int = 3  #: MST encoder/decoder levels (H, W must be multiples of 2**levels)
    num_blocks: tuple[int, ...] = (1, 1, 1)  #: MSABs per level (last entry also sizes the bottleneck)

    @property
    def multiple(self) -> int:
        return 2**self.levels


class CORUN(nn.Module):
    """The CORUN network. ``model(x)`` with x (B,3,H,W) RGB in [0,1], H and W multiples of 8."""

    def __init__(self, depth: int = 4, dim: int = 30, levels: int = 3,
                 num_blocks: tuple[int, ...] = (1, 1, 1)):
        super().__init__()
        if depth < 2:
            raise ValueError(f"CORUN needs depth >= 2 (a first and a last stage), got {depth}")
        self.config = CORUNConfig(depth, dim, levels, tuple(num_blocks))
        kw = dict(dim=dim, levels=levels, num_blocks=tuple(num_blocks))
        self.first = CORUNStage(**kw)
        self.basic = nn.Sequential(*[CORUNStage(**kw) for _ in range(depth - 2)])
        self.last = CORUNStage(**kw, last=True)

    @property
    def depth(self) -> int:
        return self.config.depth

    def check_input(self, x: Tensor) -> None:
        m = self.config.multiple
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"CORUN expects (B,3,H,W) RGB, got shape {tuple(x.shape)}")
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"H and W must be multiples of {m}, got {tuple(x.shape[-2:])}; "
                             "pad first (corun.utils.pad_to_multiple does this)")

    def forward(self, x: Tensor) -> CORUNOutput:
        self.check_input(x)
        t = torch.full_like(x[:, :1], 0.5)  # T_0 = T̂_0 = 0.5
        j = j_hat = x  # J_0 = Ĵ_0 = P
        stages, transmissions = [], []
        for stage in (self.first, *self.basic, self.last):
            t, j, t_hat, j_hat = stage(x, t, j, j_hat)
            stages.append(j)
            transmissions.append(t_hat)
        return CORUNOutput(image=j.clamp(0, 1), stages=stages, transmissions=transmissions)
