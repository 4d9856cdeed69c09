"""Normalised inverse depth for clean photos that come without depth (issue 16, part 1).

The haze synthesis (RIDCP's, used for CORUN pretraining) needs per-pixel normalised inverse depth
d ∈ [0, 1] (1 = near, 0 = farthest) and forms the transmission t = exp(−2β(1 − d)) of the scattering model
(Eq. 1 of the paper, t = exp(−β·z), with depth z ∝ 1 − d). This module produces d for any RGB photo:

* ``"ramp"`` — a plain vertical ramp, 0 at the top row, 1 at the bottom row (the baseline).
* ``"prior"`` — an offline geometric prior that needs no weights (:func:`prior_inv_depth`).
* ``"hf:<model id or local folder>"`` — a monocular depth model through transformers'
  ``pipeline("depth-estimation")`` (upstream recommends Depth Anything, e.g.
  ``hf:depth-anything/Depth-Anything-V2-Small-hf``); needs the optional extra ``corun[depth]`` and the
  weights, and its relative inverse depth is min–max normalised.

Only numpy / scipy are imported at module level; nothing here imports the network.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

METHODS = ("prior", "ramp", "hf:<model>")
DEFAULT_HF_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"

#: prior parameters (the defaults were checked against the Middlebury / stereo Spearman table in data/README.md)
WORK_SIZE = 160          # long side of the working resolution of the prior
SKY_MIN_V = 0.45         # sky is bright: max(R, G, B) at least this ...
SKY_MAX_GRAD = 0.035     # ... smooth: smoothed gradient magnitude below this ...
SKY_MAX_SAT = 0.35       # ... and either low-saturated or blue-dominant ...
SKY_WARM_TOL = 0.02      # a sky region is not warm: its mean red − blue is at most this (warm-lit walls are)
SKY_MIN_AREA = 0.01      # a sky region smaller than this fraction of the image is ignored
HORIZON_INV_DEPTH = 0.12  # inverse depth of the ground at the horizon (sky is 0)
STRUCTURE_RATIO = 3.0    # standing structure reaches this many camera heights above the camera
SKY_LOW_ROW = 0.7        # a sky region has at most SKY_MAX_LOW_FRACTION of its pixels below this
SKY_MAX_LOW_FRACTION = 0.1  # fraction of the image height
CONTACT_EDGE = 0.05      # grey-level gradient (per pixel, after a σ = CONTACT_SIGMA blur) that ends an object
CONTACT_SIGMA = 0.7
CONTACT_WEIGHT = 0.5     # how far an object's pixels move towards the inverse depth of its contact row
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


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of 1-D linear interpolation from n_in to n_out samples (pixel centres aligned)."""
    x = ((np.arange(n_out, dtype=np.float32) + 0.5) * n_in / n_out - 0.5).clip(0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` (separable: rows, then columns)."""
    y0, y1, wy = _linear_taps(a.shape[0], shape[0])
    x0, x1, wx = _linear_taps(a.shape[1], shape[1])
    a = a.astype(np.float32)
    rows = a[y0] * (1 - wy)[:, None] + a[y1] * wy[:, None]
    return rows[:, x0] * (1 - wx) + rows[:, x1] * wx


# ----------------------------------------------------------------------------------------------- ramp

def ramp_inv_depth(h: int, w: int) -> np.ndarray:
    """Baseline: 0 (far) at the top row, 1 (near) at the bottom row, constant along rows."""
    col = np.linspace(0.0, 1.0, h, dtype=np.float32) if h > 1 else np.ones(1, np.float32)
    return np.ascontiguousarray(np.broadcast_to(col[:, None], (h, w)))


# ---------------------------------------------------------------------------------------------- prior

def sky_mask(rgb: np.ndarray) -> np.ndarray:
    """Sky: bright, smooth, low-saturation or blue-dominant pixels, in regions touching the top border
    that are not warm on average and do not run deep into the lower image, holes filled."""
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
    # daylight sky is grey, white or blue on average, never warm (indoor walls under warm light are) ...
    warmth = np.asarray(ndimage.mean(rgb[..., 0] - rgb[..., 2], labels, top))
    # ... and ends at the horizon: a bright smooth region running deep into the lower image is a wall
    rows = np.broadcast_to(np.arange(cand.shape[0])[:, None], cand.shape)
    low = np.asarray(ndimage.mean(rows >= SKY_LOW_ROW * cand.shape[0], labels, top))
    sky = np.isin(labels, top[(warmth <= SKY_WARM_TOL) & (low <= SKY_MAX_LOW_FRACTION)])
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
    """Ground plane below the horizon, standing structure by the height of its top, sky farthest
    (steps 3–5 of :func:`prior_inv_depth`)."""
    h, w = shape
    y = np.arange(h, dtype=np.float32)[:, None]
    if horizon is None:  # no sky: close-up or interior; a shallow ramp within the near range
        col = 1.0 - NO_SKY_RANGE * (1.0 - y / max(h - 1, 1))
        return np.broadcast_to(col, (h, w)).astype(np.float32)

    def ground(row):
        return HORIZON_INV_DEPTH + (1.0 - HORIZON_INV_DEPTH) * (row - horizon) / max(h - 1 - horizon, 1.0)

    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    last_sky = np.maximum.accumulate(np.where(sky, rows, -1), axis=0)  # lowest sky row at or above each pixel
    top = (last_sky + 1).astype(np.float32)                             # where the structure below it starts
    reach = np.maximum(horizon - top, 0.0)                              # its height above the horizon
    d = np.maximum(ground(np.maximum(y, horizon)), ground(horizon + reach / STRUCTURE_RATIO))
    return np.where(sky, 0.0, d).astype(np.float32)


def contact_rows(grey: np.ndarray) -> np.ndarray:
    """For every pixel, the first row at or below it in its column where the image has an edge (gradient
    magnitude of the σ = ``CONTACT_SIGMA`` blurred grey level above ``CONTACT_EDGE``), else the bottom row:
    where the object the pixel belongs to meets what is below it."""
    g = ndimage.gaussian_filter(grey.astype(np.float32), CONTACT_SIGMA)
    edge = np.hypot(ndimage.sobel(g, axis=0), ndimage.sobel(g, axis=1)) / 8.0 > CONTACT_EDGE
    h, w = grey.shape
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    return np.minimum.accumulate(np.where(edge, rows, h - 1)[::-1], axis=0)[::-1]


def contact_inv_depth(d: np.ndarray, grey: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """Step 6 of :func:`prior_inv_depth`: objects stand on what is below them, so each non-sky pixel moves
    ``CONTACT_WEIGHT`` of the way towards the (nearer) inverse depth of its contact row."""
    at_contact = np.take_along_axis(d, contact_rows(grey), axis=0)
    moved = d + CONTACT_WEIGHT * (np.maximum(at_contact, d) - d)
    return np.where(sky, d, moved).astype(np.float32)


def prior_inv_depth(image: np.ndarray) -> np.ndarray:
    """Offline inverse-depth prior for an outdoor-or-close-up photo, no weights, deterministic.

    Model (all at a working resolution of about ``WORK_SIZE`` px on the long side, then upsampled):

    1. **Sky** (:func:`sky_mask`): bright (max RGB ≥ ``SKY_MIN_V``), smooth (gradient ≤ ``SKY_MAX_GRAD``),
       low-saturation or blue-dominant pixels, in regions connected to the top border whose mean
       R − B ≤ ``SKY_WARM_TOL`` (not warm-lit walls) and with at most ``SKY_MAX_LOW_FRACTION`` of their
       pixels below ``SKY_LOW_ROW``·H (not a backdrop reaching the floor), holes filled → d = 0.
    2. **Horizon** y_h (:func:`horizon_row`): the lowest sky row of most columns.
    3. **Ground below the horizon**: a flat ground seen by a level camera at height c has depth
       z = c·f / (y − y_h), so inverse depth grows linearly with the distance below the horizon:
       d = d_h + (1 − d_h)(y − y_h)/(H − 1 − y_h), from ``HORIZON_INV_DEPTH`` at the horizon to 1 at the
       bottom row.
    4. **Standing structure** (buildings, trees, hills: every non-sky pixel, taking the top of its
       structure as the row just below the lowest sky above it in its column, or the top row without sky
       above): a structure whose top is r rows above the horizon and which reaches ``STRUCTURE_RATIO``
       camera heights above the camera stands where the ground row is y_h + r/``STRUCTURE_RATIO``, so the
       whole column of it gets that ground's inverse depth; a pixel takes the larger (nearer) of this and
       the ground value of its own row, so the foreground ground stays in front of distant buildings.
    5. **No sky found** (close-ups, interiors, top-down views): no horizon can be placed and the scene is
       probably shallow, so d is a gentle ramp inside [1 − ``NO_SKY_RANGE``, 1] (near, nearly uniform)
       rather than a fake full-range ramp.
    6. **Contact**: an object stands on what is below it, so its pixels are as near as the row where it
       meets that: every non-sky pixel moves ``CONTACT_WEIGHT`` of the way towards the inverse depth at
       the first image edge below it in its column (:func:`contact_inv_depth`), which makes upright
       surfaces flatter in depth than the ground-plane ramp.
    7. **Edge-aware smoothing**: the map is guided-filtered (:func:`guided_filter`) with the image's grey
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
    d = contact_inv_depth(d, grey, sky)
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


def _looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``namespace/name``; anything else (or an existing path) is a local folder."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model \
        or Path(model).expanduser().exists()


def _download_hint(model_id: str) -> str:
    return (f"download it where the internet is reachable (`hf download {model_id} --local-dir DIR`; "
            f"`huggingface-cli download` with older huggingface_hub), copy DIR here and use --method hf:DIR")


@lru_cache(maxsize=2)
def _cached_pipeline(model: str):
    from transformers import pipeline

    if _looks_like_path(model):
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise DepthError(f"depth model folder {model!r} holds no saved model (no config.json); save one "
                             f"there with save_pretrained, or {_download_hint(DEFAULT_HF_MODEL)}")
        model = str(folder)
    try:
        return pipeline("depth-estimation", model=model, device="cpu")
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DepthError(f"depth model {model!r} could not be loaded ({type(exc).__name__}: {first}); "
                         f"{_download_hint(model)}") from None


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


def rank_correlation(estimate: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Spearman rank correlation between an inverse-depth estimate and reference disparity / inverse depth
    over the ``valid`` pixels (ties get their average rank); NaN if either side is constant there."""
    from scipy.stats import spearmanr

    est, ref = np.asarray(estimate, np.float64), np.asarray(reference, np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"estimate {est.shape} and reference {ref.shape} differ in shape")
    mask = np.isfinite(est) & np.isfinite(ref) & (True if valid is None else np.asarray(valid, bool))
    e, r = est[mask], ref[mask]
    if e.size < 3 or np.ptp(e) == 0 or np.ptp(r) == 0:
        return float("nan")
    return float(spearmanr(e, r).statistic)
