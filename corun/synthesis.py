"""Online haze synthesis (the RIDCP recipe as CORUN trains with it) and a *pseudo-real* degrader.

:class:`HazeSynthesizer` follows the authors' ``HazeOnlineDataset`` step for step, but batched in torch on
whatever device the batch lives on (per-image parameters are drawn from a seeded CPU generator, so the
same seed gives the same parameters everywhere):

1. d = normalised inverse depth (1 = near), normalised once over the *whole* image where it is read
   (:func:`corun.data.read_inv_depth`), so a crop keeps its place in the scene: far crops come out hazier
   than near ones, as upstream (``HazeOnlineDataset`` normalises the full depth map, synthesises, then
   crops); β ~ U[β₀, β₁]; t = exp(−2β(1 − d))                                                (physics Eq. 2)
2. A ~ U[A₀, A₁]; with p = ``color_p`` (1.0) a per-channel shift ~ U[−0.025, 0.025] is added
3. with p = 0.5 the clean image is darkened, J ← J^γ with γ ~ U[1.5, 3.0]
4. with p = 0.5 Gaussian noise, level ~ randint[2, 25]/255, in one of three modes drawn like upstream:
   colour (independent per channel, p = 0.4), gray (one field for all channels, p = 0.4) or
   channel-correlated (p = 0.2; covariance L²·|UᵀDU| with U a random orthonormal basis, D = diag(U[0,1)³)
   and L fixed at the *upper* level 25/255, exactly as upstream); the result is clipped to [0, 1]
5. haze: I = J t + A (1 − t)                                                                  (physics Eq. 1)
6. with p = 0.5 JPEG at quality ~ randint[30, 95] (encoded on the CPU with Pillow)

Paper vs release: the paper (and RIDCP) state A ∈ [0.25, 1.0], the default here, and so do upstream HEAD's
option files for both stages (``train_corun_by_depth.yml``, ``train_corun_with_colabator_by_depth.yml``); an
earlier version of the Colabator option file used A ∈ [0.25, 1.8] (:meth:`HazeSynthesisConfig.upstream_release`).
Upstream leaves non-JPEG outputs unclipped (A + shift can exceed 1); ``clamp_output`` (default on) clips.

:class:`PseudoRealDegrader` is deliberately *different* — spatially varying β, coloured non-uniform airlight,
blur, signal-dependent noise and strong JPEG. It stands in for real hazy photos (URHI) only where none
exist (the embedded mini dataset). Anything produced with it is labelled pseudo-real, never real.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field, replace

import numpy as np

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from . import physics

NOISE_NONE, NOISE_COLOUR, NOISE_GRAY, NOISE_CORRELATED = -1, 0, 1, 2


@dataclass
class HazeSynthesisConfig:
    """Every range of the RIDCP / CORUN online synthesis (intervals are [low, high])."""

    beta_range: tuple[float, float] = (0.2, 2.8)
    A_range: tuple[float, float] = (0.25, 1.0)
    color_p: float = 1.0
    color_range: tuple[float, float] = (-0.025, 0.025)
    gamma_p: float = 0.5
    gamma_range: tuple[float, float] = (1.5, 3.0)
    noise_p: float = 0.5
    noise_level_range: tuple[int, int] = (2, 25)          # integer levels (inclusive), divided by 255
    noise_mode_probs: tuple[float, float, float] = (0.4, 0.4, 0.2)  # colour, gray, channel-correlated
    jpeg_p: float = 0.5
    jpeg_quality_range: tuple[int, int] = (30, 95)        # inclusive
    #: min–max normalise each image given to the call. Off by default: the datasets normalise the whole
    #: image once and then crop, and re-normalising a crop would give every crop a haze-free pixel and the
    #: full transmission range wherever it was cut. Turn it on only when you pass whole, raw depth maps.
    normalise_depth: bool = False
    clamp_output: bool = True

    @classmethod
    def upstream_release(cls, **overrides) -> "HazeSynthesisConfig":
        """An earlier upstream Colabator option file's airlight range, A_range [0.25, 1.8] (HEAD: [0.25, 1.0])."""
        return replace(cls(A_range=(0.25, 1.8)), **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HazeParams:
    """Per-image draws, each a CPU tensor of length B (``A`` is (B, 3)); "not applied" is NaN / −1 / 0."""

    beta: Tensor
    A: Tensor
    color_shift: Tensor          # (B, 3), zeros where not applied
    gamma: Tensor                # NaN where not applied
    noise_mode: Tensor           # NOISE_* codes, −1 where not applied
    noise_sigma: Tensor          # in [0, 1] units, 0 where not applied
    noise_cov: Tensor            # (B, 3, 3) covariance of the correlated mode (zeros elsewhere)
    jpeg_quality: Tensor         # 0 where not applied
    noise_seed: int = 0

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in asdict(self).items()}


@dataclass
class SynthesisResult:
    hazy: Tensor
    clean: Tensor
    t: Tensor
    params: HazeParams | dict = field(default_factory=dict)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand((n, *shape), generator=g, dtype=torch.float64)


def _coin(g: torch.Generator, n: int, p: float) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def _random_correlation(g: torch.Generator, n: int, level: float) -> Tensor:
    """Upstream's channel-correlated noise covariance L²·|UᵀDU| (U orthonormal from a random 3×3 matrix)."""
    U, _ = torch.linalg.qr(torch.rand((n, 3, 3), generator=g, dtype=torch.float64))
    D = torch.diag_embed(torch.rand((n, 3), generator=g, dtype=torch.float64))
    return (level ** 2) * (U.transpose(1, 2) @ D @ U).abs()


def sample_haze_params(cfg: HazeSynthesisConfig, n: int, g: torch.Generator) -> HazeParams:
    """Draw the per-image parameters of steps 1–6 (module docstring) for a batch of ``n``."""
    beta = _uniform(g, n, *cfg.beta_range)
    A = _uniform(g, n, *cfg.A_range).unsqueeze(1).repeat(1, 3)
    shift = _uniform(g, n, *cfg.color_range, 3) * _coin(g, n, cfg.color_p).unsqueeze(1)
    gamma = torch.where(_coin(g, n, cfg.gamma_p), _uniform(g, n, *cfg.gamma_range), torch.nan)
    noisy = _coin(g, n, cfg.noise_p)
    lo, hi = cfg.noise_level_range
    level = torch.randint(lo, hi + 1, (n,), generator=g).double() / 255.0
    probs = torch.tensor(cfg.noise_mode_probs, dtype=torch.float64)
    mode = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=g)
    level = torch.where(mode == NOISE_CORRELATED, hi / 255.0, level)   # upstream: L = noise_level2 / 255
    cov = _random_correlation(g, n, 1.0) * (level ** 2).view(-1, 1, 1) * (mode == NOISE_CORRELATED).view(-1, 1, 1)
    jq = torch.randint(cfg.jpeg_quality_range[0], cfg.jpeg_quality_range[1] + 1, (n,), generator=g)
    jpeg = _coin(g, n, cfg.jpeg_p)
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return HazeParams(beta=beta.float(), A=(A + shift).float(), color_shift=shift.float(), gamma=gamma.float(),
                      noise_mode=torch.where(noisy, mode, NOISE_NONE), noise_sigma=(level * noisy).float(),
                      noise_cov=(cov * noisy.view(-1, 1, 1)).float(), jpeg_quality=jq * jpeg, noise_seed=seed)


def darken(img: Tensor, gamma: Tensor) -> Tensor:
    """Step 3: J^γ per image where γ is finite (identity where NaN)."""
    g = gamma.to(img.device, img.dtype).view(-1, 1, 1, 1)
    return torch.where(torch.isfinite(g), img.clamp_min(0).pow(torch.nan_to_num(g, nan=1.0)), img)


def gaussian_noise(img: Tensor, p: HazeParams, generator: torch.Generator | None = None) -> Tensor:
    """Step 4: the three upstream noise modes, selected per image, then clipped to [0, 1]."""
    z = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
    sigma = p.noise_sigma.to(img.device, img.dtype).view(-1, 1, 1, 1)
    mode = p.noise_mode.to(img.device).view(-1, 1, 1, 1)
    # correlated: n = M z with M Mᵀ = Σ (eigen-square-root; negative eigenvalues of |UᵀDU| clipped to 0)
    evals, evecs = torch.linalg.eigh(p.noise_cov.double())
    M = (evecs * evals.clamp_min(0).sqrt().unsqueeze(1)).to(img.device, img.dtype)
    correlated = torch.einsum("bij,bjhw->bihw", M, z)
    noise = torch.where(mode == NOISE_COLOUR, sigma * z,
                        torch.where(mode == NOISE_GRAY, sigma * z[:, :1], correlated))
    return torch.where(mode == NOISE_NONE, img, (img + noise).clamp(0.0, 1.0))


def jpeg(img: Tensor, quality: Tensor) -> Tensor:
    """Step 6: 8-bit JPEG round trip (Pillow, CPU, 4:2:0 like OpenCV) per image where ``quality`` > 0."""
    out = img.clone()
    for i, q in enumerate(quality.tolist()):
        if q > 0:
            u8 = (img[i].detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            buf = io.BytesIO()
            Image.fromarray(u8).save(buf, format="JPEG", quality=int(q))
            dec = np.asarray(Image.open(buf).convert("RGB"))
            out[i] = torch.from_numpy(dec.copy()).permute(2, 0, 1).to(img.device, img.dtype) / 255.0
    return out


class HazeSynthesizer:
    """Batched RIDCP online synthesis: ``synth(clean (B,3,H,W), inv_depth (B,1,H,W))`` → SynthesisResult.

    Seeded: two synthesizers with the same seed and inputs give identical outputs (on the same device).
    Pass ``generator`` to a call to draw from your own CPU generator instead.
    """

    def __init__(self, cfg: HazeSynthesisConfig | None = None, seed: int = 0):
        self.cfg = cfg or HazeSynthesisConfig()
        self.generator = torch.Generator().manual_seed(seed)

    def manual_seed(self, seed: int) -> "HazeSynthesizer":
        self.generator.manual_seed(seed)
        return self

    @torch.no_grad()
    def __call__(self, clean: Tensor, inv_depth: Tensor, generator: torch.Generator | None = None,
                 params: HazeParams | None = None) -> SynthesisResult:
        if clean.ndim != 4 or clean.shape[1] != 3:
            raise ValueError(f"clean must be (B, 3, H, W), got {tuple(clean.shape)}")
        if inv_depth.ndim == 3:
            inv_depth = inv_depth.unsqueeze(1)
        if inv_depth.shape[0] != clean.shape[0] or inv_depth.shape[-2:] != clean.shape[-2:]:
            raise ValueError(f"inv_depth {tuple(inv_depth.shape)} does not match clean {tuple(clean.shape)}")
        cfg = self.cfg
        p = params or sample_haze_params(cfg, clean.shape[0], generator or self.generator)
        d = inv_depth.to(clean.dtype)
        if cfg.normalise_depth:
            d = physics.normalise_inv_depth(d)
        t = physics.transmission(d, p.beta.to(clean.device, clean.dtype))           # step 1
        noise_gen = torch.Generator(device=clean.device).manual_seed(p.noise_seed)
        img = darken(clean, p.gamma)                                                  # step 3
        img = gaussian_noise(img, p, noise_gen)                                       # step 4
        img = physics.hazy(img, t, p.A.to(clean.device, clean.dtype))                 # steps 2 and 5
        img = jpeg(img, p.jpeg_quality)                                               # step 6
        if cfg.clamp_output:
            img = img.clamp(0.0, 1.0)
        return SynthesisResult(hazy=img, clean=clean, t=t, params=p)


# --------------------------------------------------------------------------------------------------
# Pseudo-real degradation (NOT the training synthesis; stands in for real hazy photos in the mini set)
# --------------------------------------------------------------------------------------------------

@dataclass
class PseudoRealConfig:
    """A harsher, spatially non-uniform haze unlike the RIDCP recipe (so that it is a *domain shift*)."""

    beta_mean_range: tuple[float, float] = (0.8, 2.2)
    beta_field_amplitude: float = 0.6        # β(x) = β̄ (1 + a f(x)), f a smooth field in [−1, 1]
    field_cells: int = 4                     # coarse grid of the smooth random fields
    A_range: tuple[float, float] = (0.6, 0.95)
    A_tint_range: tuple[float, float] = (-0.08, 0.08)   # per-channel colour cast of the airlight
    A_field_amplitude: float = 0.12                     # non-uniform airlight: A(x) = A (1 + a g(x))
    blur_sigma_range: tuple[float, float] = (0.6, 1.6)
    noise_sigma_range: tuple[float, float] = (3 / 255, 9 / 255)   # read noise
    shot_noise_range: tuple[float, float] = (0.002, 0.01)         # variance ∝ intensity
    jpeg_quality_range: tuple[int, int] = (20, 60)
    jpeg_p: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def smooth_field(n: int, h: int, w: int, cells: int, g: torch.Generator) -> Tensor:
    """A smooth random field in [−1, 1] (bicubic upsampling of a coarse uniform grid), (n, 1, h, w)."""
    coarse = torch.rand((n, 1, cells + 1, cells + 1), generator=g) * 2 - 1
    f = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return f.clamp(-1, 1)


class PseudoRealDegrader:
    """``degrade(clean, inv_depth)`` → SynthesisResult with a pseudo-real hazy image (see module docstring)."""

    def __init__(self, cfg: PseudoRealConfig | None = None, seed: int = 0):
        self.cfg = cfg or PseudoRealConfig()
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, clean: Tensor, inv_depth: Tensor) -> SynthesisResult:
        cfg, g = self.cfg, self.generator
        n, _, h, w = clean.shape
        dev, dt = clean.device, clean.dtype
        d = physics.normalise_inv_depth(inv_depth.to(dt))
        beta_bar = _uniform(g, n, *cfg.beta_mean_range).float()
        beta_map = beta_bar.view(-1, 1, 1, 1) * (1 + cfg.beta_field_amplitude * smooth_field(n, h, w, cfg.field_cells, g))
        t = physics.transmission(d, beta_map.to(dev, dt))
        A = _uniform(g, n, *cfg.A_range).unsqueeze(1) + _uniform(g, n, *cfg.A_tint_range, 3)
        A_map = A.float().view(n, 3, 1, 1) * (1 + cfg.A_field_amplitude * smooth_field(n, h, w, 2, g))
        img = physics.hazy(clean, t, A_map.clamp(0, 1).to(dev, dt))
        sigmas = _uniform(g, n, *cfg.blur_sigma_range).tolist()
        from torchvision.transforms.v2.functional import gaussian_blur  # torchvision costs ~2 s to import

        img = torch.stack([gaussian_blur(img[i], kernel_size=2 * int(3 * s) + 1, sigma=s) for i, s in enumerate(sigmas)])
        read = _uniform(g, n, *cfg.noise_sigma_range).float().view(-1, 1, 1, 1).to(dev, dt)
        shot = _uniform(g, n, *cfg.shot_noise_range).float().view(-1, 1, 1, 1).to(dev, dt)
        noise_gen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        z = torch.randn(img.shape, generator=noise_gen, device=dev, dtype=dt)
        img = (img + z * (read ** 2 + shot * img.clamp_min(0)).sqrt()).clamp(0, 1)
        q = torch.randint(cfg.jpeg_quality_range[0], cfg.jpeg_quality_range[1] + 1, (n,), generator=g)
        img = jpeg(img, q * _coin(g, n, cfg.jpeg_p)).clamp(0, 1)
        params = {"beta_mean": beta_bar.tolist(), "A": A.tolist(), "blur_sigma": sigmas,
                  "read_noise": read.flatten().tolist(), "jpeg_quality": q.tolist(), "kind": "pseudo-real"}
        return SynthesisResult(hazy=img, clean=clean, t=t, params=params)
