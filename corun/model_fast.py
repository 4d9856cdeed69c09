"""CORUN's fast path: the same functions as the network modules of :mod:`corun.model`, computed faster.

The modules of :mod:`corun.model` are written as upstream's ``corun_arch.py`` computes them (separate
q/k/v projections, permutes, unfused GELUs, concatenations). This module holds a second implementation of
six of them (``SpectralAttention``, ``FeedForward``, ``MSAB``, ``Downsample``, ``Upsample``, ``MST``)
that reorders the arithmetic: spectral attention through the Gram matrix of its input
(:func:`mixing_matrix`), 1×1 convolutions as matrix products on channel-last tokens, residual adds
accumulated into the products, no concatenation before the decoder's 1×1 fusion
(:func:`fuse_concat`), channels-last memory throughout and, when training on CPU, the dense 3×3
convolutions' weight gradients on NCHW copies (:class:`Conv3x3WeightGradNCHW`). For CPU fp32 (and bf16,
see :mod:`corun.fast_bf16`) inference it also runs each MSAB in bands of rows with oneDNN's fused
conv/linear + exact-GELU kernels, so the 4C-wide temporaries never exist at full size.

In float64 the two paths agree to ~1e-13 (the same function); in float32 to rounding (~1e-6, tested at
1e-4 against each other and against the authors' network), gradients included. Parameters and
state-dict keys are the same on both paths, so the authors' checkpoints load and ours stay theirs.

Selecting the path, per module (as timm's ``fused_attn``): each of those modules has a boolean attribute
``fast``, set at construction from :data:`DEFAULT` (the fast path), and its ``forward`` dispatches here
when it is true. For a built model:

    from corun import model_fast
    model_fast.set_fast(model, False)          # every module of ``model``: the plain path
    with model_fast.fast_path(model, False):   # the plain path for a while, then the previous settings
        ref = model(x)
    model_fast.fast_enabled(model)             # True when every switchable module runs its fast path

Imports only torch: the functions take the modules of :mod:`corun.model` and read their parameters by the
upstream names (``to_q``, ``net[0]``, ``body[0]``, …); :mod:`corun.model` imports this module, never the
other way round.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: What a newly built module's ``fast`` attribute starts as (the fast path; ``CORUN(fast=False)`` or
#: :func:`set_fast` give the plain one). Read at construction only, never in ``forward``.
DEFAULT = True


# --------------------------------------------------------------------------------------------------
# Selecting the path of a built model
# --------------------------------------------------------------------------------------------------

def switchable(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` (itself included) that have a fast path: those with a bool ``fast``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected the model (an nn.Module), got {type(model).__name__}: the fast path is "
                        "selected per model, e.g. set_fast(model, False) or fast_path(model, False)")
    return [m for m in model.modules() if isinstance(getattr(m, "fast", None), bool)]


def set_fast(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Run every module of ``model`` on the fast path (``enabled``, the default) or the plain path.

    Returns ``model``. Per model: other models (copies included, once made) keep their own settings.
    """
    for m in switchable(model):
        m.fast = bool(enabled)
    return model


def fast_enabled(model: nn.Module) -> bool:
    """Whether ``model`` runs the fast path: it has switchable modules and every one of them is fast."""
    mods = switchable(model)
    return bool(mods) and all(m.fast for m in mods)


@contextlib.contextmanager
def fast_path(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """``with fast_path(model, False): model(x)`` runs the plain path (the benchmarks' baseline), then puts
    back each module's previous setting."""
    saved = [(m, m.fast) for m in switchable(model)]
    set_fast(model, enabled)
    try:
        yield model
    finally:
        for m, fast in saved:
            m.fast = fast


# --------------------------------------------------------------------------------------------------
# Kernels: oneDNN's fused ops, row bands, the CPU training convolution
# --------------------------------------------------------------------------------------------------

_MK = torch.ops.mkldnn
_HAS_FUSED_KERNELS = all(hasattr(_MK, op) for op in ("_convolution_pointwise", "_linear_pointwise"))
_ONE = [1, 1]


def mkldnn_fusable(x: Tensor) -> bool:
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


class Conv3x3WeightGradNCHW(torch.autograd.Function):
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


def conv3x3(x: Tensor, weight: Tensor) -> Tensor:
    """conv2d(x, weight, padding=1); when training on CPU (no autocast), with the faster weight gradient."""
    if (torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and (x.requires_grad or weight.requires_grad)):
        return Conv3x3WeightGradNCHW.apply(x, weight)
    return F.conv2d(x, weight, None, 1, 1)


def _dwconv_gelu(x: Tensor, weight: Tensor) -> Tensor:
    """GELU(depthwise 3×3 conv(x)), exact (erf) GELU, zero padding, one oneDNN kernel; (B,C,H,W) CPU."""
    return _MK._convolution_pointwise(x, weight, None, _ONE, _ONE, _ONE, weight.shape[0], "gelu", [],
                                      "none")


# --------------------------------------------------------------------------------------------------
# Spectral attention (MS-MSA) through the Gram matrix of its input
# --------------------------------------------------------------------------------------------------

def mixing_matrix(attn: nn.Module, tokens: Tensor) -> Tensor:
    """The (B, C, C) matrix M with proj(attn · v) = v·M + proj.bias, from the Gram matrix of x.

    ``attn`` is a ``corun.model.SpectralAttention``, ``tokens`` its input as (B, N, C). q and k are only
    ever used through the d × d products k̂ q̂ᵀ, and both are linear in the tokens X (N × C):
    k_h = X W_kʰᵀ, q_h = X W_qʰᵀ. So with the C × C Gram matrix G = XᵀX,

        k_h q_hᵀ = W_kʰ G W_qʰᵀ,   ‖k_i‖² = (W_k G W_kᵀ)_ii,   ‖q_j‖² = (W_q G W_qᵀ)_jj,

    and the per-token q and k projections, their normalisation and the two N-long products are
    replaced by one Gram matrix (N·C² multiply-adds) and C × C algebra. attn·v then ``proj`` is
    v·M + bias with M = blockdiag(attn_hᵀ)·W_projᵀ. Computed in (at least) fp32, also under autocast.
    """
    dev = tokens.device.type
    if tokens.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(dev):
        return _mixing(attn, torch.bmm(tokens.transpose(1, 2), tokens))
    with torch.autocast(dev, enabled=False):
        if tokens.dtype == torch.bfloat16 and dev == "cpu" and not torch.is_autocast_enabled(dev):
            # the CPU bf16 path (corun.fast_bf16): bf16 products summed in fp32 by oneDNN, the C × C result
            # rounded once to bf16 and the rest in fp32 (the N-long sum is the costly part)
            return _mixing(attn, torch.bmm(tokens.transpose(1, 2), tokens).float())
        xf = tokens.float()
        return _mixing(attn, torch.bmm(xf.transpose(1, 2), xf))


def _mixing(attn: nn.Module, g: Tensor) -> Tensor:
    """M from the (B, C, C) Gram matrix ``g`` (see :func:`mixing_matrix`), in ``g``'s dtype."""
    b, c, _ = g.shape
    heads, d = attn.heads, attn.dim_head
    wq, wk = attn.to_q.weight.to(g.dtype), attn.to_k.weight.to(g.dtype)
    pq = torch.matmul(wq, g)  # (B, C, C): W_q G
    pk = torch.matmul(wk, g)  # W_k G
    nq = (pq * wq).sum(-1).clamp_min(1e-24).sqrt()  # ‖q_j‖, floored as F.normalize does (eps 1e-12)
    nk = (pk * wk).sum(-1).clamp_min(1e-24).sqrt()
    kq = torch.matmul(pk.view(b, heads, d, c), wq.view(heads, d, c).transpose(1, 2))
    a = kq / (nk.view(b, heads, d, 1) * nq.view(b, heads, 1, d)) * attn.rescale.to(g.dtype)
    a = a.softmax(dim=-1)  # (B, heads, d, d)
    wp = attn.proj.weight.to(g.dtype).t().reshape(heads, d, c)  # W_projᵀ split by input head
    return torch.matmul(a.transpose(-2, -1), wp).reshape(b, c, c)


def spectral_attention(attn: nn.Module, x: Tensor, residual: bool = False) -> Tensor:
    """MS-MSA(x) (+ x when ``residual``) on (B,H,W,C): the same function as ``SpectralAttention``'s plain
    forward.

    Uses :func:`mixing_matrix`; on CPU in fp32 inference the rest (v, v·M, the positional branch) runs in
    row bands with oneDNN's fused depthwise conv + GELU, so no full-size temporaries.
    """
    b, h, w, c = x.shape
    x = x.contiguous()
    tokens = x.view(b, h * w, c)
    m = mixing_matrix(attn, tokens)
    if mkldnn_fusable(x):
        return _attention_banded(attn, x, m, residual)
    w1, w2 = attn.pos_emb[0].weight, attn.pos_emb[2].weight
    v = F.linear(tokens, attn.to_v.weight)  # (B, N, C)
    base = tokens + attn.proj.bias if residual else attn.proj.bias.expand(b, h * w, c)
    out = torch.baddbmm(base, v, m.to(v.dtype))  # (B, N, C): [x +] proj(attn · v)
    v4 = v.view(b, h, w, c).permute(0, 3, 1, 2)  # (B,C,H,W) view, channels-last in memory
    p = F.conv2d(F.gelu(F.conv2d(v4, w1, None, 1, 1, 1, c)), w2, None, 1, 1, 1, c)
    return out.view(b, h, w, c) + p.permute(0, 2, 3, 1)


def _attention_banded(attn: nn.Module, x: Tensor, m: Tensor, residual: bool) -> Tensor:
    """CPU fp32 inference: [x +] v·M + bias + pos_emb(v) in bands of rows (2-row halo for v).

    The residual goes into the matrix: x + v·M = x·(I + W_vᵀ M), one product and no copy of x.
    """
    b, h, w, c = x.shape
    wv, w1, w2, bias = attn.to_v.weight, attn.pos_emb[0].weight, attn.pos_emb[2].weight, attn.proj.bias
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


# --------------------------------------------------------------------------------------------------
# Feed-forward network, and x + FFN(LayerNorm(x))
# --------------------------------------------------------------------------------------------------

def feed_forward(ff: nn.Module, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """FFN(x) (+ ``residual``) on channel-last (B,H,W,C) tokens without permutes (``ff``: a
    ``corun.model.FeedForward``).

    The 1×1 convolutions are matrix products over tokens, the last one accumulating into the residual.
    (CPU fp32 inference goes through :func:`prenorm_residual`'s banded kernel.)
    """
    b, h, w, c = x.shape
    w1, wd, w2 = ff.net[0].weight, ff.net[2].weight, ff.net[4].weight
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


def _feed_forward_banded(ff: nn.Module, x: Tensor, norm: nn.LayerNorm, inplace: bool = False) -> Tensor:
    """CPU fp32 inference: x + FFN(norm(x)) in bands of rows (1-row halo), all GELUs fused.

    norm(x) once, then band by band: 1×1 + GELU (oneDNN linear) → depthwise 3×3 + GELU (oneDNN conv) →
    1×1 accumulated into the output rows, so the 4C-wide intermediates never exist at full size.
    ``inplace``: accumulate into ``x`` itself (a temporary the caller owns).
    """
    b, h, w, c = x.shape
    w1, wd, w2 = ff.net[0].weight, ff.net[2].weight, ff.net[4].weight
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


def prenorm_residual(prenorm: nn.Module, x: Tensor, inplace: bool = False) -> Tensor:
    """x + FFN(LayerNorm(x)) with the residual added inside the FFN (``prenorm``: a ``corun.model.PreNorm``
    around a ``FeedForward``).

    ``inplace`` lets the CPU inference kernel accumulate into ``x`` (only for temporaries).
    """
    if mkldnn_fusable(x):
        return _feed_forward_banded(prenorm.fn, x, prenorm.norm, inplace=inplace)
    return feed_forward(prenorm.fn, prenorm.norm(x), x)


def msab(blocks: nn.ModuleList, x: Tensor) -> Tensor:
    """MSAB's blocks on (B,C,H,W): x ← x + MS-MSA(x); x ← x + FFN(LayerNorm(x)), residuals fused.

    Channels-last input makes the permute to (B,H,W,C) free. A block's attention or feed-forward whose
    own ``fast`` is off runs its plain forward.
    """
    x = x.permute(0, 2, 3, 1).contiguous()
    for attn, ff in blocks:
        x = spectral_attention(attn, x, residual=True) if attn.fast else attn(x) + x
        x = prenorm_residual(ff, x, inplace=True) if ff.fn.fast else ff(x) + x
    return x.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------
# The U-shaped MST
# --------------------------------------------------------------------------------------------------

def downsample(weight: Tensor, x: Tensor) -> Tensor:
    """``Downsample``: PixelUnshuffle(2) of the 3×3 convolution (:func:`conv3x3`)."""
    return F.pixel_unshuffle(conv3x3(x, weight), 2)


def upsample(weight: Tensor, x: Tensor) -> Tensor:
    """``Upsample``: PixelShuffle(2) of the 3×3 convolution (:func:`conv3x3`)."""
    return F.pixel_shuffle(conv3x3(x, weight), 2)


def fuse_concat(weight: Tensor, a: Tensor, b: Tensor) -> Tensor:
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


def mst(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``MST.forward`` (``net``: a ``corun.model.MST``) channels-last all the way through: the dense
    convolutions by :func:`conv3x3`, the decoder's fusion by :func:`fuse_concat`; the MSABs and the
    down/up-sampling layers run their own forwards (fast where their ``fast`` is on)."""
    inp = torch.cat([x, y], dim=1).contiguous(memory_format=torch.channels_last)
    fea = conv3x3(inp, net.embedding.weight)
    skips = []
    for block, down in net.encoder_layers:
        fea = block(fea)
        skips.append(fea)
        fea = down(fea)
    fea = net.bottleneck(fea)
    for up, fusion, block in net.decoder_layers:
        fea = block(fuse_concat(fusion.weight, up(fea), skips.pop()))
    return conv3x3(fea, net.mapping.weight) + x
