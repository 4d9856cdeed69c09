"""DA-CLIP, the degradation-aware CLIP that upstream's Colabator uses as its haze scorer.

DA-CLIP (Luo et al., ICLR 2024, arXiv:2310.01018) keeps a frozen CLIP ViT-B/32 and adds a *controller*:
a trainable copy of the image encoder whose pooled output, the **degradation embedding**, is trained to
match the text embedding of the image's degradation word ("hazy", "rainy", ...). The controller also
feeds the frozen encoder, through one zero-initialised linear map per transformer block, so that the
frozen encoder's embedding describes the clean content; that path does not enter the haze score.

Architecture (built here on open_clip, extra ``corun[clip]``)
-------------------------------------------------------------
:class:`DACLIP` wraps an ``open_clip.CLIP`` (GELU, as DA-CLIP's LAION-2B ViT-B/32 start point) and holds

* ``clip``: the frozen CLIP (text tower at the top level, image tower ``clip.visual``);
* ``visual``: the same image tower again (one module, two names; DA-CLIP's definition and strict loading
  imply that the released file stores it under both ``clip.visual.*`` and ``visual.*``, and the loader
  accepts a file with either);
* ``visual_control``: the controller, a copy of ``clip.visual`` whose ``transformer`` is a
  :class:`ControlTransformer`: the copied blocks under ``transformer.transformer.resblocks.<i>`` and the
  zero maps under ``transformer.zero_modules.<i>`` (``Linear(width, width)`` with bias);
* ``logit_scale``: DA-CLIP's own temperature (unused by the haze score, which uses 100).

Controller forward: an ordinary ViT forward (the zero maps are side outputs, not added to its own stream);
output ``d`` = ``ln_post(CLS) @ proj``, and ``z_i = zero_modules[i](x_i)`` for each block output ``x_i``.
Frozen encoder with control: after its block ``i`` the stream gets ``z_{L−1−i}`` added, i.e. the controller's
maps enter in **reverse** block order, as in the released model.

The haze score (upstream ``corun_colabator/models/colabator_by_depth_model.py``)
---------------------------------------------------------------------------------
The image (or 32×32 block) is resized bicubically so that its shorter side is 224 (torchvision's
``Resize`` on tensors, antialiased by default since torchvision 0.17), centre-cropped to 224×224 and
normalised with CLIP's mean/std; ``p = softmax(100 · d̂ · t̂ᵀ)`` over the 10 degradation words
:data:`DEGRADATIONS` (``d̂``, ``t̂`` L2-normalised, ``t`` the text embeddings of the bare words), and the raw
haze score is ``P(hazy) = p[1]``. Upstream computes it in fp16 autocast on CUDA; here in the model's dtype.

Weights: the authors' ``daclip_ViT-B-32.pt`` (see :data:`DACLIP_SOURCES`) loads as is with
:func:`load_daclip` (an open_clip training checkpoint: ``{"state_dict": ...}`` with ``module.`` prefixes,
or a bare state dict).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scorer_base import Scorer, ScorerWeightsError

DACLIP_FILE = "daclip_ViT-B-32.pt"
#: where ``daclip_ViT-B-32.pt`` is published: the DA-CLIP README's two links, and the copy the CORUN
#: authors' README points to for Colabator
DACLIP_SOURCES = {
    "DA-CLIP release, Hugging Face":
        "https://huggingface.co/weblzw/daclip-uir-ViT-B-32-irsde/blob/main/daclip_ViT-B-32.pt",
    "DA-CLIP release, Google Drive":
        "https://drive.google.com/file/d/1A6u4CaVrcpcZckGUNzEXqMF8x_JXsZdX/view?usp=sharing",
    "CORUN-Colabator README, Google Drive":
        "https://drive.google.com/file/d/1bIlKYouxwizQXbud7SXd5F5oOyoHFH4x/view?usp=sharing",
}
#: the degradation words, in the order of DA-CLIP's training and upstream's Colabator (index 1 = hazy)
DEGRADATIONS = ("motion-blurry", "hazy", "jpeg-compressed", "low-light", "noisy", "raindrop", "rainy",
                "shadowed", "snowy", "uncompleted")
#: the fixed softmax scale upstream (and the DA-CLIP README) applies to the cosine similarities
SIMILARITY_SCALE = 100.0
#: DA-CLIP's ViT-B/32 (its ``daclip_ViT-B-32.json``): open_clip ``CLIP`` keyword arguments
VIT_B_32 = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP's normalisation, used by DA-CLIP
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class DACLIPWeightsError(ScorerWeightsError):
    """``daclip_ViT-B-32.pt`` is not on this machine; the message says where to get it."""


def require_open_clip():
    """The ``open_clip`` module, or an ImportError saying how to install it."""
    try:
        import open_clip
    except ImportError as exc:
        raise ImportError("the DA-CLIP haze scorer needs open_clip: pip install -e '.[clip]' "
                          "(or pip install 'corun[clip]')") from exc
    return open_clip


def missing_weights_message(path: str | os.PathLike) -> str:
    sources = "\n".join(f"  {url}   ({label})" for label, url in DACLIP_SOURCES.items())
    return (f"DA-CLIP weights not found: {path}\n"
            f"Download the authors' {DACLIP_FILE} (DA-CLIP, Luo et al. 2024) from\n{sources}\n"
            f"and pass its path (haze_scorer: daclip:/path/to/{DACLIP_FILE}). Upstream's Colabator reads "
            f"it from ./pretrained_weights/{DACLIP_FILE}.")


# --------------------------------------------------------------------------- architecture
class ControlTransformer(nn.Module):
    """The controller's transformer: the copied blocks plus one zero-initialised ``Linear(width, width)``
    per block, whose outputs (the control signals) are returned beside the stream."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        width = transformer.width
        self.zero_modules = nn.ModuleList(nn.Linear(width, width) for _ in transformer.resblocks)
        for linear in self.zero_modules:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``x`` in the blocks' layout → (stream after the last block, [z_0, …, z_{L−1}])."""
        controls = []
        for block, zero in zip(self.transformer.resblocks, self.zero_modules):
            x = block(x)
            controls.append(zero(x))
        return x, controls


def _check_plain_vit(visual: nn.Module) -> None:
    if not isinstance(getattr(visual, "conv1", None), nn.Conv2d):
        raise ValueError("DA-CLIP needs a CLIP ViT image tower with a convolutional patch embedding")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok" \
            or getattr(visual, "global_average_pool", False):
        raise ValueError("DA-CLIP needs a CLIP ViT image tower pooled on its class token")


def _batch_first(transformer: nn.Module) -> bool:
    return bool(getattr(transformer, "batch_first", False))


def _tokens(visual: nn.Module, images: Tensor) -> Tensor:
    """Patch embedding, class token, position embedding, ``ln_pre``: (B, 1 + N, width), batch first."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x))


def _embedding(visual: nn.Module, x: Tensor) -> Tensor:
    """``ln_post`` of the class token, projected: (B, embed_dim). ``x`` batch first."""
    return visual.ln_post(x[:, 0]) @ visual.proj


def controller_forward(visual_control: nn.Module, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The degradation embedding (B, D) and the control signals of the controller."""
    x = _tokens(visual_control, images)
    batch_first = _batch_first(visual_control.transformer.transformer)
    x, controls = visual_control.transformer(x if batch_first else x.transpose(0, 1))
    return _embedding(visual_control, x if batch_first else x.transpose(0, 1)), controls


def controlled_forward(visual: nn.Module, images: Tensor, controls: Sequence[Tensor]) -> Tensor:
    """The frozen image tower with the controls added after each block, last control first: (B, D)."""
    x = _tokens(visual, images)
    batch_first = _batch_first(visual.transformer)
    x = x if batch_first else x.transpose(0, 1)
    for block, control in zip(visual.transformer.resblocks, reversed(list(controls))):
        x = block(x) + control
    return _embedding(visual, x if batch_first else x.transpose(0, 1))


class DACLIP(nn.Module):
    """DA-CLIP around an ``open_clip.CLIP`` ViT (see the module docstring for the layout)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        _check_plain_vit(clip_model.visual)
        self.clip = clip_model
        self.visual = clip_model.visual
        controller = copy.deepcopy(clip_model.visual)
        controller.transformer = ControlTransformer(controller.transformer)
        self.visual_control = controller
        self.logit_scale = nn.Parameter(clip_model.logit_scale.detach().clone())

    def encode_degradation(self, images: Tensor, normalize: bool = False) -> Tensor:
        """The controller's degradation embedding of CLIP-normalised ``images`` at the tower's size."""
        d = controller_forward(self.visual_control, images)[0]
        return F.normalize(d, dim=-1) if normalize else d

    def encode_image(self, images: Tensor, control: bool = False, normalize: bool = False):
        """Without ``control``: plain CLIP image features. With it: (content features, degradation
        embedding), the content features from the frozen tower steered by the controller."""
        if not control:
            return self.clip.encode_image(images, normalize=normalize)
        degradation, controls = controller_forward(self.visual_control, images)
        content = controlled_forward(self.clip.visual, images, controls)
        if normalize:
            content, degradation = F.normalize(content, dim=-1), F.normalize(degradation, dim=-1)
        return content, degradation

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)


def build_daclip(config: dict | None = None, device: str | torch.device | None = None) -> DACLIP:
    """A randomly initialised DA-CLIP (``config``: open_clip ``CLIP`` kwargs, default :data:`VIT_B_32`)."""
    open_clip = require_open_clip()
    clip_model = open_clip.CLIP(**copy.deepcopy(config or VIT_B_32))
    model = DACLIP(clip_model)
    return model.to(device) if device is not None else model


# --------------------------------------------------------------------------- weights
def read_daclip_state_dict(path: str | os.PathLike, weights_only: bool = True) -> dict[str, Tensor]:
    """The state dict of a DA-CLIP file, in :class:`DACLIP`'s key layout.

    Accepts an open_clip training checkpoint (``{"state_dict": ...}``, DDP ``module.`` prefixes) or a bare
    state dict; fills in the ``visual.*`` / ``clip.visual.*`` twin when a file stores only one of them."""
    try:
        try:   # memory-mapped: a training checkpoint's optimizer state is never read into memory
            obj = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=weights_only)   # legacy format
    except Exception as exc:  # pickle errors of weights_only=True, truncated downloads
        hint = " If you trust the file, pass weights_only=False." if weights_only else ""
        raise RuntimeError(f"cannot read the DA-CLIP file {path}: {exc}.{hint}") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        raise RuntimeError(f"{path} holds no state dict (found {type(obj).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for key in list(state):
        if key.startswith("clip.visual."):
            state.setdefault(key.removeprefix("clip."), state[key])
        elif key.startswith("visual."):
            state.setdefault("clip." + key, state[key])
    return state


def load_daclip(path: str | os.PathLike, device: str | torch.device = "cpu", config: dict | None = None,
                weights_only: bool = True) -> DACLIP:
    """The authors' DA-CLIP from ``path`` (``daclip_ViT-B-32.pt``), frozen, in eval mode, on ``device``.

    Raises :class:`DACLIPWeightsError` (naming the file and where to get it) before anything is built when
    the file is missing, and ImportError when open_clip is not installed. ``config``: the architecture
    (default DA-CLIP's ViT-B/32); the file must match it key for key."""
    if not Path(path).is_file():
        raise DACLIPWeightsError(missing_weights_message(path))
    require_open_clip()
    state = read_daclip_state_dict(path, weights_only=weights_only)
    with torch.device("meta"):
        model = build_daclip(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise RuntimeError(f"{path} does not match DA-CLIP's architecture: {exc}") from exc
    _rebuild_unsaved_buffers(model)
    return model.to(device).eval().requires_grad_(False)


def _rebuild_unsaved_buffers(model: nn.Module) -> None:
    """After loading into a model built on the meta device: recompute the buffers no file holds (the text
    tower's causal attention mask); any other tensor still on meta is an error."""
    for module_name, module in model.named_modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if name != "attn_mask":
                    raise RuntimeError(f"DA-CLIP buffer {module_name}.{name} was not in the file")
                n = buf.shape[-1]
                module.register_buffer(name, torch.full((n, n), float("-inf")).triu_(1), persistent=False)
    stray = [n for n, p in model.named_parameters() if p.is_meta]
    if stray:
        raise RuntimeError(f"DA-CLIP parameters not in the file: {stray[:5]}")


# --------------------------------------------------------------------------- the scorer
def clip_preprocess(images: Tensor, size: int) -> Tensor:
    """Upstream's CLIP input: bicubic resize of the shorter side to ``size`` (antialiased), centre crop
    ``size``×``size``, CLIP mean/std. Differentiable; ``images`` (B, 3, H, W) in [0, 1]."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    x = TF.resize(images, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size])
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


class DACLIPHazeScorer(Scorer):
    """Upstream's haze score: DA-CLIP's P(hazy) among the 10 degradation words (module docstring).

    Raw score: ``Σ_{k ∈ degradations} softmax(100 · d̂ · t̂ᵀ)_k`` (default ``("hazy",)``: P(hazy)), in [0, 1],
    higher = hazier; normalised ``1 − raw`` (1 = clear), upstream's global haze score. ``raw_scores`` keeps
    gradients to the input (the model is frozen), and calling the scorer returns them, so it also serves as
    the CLIP haze loss term (``CORUNLoss``'s ``haze_scorer``). With several degradations upstream's score is
    ``n − ΣP`` over n words; here the summed probability, itself in [0, 1], is normalised directly."""

    higher_is_better = False
    raw_range = (0.0, 1.0)
    max_batch = 64

    def __init__(self, weights: str | os.PathLike, device: str | torch.device = "cpu",
                 degradations: Sequence[str] = ("hazy",), weights_only: bool = True):
        if not Path(weights).is_file():
            raise DACLIPWeightsError(missing_weights_message(weights))
        open_clip = require_open_clip()
        model = load_daclip(weights, device=device, weights_only=weights_only)
        self._setup(model, open_clip.get_tokenizer("ViT-B-32"), degradations)
        self.name = f"daclip:{weights}"

    @classmethod
    def from_model(cls, model: DACLIP, tokenizer, degradations: Sequence[str] = ("hazy",),
                   name: str = "daclip:custom") -> "DACLIPHazeScorer":
        """Wrap a built :class:`DACLIP` (e.g. a small randomly initialised one) and its tokenizer."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, degradations)
        self.name = name
        return self

    def _setup(self, model: DACLIP, tokenizer, degradations: Sequence[str]) -> None:
        unknown = [d for d in degradations if d not in DEGRADATIONS]
        if unknown or not degradations:
            raise ValueError(f"degradations must be among {DEGRADATIONS}, not {list(degradations)}")
        self.model = model.eval().requires_grad_(False)
        self.degradations = tuple(degradations)
        self.indices = [DEGRADATIONS.index(d) for d in self.degradations]
        size = model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        device = next(model.parameters()).device
        with torch.no_grad():
            text = model.encode_text(tokenizer(list(DEGRADATIONS)).to(device)).float()
        self.text = F.normalize(text, dim=-1)             # (10, D)

    def degradation_probs(self, images: Tensor) -> Tensor:
        """softmax(100 · d̂ · t̂ᵀ) over :data:`DEGRADATIONS`, (B, 10); differentiable w.r.t. ``images``."""
        x = clip_preprocess(images.clamp(0.0, 1.0).to(self.text.device), self.image_size)
        d = F.normalize(self.model.encode_degradation(x).float(), dim=-1)
        return (SIMILARITY_SCALE * d @ self.text.T).softmax(dim=-1)

    def raw_scores(self, images: Tensor) -> Tensor:
        """P(hazy) per image (B,) (the sum over ``degradations``), on ``images``' device."""
        return self.degradation_probs(images)[:, self.indices].sum(dim=-1).to(images.device)

    __call__ = raw_scores
