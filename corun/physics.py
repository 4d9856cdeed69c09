"""The atmospheric scattering model (ASM) and the dark-channel-prior baseline, batched in torch.

Every function takes and returns tensors on any device; images are (B, 3, H, W) RGB in [0, 1] and maps
(inverse depth, transmission, dark channel) are (B, 1, H, W). Per-image scalars (β, A) may be Python
floats, (B,) tensors, (B, 3) tensors (per-channel A) or full maps that broadcast.

Equations
---------
(1) Koschmieder / ASM (Narasimhan & Nayar 2002; the form used by RIDCP and CORUN, Fang et al. 2024 Eq. 1):
        I(x) = J(x) t(x) + A (1 − t(x))
(2) Beer–Lambert transmission from normalised inverse depth d ∈ [0, 1] (1 = near), the RIDCP synthesis:
        t(x) = exp(−2 β (1 − d(x)))
(3) CORUN's ASM reconstruction with unit airlight (the loss target of the re-hazing branch):
        Î(x) = J(x) T(x) + (1 − T(x))
(4) Dark channel (He, Sun & Tang, CVPR 2009, Eq. 5):
        J^dark(x) = min_{y ∈ Ω(x)} min_{c ∈ {r,g,b}} J^c(y)
(5) DCP transmission estimate (He et al. 2009, Eq. 12):  t̃(x) = 1 − ω · dark(I / A)(x)
(6) Guided filter refinement (He, Sun & Tang, ECCV 2010, Eqs. 7–8)
(7) Scene radiance recovery (He et al. 2009, Eq. 22):  J(x) = (I(x) − A) / max(t(x), t0) + A
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _per_image(value, ref: Tensor) -> Tensor:
    """Broadcast a float, (B,), (B, C) or map-shaped value against a (B, C, H, W) reference."""
    v = torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
    if v.ndim == 1:
        v = v.view(-1, 1, 1, 1)
    elif v.ndim == 2:
        v = v.view(v.shape[0], v.shape[1], 1, 1)
    elif v.ndim == 3:
        v = v.unsqueeze(1)
    return v


def normalise_inv_depth(inv_depth: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-image min–max normalisation of an inverse-depth / disparity map to [0, 1] (RIDCP data step)."""
    flat = inv_depth.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (inv_depth.ndim - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (inv_depth.ndim - 1)))
    return (inv_depth - lo) / (hi - lo).clamp_min(eps)


def transmission(inv_depth: Tensor, beta) -> Tensor:
    """Eq. (2): t = exp(−2 β (1 − d)), d the normalised inverse depth (1 = near, 0 = farthest)."""
    return torch.exp(-2.0 * _per_image(beta, inv_depth) * (1.0 - inv_depth))


def hazy(clean: Tensor, t: Tensor, A) -> Tensor:
    """Eq. (1): I = J t + A (1 − t); A is a float, (B,), (B, 3) or a (B, 1|3, H, W) airlight map."""
    return clean * t + _per_image(A, clean) * (1.0 - t)


def reconstruct(J: Tensor, T: Tensor) -> Tensor:
    """Eq. (3): Î = J T + (1 − T), the ASM with A = 1 used by CORUN's reconstruction losses."""
    return J * T + (1.0 - T)


def min_filter(x: Tensor, size: int) -> Tensor:
    """Square minimum filter of odd ``size`` with edge replication (same spatial size)."""
    r = size // 2
    padded = F.pad(x, (r, r, r, r), mode="replicate")
    return -F.max_pool2d(-padded, kernel_size=size, stride=1)


def dark_channel(img: Tensor, patch: int = 15) -> Tensor:
    """Eq. (4): per-pixel minimum over colour channels, then over a ``patch``×``patch`` window."""
    return min_filter(img.amin(dim=1, keepdim=True), patch)


def estimate_airlight(img: Tensor, dark: Tensor, top_fraction: float = 0.001) -> Tensor:
    """He et al. 2009 §4.4: among the brightest ``top_fraction`` of dark-channel pixels, take the input
    pixel of highest intensity as A. Returns (B, 3)."""
    b, c = img.shape[:2]
    n = dark[0].numel()
    k = max(1, int(round(n * top_fraction)))
    idx = dark.flatten(1).topk(k, dim=1).indices                      # (B, k)
    cand = img.flatten(2).gather(2, idx.unsqueeze(1).expand(b, c, k))  # (B, 3, k)
    best = cand.sum(dim=1).argmax(dim=1)                               # brightest candidate
    return cand.gather(2, best.view(b, 1, 1).expand(b, c, 1)).squeeze(2)


def box_filter(x: Tensor, radius: int) -> Tensor:
    """Mean over a (2r+1)² window via integral images (O(1) per pixel for any radius); windows at the
    border average only the pixels inside the image."""
    def window_sum(v: Tensor, dim: int) -> Tensor:
        n = v.shape[dim]
        c = torch.cumsum(v, dim=dim)
        c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
        i = torch.arange(n, device=v.device)
        return c.index_select(dim, (i + radius + 1).clamp(max=n)) - c.index_select(dim, (i - radius).clamp(min=0))
    ones = torch.ones_like(x[:1, :1])
    return window_sum(window_sum(x, 2), 3) / window_sum(window_sum(ones, 2), 3)


def guided_filter(guide: Tensor, src: Tensor, radius: int, eps: float) -> Tensor:
    """Eqs. (6), He et al. ECCV 2010 Eqs. 7–8 with a gray guide: q = mean(a) I + mean(b),
    a = cov(I, p) / (var(I) + ε), b = mean(p) − a mean(I)."""
    mean_i = box_filter(guide, radius)
    mean_p = box_filter(src, radius)
    cov_ip = box_filter(guide * src, radius) - mean_i * mean_p
    var_i = box_filter(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_filter(a, radius) * guide + box_filter(b, radius)


def rgb_to_gray(img: Tensor) -> Tensor:
    """ITU-R BT.601 luma, (B, 1, H, W)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True)


@dataclass
class DCPConfig:
    """He et al. 2009 defaults: 15×15 patch, ω = 0.95, t0 = 0.1, top 0.1 % for A; guided filter with
    r = 60 at ~600 px (scaled here with image size) and ε = 1e-3."""

    patch: int = 15
    omega: float = 0.95
    t0: float = 0.1
    top_fraction: float = 0.001
    gf_radius: int | None = None   # None: max(4, min(H, W) // 10)
    gf_eps: float = 1e-3
    refine: bool = True


@torch.no_grad()
def dcp_dehaze(img: Tensor, cfg: DCPConfig | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Dark-channel-prior dehazing, Eqs. (4)–(7). Returns (J clamped to [0, 1], t (B,1,H,W), A (B,3))."""
    cfg = cfg or DCPConfig()
    img = img.clamp(0.0, 1.0)
    A = estimate_airlight(img, dark_channel(img, cfg.patch), cfg.top_fraction)
    A_map = A.clamp_min(1e-3).view(*A.shape, 1, 1)
    t = 1.0 - cfg.omega * dark_channel(img / A_map, cfg.patch)        # Eq. (5)
    if cfg.refine:
        radius = cfg.gf_radius or max(4, min(img.shape[-2:]) // 10)
        t = guided_filter(rgb_to_gray(img), t, radius, cfg.gf_eps)    # Eq. (6)
    t = t.clamp(0.0, 1.0)
    J = (img - A_map) / t.clamp_min(cfg.t0) + A_map                    # Eq. (7)
    return J.clamp(0.0, 1.0), t, A
