"""Normalised inverse depth for clean photos that come without depth (issue 16, part 1).

The haze synthesis (RIDCP's, used for CORUN pretraining) needs per-pixel normalised inverse depth
d ∈ [0, 1] (1 = near, 0 = farthest) and forms the transmission t = exp(−2β(1 − d)) (Eq. 1's Beer–Lambert
law with depth ∝ 1 − d). This module produces d for any RGB photo:

* ``"ramp"`` — a plain vertical ramp, 0 at the top row, 1 at the bottom row (the baseline).
* ``"prior"`` — an offline geometric prior that needs no weights (:func:`prior_inv_depth`).
* ``"hf:<model id or local folder>"`` — a monocular depth model through transformers'
  ``pipeline("depth-estimation")`` (upstream recommends Depth Anything, e.g.
  ``hf:depth-anything/Depth-Anything-V2-Small-hf``); needs the optional extra ``corun[depth]`` and the
  weights, and its relative inverse depth is min–max normalised.

Only numpy / scipy are imported at module level; nothing here imports the network.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
from scipy import ndimage

METHODS = ("prior", "ramp", "hf:<model>")
DEFAULT_HF_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"

#: prior parameters (the defaults were checked against the Middlebury / stereo Spearman table in data/README.md)
WORK_SIZE = 160          # long side of the working resolution of the prior
SKY_MIN_V = 0.45         # sky is bright: max(R, G, B) at least this ...
SKY_MAX_GRAD = 0.035     # ... smooth: smoothed gradient magnitude below this ...
SKY_MAX_SAT = 0.35       # ... and either low-saturated or blue-dominant
SKY_MIN_AREA = 0.01      # a sky region smaller than this fraction of the image is ignored
HORIZON_INV_DEPTH = 0.12  # inverse depth of the ground at the horizon (sky is 0)
ABOVE_SLOPE = 0.35       # inverse depth gained by non-sky structure per image height above the horizon
NO_SKY_RANGE = 0.25      # without sky (close-ups, interiors) d spans only [1 − this, 1]


class DepthError(RuntimeError):
    """A depth method cannot run (missing optional package or weights); the message says how to fix it."""


# --------------------------------------------------------------------------------------------- filters

def box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)² window (reflected border) of the first two axes."""
    size = (2 * r + 1, 2 * r + 1) + (1,) * (x.ndim - 2)
    return ndimage.uniform_filter(x, size=size, mode="reflect")


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Grey-guide guided filter (He, Sun & Tang, TPAMI 2013, Eqs. 5–8): q = mean(a)·I + mean(b) with
    a = cov(I, p) / (var(I) + ε), b = mean(p) − a·mean(I), all means over (2r+1)² boxes."""
    guide = guide.astype(np.float32)
    src = src.astype(np.float32)
    mi, mp = box_mean(guide, r), box_mean(src, r)
    cov = box_mean(guide * src, r) - mi * mp
    var = box_mean(guide * guide, r) - mi * mi
    a = cov / (var + eps)
    b = mp - a * mi
    return box_mean(a, r) * guide + box_mean(b, r)


def _downsample(img: np.ndarray, long_side: int) -> np.ndarray:
    """Area-average to roughly ``long_side`` pixels on the long side (integer factor, cropped remainder)."""
    h, w = img.shape[:2]
    f = max(1, int(round(max(h, w) / long_side)))
    if f == 1:
        return img.astype(np.float32)
    hh, ww = (h // f) * f, (w // f) * f
    x = img[:hh, :ww].astype(np.float32)
    return x.reshape(hh // f, f, ww // f, f, *img.shape[2:]).mean(axis=(1, 3))


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` (pixel centres aligned)."""
    h, w = a.shape
    ys = (np.arange(shape[0], dtype=np.float32) + 0.5) * h / shape[0] - 0.5
    xs = (np.arange(shape[1], dtype=np.float32) + 0.5) * w / shape[1] - 0.5
    yy, xx = np.meshgrid(ys.clip(0, h - 1), xs.clip(0, w - 1), indexing="ij")
    return ndimage.map_coordinates(a.astype(np.float32), [yy, xx], order=1, mode="nearest")


# ----------------------------------------------------------------------------------------------- ramp

def ramp_inv_depth(h: int, w: int) -> np.ndarray:
    """Baseline: 0 (far) at the top row, 1 (near) at the bottom row, constant along rows."""
    col = np.linspace(0.0, 1.0, h, dtype=np.float32) if h > 1 else np.ones(1, np.float32)
    return np.ascontiguousarray(np.broadcast_to(col[:, None], (h, w)))


# ---------------------------------------------------------------------------------------------- prior

def sky_mask(rgb: np.ndarray) -> np.ndarray:
    """Sky: bright, smooth, low-saturation or blue-dominant pixels in regions touching the top border."""
    v = rgb.max(axis=2)
    sat = (v - rgb.min(axis=2)) / np.maximum(v, 1e-6)
    grey = rgb.mean(axis=2)
    grad = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1)) / 8.0
    grad = ndimage.uniform_filter(grad, size=3)
    blue = (rgb[..., 2] >= rgb[..., 0]) & (rgb[..., 2] >= rgb[..., 1] - 0.03)
    cand = (v >= SKY_MIN_V) & (grad <= SKY_MAX_GRAD) & ((sat <= SKY_MAX_SAT) | blue)
    labels, n = ndimage.label(cand)
    if n == 0:
        return np.zeros(cand.shape, bool)
    top = np.unique(labels[0][labels[0] > 0])
    sky = np.isin(labels, top)
    if sky.mean() < SKY_MIN_AREA:
        return np.zeros(cand.shape, bool)
    # clouds / small gaps inside the sky belong to it; a filled hole never touches the lower border
    return ndimage.binary_fill_holes(sky)


def horizon_row(sky: np.ndarray) -> float | None:
    """Horizon as the lowest sky seen in most columns: the 90th percentile over columns with sky of each
    column's lowest sky row (None without sky)."""
    cols = sky.any(axis=0)
    if not cols.any():
        return None
    h = sky.shape[0]
    lowest = h - 1 - np.argmax(sky[::-1, cols], axis=0)
    return float(np.percentile(lowest, 90))


def geometric_inv_depth(shape: tuple[int, int], horizon: float | None, sky: np.ndarray) -> np.ndarray:
    """Ground plane below the horizon, slowly nearer structure above it, sky farthest (see prior_inv_depth)."""
    h, w = shape
    y = np.arange(h, dtype=np.float32)[:, None]
    if horizon is None:  # no sky: close-up or interior; a shallow ramp within the near range
        col = 1.0 - NO_SKY_RANGE * (1.0 - y / max(h - 1, 1))
        return np.broadcast_to(col, (h, w)).astype(np.float32)
    below = HORIZON_INV_DEPTH + (1.0 - HORIZON_INV_DEPTH) * (y - horizon) / max(h - 1 - horizon, 1.0)
    above = HORIZON_INV_DEPTH + ABOVE_SLOPE * (horizon - y) / h
    d = np.where(y >= horizon, below, above)
    d = np.broadcast_to(d, (h, w)).astype(np.float32)
    return np.where(sky, 0.0, d).astype(np.float32)


def prior_inv_depth(image: np.ndarray) -> np.ndarray:
    """Offline inverse-depth prior for an outdoor-or-close-up photo, no weights, deterministic.

    Model (all at a working resolution of about ``WORK_SIZE`` px on the long side, then upsampled):

    1. **Sky** (:func:`sky_mask`): bright (max RGB ≥ ``SKY_MIN_V``), smooth (gradient ≤ ``SKY_MAX_GRAD``),
       low-saturation or blue-dominant pixels, connected to the top border, holes filled → d = 0.
    2. **Horizon** y_h (:func:`horizon_row`): the lowest sky row of most columns.
    3. **Ground below the horizon**: a flat ground seen by a level camera at height c has depth
       z = c·f / (y − y_h), so inverse depth grows linearly with the distance below the horizon:
       d = d_h + (1 − d_h)(y − y_h)/(H − 1 − y_h), from ``HORIZON_INV_DEPTH`` at the horizon to 1 at the
       bottom row.
    4. **Non-sky structure above the horizon** (buildings, trees, hills) stands on the ground beyond the
       visible foreground; the higher it reaches above the horizon, the nearer it must be for a given
       size: d = d_h + ``ABOVE_SLOPE``·(y_h − y)/H.
    5. **No sky found** (close-ups, interiors, top-down views): no horizon can be placed and the scene is
       probably shallow, so d is a gentle ramp inside [1 − ``NO_SKY_RANGE``, 1] (near, nearly uniform)
       rather than a fake full-range ramp.
    6. **Edge-aware smoothing**: the map is guided-filtered (:func:`guided_filter`) with the image's grey
       level as guide (radius ≈ 1/20 of the long side, ε = 1e-3), which snaps depth edges such as the
       sky line to image edges; the result is clipped to [0, 1].

    ``image`` is (H, W, 3) float RGB in [0, 1]; returns (H, W) float32 in [0, 1].
    """
    rgb = _check_image(image)
    h, w = rgb.shape[:2]
    small = np.clip(_downsample(rgb, WORK_SIZE), 0.0, 1.0)
    sky = sky_mask(small)
    d = geometric_inv_depth(small.shape[:2], horizon_row(sky), sky)
    grey = small.mean(axis=2)
    r = max(1, int(round(max(small.shape[:2]) / 20)))
    d = guided_filter(grey, d, r, 1e-3)
    if d.shape != (h, w):
        d = _resize(d, (h, w))
    return np.clip(d, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------------ transformers

def _hf_pipeline(model: str):
    """Build (once per model) transformers' depth-estimation pipeline, with early, clear errors."""
    try:
        import transformers  # noqa: F401 - optional extra
    except ImportError:
        raise DepthError(f"depth method 'hf:{model}' needs transformers: pip install 'corun[depth]' "
                         "(or pip install 'transformers>=4.40')") from None
    return _cached_pipeline(model)


@lru_cache(maxsize=2)
def _cached_pipeline(model: str):
    from transformers import pipeline

    try:
        return pipeline("depth-estimation", model=model, device="cpu")
    except (OSError, ValueError) as exc:
        raise DepthError(
            f"depth model {model!r} could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            f"Give a local folder holding a saved depth-estimation model, or download it where the internet is "
            f"reachable, e.g. `huggingface-cli download {model if '/' in model else DEFAULT_HF_MODEL} "
            f"--local-dir DIR`, then use --method hf:DIR") from None


def hf_inv_depth(image: np.ndarray, model: str) -> np.ndarray:
    """Relative inverse depth (disparity, larger = nearer, as Depth Anything / DPT output) from a
    transformers depth-estimation model, resized to the image and min–max normalised."""
    from PIL import Image

    rgb = _check_image(image)
    pipe = _hf_pipeline(model)
    u8 = (np.clip(rgb, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    out = pipe(Image.fromarray(u8))
    pred = out["predicted_depth"]
    pred = np.asarray(pred.detach().cpu().float().numpy() if hasattr(pred, "detach") else pred, np.float32)
    pred = np.squeeze(pred)
    if pred.ndim != 2:
        raise DepthError(f"depth model {model!r} returned shape {pred.shape}, expected a 2-D map")
    if pred.shape != rgb.shape[:2]:
        pred = _resize(pred, rgb.shape[:2])
    return _minmax(pred)


# --------------------------------------------------------------------------------------------- public

def _check_image(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 2:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    return a.astype(np.float32, copy=False)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.where(np.isfinite(a), a, np.nanmin(np.where(np.isfinite(a), a, np.nan)))
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.ones_like(a, dtype=np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


def make_estimator(method: str = "prior") -> Callable[[np.ndarray], np.ndarray]:
    """Return ``image -> inverse depth`` for ``method``; for ``hf:...`` the model is loaded now, so a
    missing package or missing weights fail before any image is processed."""
    if method == "ramp":
        return lambda image: ramp_inv_depth(*_check_image(image).shape[:2])
    if method == "prior":
        return prior_inv_depth
    if method.startswith("hf:"):
        model = method[3:].strip()
        if not model:
            raise ValueError(f"method 'hf:' needs a model id or folder, e.g. hf:{DEFAULT_HF_MODEL}")
        _hf_pipeline(model)
        return lambda image: hf_inv_depth(image, model)
    raise ValueError(f"unknown depth method {method!r} (use one of {', '.join(METHODS)})")


def estimate_inv_depth(image: np.ndarray, method: str = "prior") -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] → (H, W) float32 normalised inverse depth in [0, 1], 1 = near,
    0 = farthest, as :func:`corun.data.read_inv_depth` and the haze synthesis t = exp(−2β(1 − d)) expect.
    ``method``: ``"prior"`` (default, offline), ``"ramp"`` (baseline) or ``"hf:<model id or folder>"``."""
    return make_estimator(method)(image)
