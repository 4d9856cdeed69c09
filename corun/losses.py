"""Every training loss of CORUN + Colabator (Fang et al., NeurIPS 2024, arXiv:2406.07966), with the authors'
weights as defaults.

Pretraining (:class:`CORUNLoss`, ``dehazing_options/train_corun_by_depth.yml``)::

    L = 1.0 · L1(J_K, clean)                                              pixel
      + 0.01 · L1(J_K · T̂_K + (1 − T̂_K), hazy)                            ASM reconstruction
      + 0.2 · Σ_l w_l · L1(φ_l(J_K), φ_l(clean)) / L1(φ_l(J_K), φ_l(hazy))   contrastive perceptual (VGG19)
      + w_clip · mean CLIP haze probability of J_K                          optional (Colabator's scorer)

Colabator fine-tuning (:class:`ColabatorLoss`, :func:`colabator_loss`; the weighted pseudo-label terms on
real photos, see :mod:`corun.colabator.finetune`).

The ASM reconstruction is the paper's atmospheric scattering model, Eq. (1), with the airlight A = 1 (as
upstream). φ_l are VGG19 activations relu1_1 … relu5_1 with weights 1/32, 1/16, 1/8, 1/4, 1; inputs stay
in [0, 1] without ImageNet normalisation (``use_input_norm: false`` upstream). J_K is the *raw* last stage
(upstream takes ``outputs[0]`` before clamping), T̂_K the last TGDM transmission.

Any restorer: the losses read a network's output through :func:`split_output` (CORUN's
:class:`~corun.model.CORUNOutput`, a plain image tensor, or a tuple whose first entry is the image, as
upstream's ``outputs[0]``). A network without transmission simply has no ASM terms.

VGG19 weights are torchvision's ImageNet file (``vgg19-dcbb9e9d.pth``) read from torchvision's usual
cache (``$TORCH_HOME/hub/checkpoints``) or a path you give. Nothing is downloaded here: when the file is
absent the perceptual term is switched off with one warning, and the loss dict says so.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .physics import reconstruct

VGG19_FILE = "vgg19-dcbb9e9d.pth"  #: torchvision's VGG19_Weights.IMAGENET1K_V1 file name
#: index of each ReLU in torchvision's ``vgg19().features``
VGG19_RELU = {"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13,
              "relu3_3": 15, "relu3_4": 17, "relu4_1": 20, "relu4_2": 22, "relu4_3": 24, "relu4_4": 26,
              "relu5_1": 29, "relu5_2": 31, "relu5_3": 33, "relu5_4": 35}
UPSTREAM_LAYER_WEIGHTS = {"relu1_1": 1 / 32, "relu2_1": 1 / 16, "relu3_1": 1 / 8, "relu4_1": 1 / 4,
                          "relu5_1": 1.0}

_warned_missing_vgg = False


@dataclass
class LossConfig:
    """Loss weights (upstream's by default). ``vgg_weights``: "auto" (torchvision's cache), a path, or None
    (perceptual term off)."""

    pixel_weight: float = 1.0
    asm_weight: float = 0.01
    perceptual_weight: float = 0.2
    perceptual_layers: dict[str, float] = field(default_factory=lambda: dict(UPSTREAM_LAYER_WEIGHTS))
    vgg_weights: str | None = "auto"
    clip_weight: float = 0.0  #: weight of the CLIP haze-probability term (needs a scorer)
    #: transmission floor t₀ of the *target* (0 = off, the paper's recipe): where the synthetic haze left
    #: t < t₀ the target is :func:`floored_target` instead of the clean image, so the network is never
    #: asked to recover scene detail the haze destroyed (the CPU default-weights recipe uses 0.1)
    target_t_floor: float = 0.0


class Restored(NamedTuple):
    """What the losses read from a network's output (:func:`split_output`)."""

    raw: Tensor  #: the raw (unclamped) restored image, CORUN's last stage J_K
    transmission: Tensor | None  #: CORUN's last transmission T̂_K; None for a network without one
    image: Tensor  #: the restored image in [0, 1] (CORUN's ``image``; else ``raw`` clamped)


def split_output(output) -> Restored:
    """A network's output as :class:`Restored`: a :class:`~corun.model.CORUNOutput` (or anything with
    ``stages``, ``transmissions`` and ``image``), an image tensor, or a tuple / list whose first entry is the
    image (upstream's generic Colabator reads ``outputs[0]``)."""
    if hasattr(output, "stages") and hasattr(output, "transmissions"):
        t = output.transmissions[-1] if output.transmissions else None
        return Restored(output.stages[-1] if output.stages else output.image, t, output.image)
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if isinstance(output, Tensor):
        return Restored(output, None, output.clamp(0, 1))
    raise TypeError(f"a restorer must return an image tensor, a tuple starting with one or a CORUNOutput, "
                    f"got {type(output).__name__}")


def floored_target(clean: Tensor, t: Tensor, A: Tensor, t_floor: float) -> Tensor:
    """The clean image dehazed only as far as a transmission floor t₀ allows (He et al.'s DCP t₀, applied
    to the training target): with τ = max(t, t₀),

        J₀ = A + (J − A) · t / τ

    which is J where t ≥ t₀ and, where the haze is denser, the scene's contrast amplified by 1/t₀ rather than
    1/t. J₀ has no structure the hazy image does not show: a model trained on it leaves residual haze in
    very dense fog instead of inventing texture there. ``A``: (B, 3) or (B,) airlight; ``t``: (B, 1, H, W).
    """
    if t_floor <= 0:
        return clean
    a = A.to(clean.device, clean.dtype)
    a = a.view(a.shape[0], -1, 1, 1)
    ratio = t / t.clamp_min(t_floor)
    return (a + (clean - a) * ratio).clamp(0, 1)


def default_vgg19_path() -> Path:
    """Where torchvision keeps the downloaded VGG19 ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def find_vgg19_weights(spec: str | os.PathLike | None = "auto") -> Path | None:
    """Resolve ``spec`` ("auto", a path, or None) to an existing weights file, or None."""
    if spec is None or spec == "" or spec == "none":
        return None
    path = default_vgg19_path() if spec == "auto" else Path(spec)
    return path if path.is_file() else None


class VGGFeatures(nn.Module):
    """Frozen VGG19 ``features`` cut after the deepest requested ReLU; returns {layer name: activation}."""

    def __init__(self, layers: list[str], weights: str | os.PathLike | None = None):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        bad = [n for n in layers if n not in VGG19_RELU]
        if bad:
            raise ValueError(f"unknown VGG19 layer(s) {bad}; known: {sorted(VGG19_RELU)}")
        self.layers = {VGG19_RELU[n]: n for n in layers}
        features = make_layers(cfgs["E"], batch_norm=False)  # vgg19().features, without the classifier
        if weights is not None:
            sd = torch.load(weights, map_location="cpu", weights_only=True)
            features.load_state_dict({k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")})
        # inplace ReLUs would overwrite the activations we keep
        feats = [nn.ReLU(inplace=False) if isinstance(m, nn.ReLU) else m
                 for m in list(features)[: max(self.layers) + 1]]
        self.features = nn.Sequential(*feats)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always in eval mode
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                out[self.layers[i]] = x
        return out


class ContrastPerceptualLoss(nn.Module):
    """Σ_l w_l · L1(φ_l(x), φ_l(positive)) / L1(φ_l(x), φ_l(negative)), times ``weight``.

    Pulls the output towards the clean image's features and pushes it away from the hazy input's.
    ``eps`` guards the denominator (upstream has none; 1e-7 changes nothing in practice).
    """

    def __init__(self, vgg: VGGFeatures, layer_weights: dict[str, float], weight: float = 0.2,
                 eps: float = 1e-7):
        super().__init__()
        self.vgg, self.layer_weights, self.weight, self.eps = vgg, dict(layer_weights), weight, eps

    def forward(self, x: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        fx = self.vgg(x)
        with torch.no_grad():
            fp, fn = self.vgg(positive.detach()), self.vgg(negative.detach())
        total = x.new_zeros(())
        for name, w in self.layer_weights.items():
            total = total + w * F.l1_loss(fx[name], fp[name]) / (F.l1_loss(fx[name], fn[name]) + self.eps)
        return self.weight * total


HazeScorer = Callable[[Tensor], Tensor]  #: image batch (B,3,H,W) in [0,1] → haze probability per image (B,)


class CORUNLoss(nn.Module):
    """The full pretraining objective (module docstring). ``forward(output, clean, hazy)`` → (total, {term: value}).

    ``vgg``: a ready :class:`VGGFeatures` (tests pass a randomly initialised one); otherwise it is built
    from ``cfg.vgg_weights`` and the perceptual term is dropped with one warning when no file is found.
    ``haze_scorer``: the hook for Colabator's CLIP haze-probability scorer, used when ``cfg.clip_weight > 0``.
    """

    def __init__(self, cfg: LossConfig | None = None, vgg: VGGFeatures | None = None,
                 haze_scorer: HazeScorer | None = None):
        super().__init__()
        self.cfg = cfg = cfg or LossConfig()
        self.perceptual: ContrastPerceptualLoss | None = None
        self.perceptual_status = "off (weight 0)"
        if cfg.perceptual_weight > 0 and vgg is None and cfg.vgg_weights in (None, "", "none"):
            self.perceptual_status = "off (loss.vgg_weights is null)"
        elif cfg.perceptual_weight > 0:
            if vgg is None:
                path = find_vgg19_weights(cfg.vgg_weights)
                if path is not None:
                    vgg = VGGFeatures(list(cfg.perceptual_layers), weights=path)
                    self.perceptual_status = f"on (VGG19 from {path})"
                else:
                    self.perceptual_status = "off (no VGG19 weights)"
                    _warn_missing_vgg(cfg.vgg_weights)
            else:
                self.perceptual_status = "on (given VGG)"
            if vgg is not None:
                self.perceptual = ContrastPerceptualLoss(vgg, cfg.perceptual_layers, cfg.perceptual_weight)
        self.haze_scorer = haze_scorer
        if cfg.clip_weight > 0 and haze_scorer is None:
            raise ValueError("loss.clip_weight > 0 needs a haze scorer (Colabator's CLIP scorer)")

    def forward(self, output, clean: Tensor, hazy: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``output``: the network's output (:func:`split_output`); the ASM term needs a transmission."""
        cfg = self.cfg
        j, t, _ = split_output(output)
        terms: dict[str, Tensor] = {}
        terms["l_pix"] = cfg.pixel_weight * F.l1_loss(j, clean)
        if cfg.asm_weight > 0 and t is not None:
            terms["l_asm"] = cfg.asm_weight * F.l1_loss(reconstruct(j, t), hazy)
        if self.perceptual is not None:
            terms["l_contrast_percep"] = self.perceptual(j.float(), clean.float(), hazy.float())
        if cfg.clip_weight > 0:
            terms["l_clip"] = cfg.clip_weight * self.haze_scorer(j).mean()
        total = sum(terms.values())
        return total, terms


class PerceptualLoss(nn.Module):
    """Σ_l w_l · L1(φ_l(x), φ_l(target)) on VGG19 features (BasicSR's PerceptualLoss, L1 criterion)."""

    def __init__(self, vgg, layer_weights: dict[str, float]):
        super().__init__()
        self.vgg, self.layer_weights = vgg, dict(layer_weights)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        fx = self.vgg(x)
        with torch.no_grad():
            ft = self.vgg(target.detach())
        return sum(w * F.l1_loss(fx[n], ft[n]) for n, w in self.layer_weights.items())


class ColabatorLoss(nn.Module):
    """Colabator's fine-tuning objective (:func:`colabator_loss`); ``forward(...)`` → (total, {term: value}).

    ``cfg``: the ``colabator:`` config section (:class:`corun.colabator.finetune.ColabatorSection`; its loss
    weights are read). ``vgg``: a ready :class:`VGGFeatures` or None (perceptual terms off)."""

    def __init__(self, cfg, layer_weights: dict[str, float], vgg=None, haze_scorer=None,
                 clip_weight: float = 0.0):
        super().__init__()
        self.cfg, self.clip_weight, self.haze_scorer = cfg, clip_weight, haze_scorer
        self.perceptual = PerceptualLoss(vgg, layer_weights) if vgg is not None else None
        self.contrast = ContrastPerceptualLoss(vgg, layer_weights, 1.0) if vgg is not None else None
        if clip_weight > 0 and haze_scorer is None:
            raise ValueError("loss.clip_weight > 0 needs a haze scorer")

    def forward(self, j_syn: Tensor, clean: Tensor, j_real: Tensor, t_real: Tensor | None, real_strong: Tensor,
                labels: Tensor, weights: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return colabator_loss(self, j_syn, clean, j_real, t_real, real_strong, labels, weights)


def colabator_loss(loss: ColabatorLoss, j_syn: Tensor, clean: Tensor, j_real: Tensor, t_real: Tensor | None,
                   real_strong: Tensor, labels: Tensor, weights: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The student's loss on one synthetic + real batch (upstream's *effective* weights as defaults)::

        5 · [0.5 · L1(Ĵ_syn, clean) + mean(0.5 · |J_real − label| · w · 2)]
        + 0.005 · mean(|J_real · T̂_real + (1 − T̂_real) − real_strong| · w)     ASM, Eq. (1) with A = 1
        + 0.04 · perceptual(Ĵ_syn, clean) + 0.2 · contrastive(J_real, label, negative = real_strong)
        (+ optional CLIP haze term)

    with Ĵ_syn = clamp(J_syn, 0, 1) as upstream and w the local-coherence weight map of the pseudo labels.
    ``weights`` (B, 1, H, W) in [0, 1] broadcast over the colour channels; J are the raw last-stage outputs,
    ``t_real`` the last transmission of the student, or None for a network without one (no ASM term: the
    generic Colabator). The weights are the ``colabator:`` section's (see its field comments)."""
    c = loss.cfg
    terms: dict[str, Tensor] = {}
    if c.clamp_syn_output:
        j_syn = j_syn.clamp(0, 1)
    terms["l_syn_pix"] = c.pixel_weight * c.syn_weight * F.l1_loss(j_syn, clean)
    terms["l_real_pix"] = c.pixel_weight * c.real_weight * ((j_real - labels).abs() * weights).mean()
    if c.real_asm_weight > 0 and t_real is not None:
        terms["l_real_asm"] = c.real_asm_weight * ((reconstruct(j_real, t_real) - real_strong).abs()
                                                   * weights).mean()
    if loss.perceptual is not None and c.perceptual_weight > 0:
        terms["l_percep"] = c.perceptual_weight * loss.perceptual(j_syn.float(), clean.float())
    if loss.contrast is not None and c.real_contrast_weight > 0:
        terms["l_real_contrast"] = c.real_contrast_weight * loss.contrast(j_real.float(), labels.float(),
                                                                          real_strong.float())
    if loss.clip_weight > 0:
        terms["l_clip"] = loss.clip_weight * loss.haze_scorer(j_real).mean()
    return sum(terms.values()), terms


def _warn_missing_vgg(spec) -> None:
    global _warned_missing_vgg
    if _warned_missing_vgg:
        return
    _warned_missing_vgg = True
    where = default_vgg19_path() if spec == "auto" else spec
    warnings.warn(f"VGG19 weights not found ({where}); the contrastive perceptual loss is OFF for this run. "
                  f"Put torchvision's {VGG19_FILE} there (or set loss.vgg_weights) to enable it.",
                  stacklevel=3)
