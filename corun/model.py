"""CORUN: the Cooperative Unfolding Network of Fang et al. (NeurIPS 2024, arXiv:2406.07966).

Hazy image P = J·T + A·(1 − T) (the atmospheric scattering model, Eq. 1) with A = 1 (the network works on
P / A, A = 1 upstream).
CORUN unrolls K stages of proximal gradient descent on J (scene) and T (transmission):

    stage k:  T̂_k = TGDM(P, Ĵ_{k−1}, T_{k−1})          closed-form proximal step for T
              T_k  = T-CPMM(T̂_k, J_{k−1})               learned proximal operator (absent in stage K)
              Ĵ_k = SGDM(P, J_{k−1}, T̂_k)              closed-form proximal step for J
              J_k  = S-CPMM(Ĵ_k, T̂_k)                   learned proximal operator

with J_0 = Ĵ_0 = P and T_0 = T̂_0 = 0.5. Both CPMMs are small U-shaped spectral-attention transformers
(:class:`MST`). Module and parameter names equal the authors' ``corun_arch.py`` so their released
``CORUN.pth`` loads unchanged (see :func:`corun.checkpoint.load_checkpoint`).

The class code below is upstream's arithmetic as written (the plain path). Six modules also have a fast
implementation of the same function in :mod:`corun.model_fast` (Gram-matrix spectral attention,
channels-last matrix products, fused oneDNN kernels in row bands on CPU), chosen per module by its
``fast`` attribute: on by default (:data:`corun.model_fast.DEFAULT`), off with ``CORUN(fast=False)`` or
``corun.model_fast.set_fast(model, False)``, for a while with ``corun.model_fast.fast_path(model, False)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import model_fast

EPS = 1e-7  #: replaces exact zeros in the proximal steps' denominators, as upstream
T_MIN, T_MAX = 0.05, 0.999  #: TGDM clamps its transmission estimate to this range
STEP_INIT = 1.0 / (1.0 + math.exp(-0.3))  #: λ and γ start at sigmoid(0.3) ≈ 0.5744


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
    ``fast``: compute it by :func:`corun.model_fast.spectral_attention` (through the Gram matrix of x).
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
        self.fast = model_fast.DEFAULT

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return model_fast.spectral_attention(self, x)
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
    """1×1 (C→4C) → GELU → depthwise 3×3 → GELU → 1×1 (4C→C), no biases; channel-last in and out.

    ``fast``: :func:`corun.model_fast.feed_forward` (the 1×1 convolutions as matrix products on tokens).
    """

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
        self.fast = model_fast.DEFAULT

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return model_fast.feed_forward(self, x)
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PreNorm(nn.Module):
    """LayerNorm then ``fn`` (keys ``norm.*`` and ``fn.*`` as upstream)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.norm(x))


class MSAB(nn.Module):
    """Spectral-attention block(s): x ← x + MS-MSA(x); x ← x + FFN(LayerNorm(x)). (B,C,H,W) in and out.

    ``fast``: :func:`corun.model_fast.msab` (channels-last, the residual adds fused into the products).
    """

    def __init__(self, dim: int, dim_head: int, heads: int, num_blocks: int = 1):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([SpectralAttention(dim, dim_head, heads), PreNorm(dim, FeedForward(dim))])
            for _ in range(num_blocks)
        )
        self.fast = model_fast.DEFAULT

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return model_fast.msab(self.blocks, x)
        x = x.permute(0, 2, 3, 1)
        for attn, ff in self.blocks:
            x = attn(x) + x
            x = ff(x) + x
        return x.permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """conv 3×3 (C → C/2, no bias) + PixelUnshuffle(2): halves H, W and doubles C."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2))
        self.fast = model_fast.DEFAULT

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return model_fast.downsample(self.body[0].weight, x)
        return self.body(x)


class Upsample(nn.Module):
    """conv 3×3 (C → 2C, no bias) + PixelShuffle(2): doubles H, W and halves C."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, 1, 1, bias=False), nn.PixelShuffle(2))
        self.fast = model_fast.DEFAULT

    def forward(self, x: Tensor) -> Tensor:
        if self.fast:
            return model_fast.upsample(self.body[0].weight, x)
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
    adds the residual ``x`` (so ``out_dim`` equals x's channel count). ``fast``:
    :func:`corun.model_fast.mst` (channels-last throughout, the decoder's fusion without concatenation).
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
        self.fast = model_fast.DEFAULT

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if self.fast:
            return model_fast.mst(self, x, y)
        fea = self.embedding(torch.cat([x, y], dim=1))
        skips = []
        for msab, down in self.encoder_layers:
            fea = msab(fea)
            skips.append(fea)
            fea = down(fea)
        fea = self.bottleneck(fea)
        for up, fusion, msab in self.decoder_layers:
            fea = msab(fusion(torch.cat([up(fea), skips.pop()], dim=1)))
        return self.mapping(fea) + x


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
    """The CORUN network. ``model(x)`` with x (B,3,H,W) RGB in [0,1], H and W multiples of 8.

    ``fast``: every module on the fast path (True) or the plain one (False); None (the default) leaves
    each module at :data:`corun.model_fast.DEFAULT` (fast). Switch a built model with
    :func:`corun.model_fast.set_fast`.
    """

    def __init__(self, depth: int = 4, dim: int = 30, levels: int = 3,
                 num_blocks: tuple[int, ...] = (1, 1, 1), fast: bool | None = None):
        super().__init__()
        if depth < 2:
            raise ValueError(f"CORUN needs depth >= 2 (a first and a last stage), got {depth}")
        self.config = CORUNConfig(depth, dim, levels, tuple(num_blocks))
        kw = {"dim": dim, "levels": levels, "num_blocks": tuple(num_blocks)}
        self.first = CORUNStage(**kw)
        self.basic = nn.Sequential(*[CORUNStage(**kw) for _ in range(depth - 2)])
        self.last = CORUNStage(**kw, last=True)
        if fast is not None:
            model_fast.set_fast(self, fast)

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
