"""Running CORUN on images of any size: padding, tiling, devices, and the ``corun.dehaze`` API."""
from __future__ import annotations

import math
import os
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .model import CORUN, CORUNOutput
from .model_fast import fast_enabled
from .utils import pad_to_multiple, resolve_device

#: Images with more pixels than this are tiled by default. The paper model needs about 1.7 GiB per
#: megapixel on CPU in fp32 inference (measured at 1024², torch 2.14), so about 7 GiB at this size.
AUTO_TILE_PIXELS = 2048 * 2048
AUTO_TILE_SIZE = 1024
DEFAULT_OVERLAP = 64
#: The ``margin`` that removes the bright frame the small default weights leave along image borders
#: (``corun dehaze --margin``; weights/README.md measures it). Upstream pads nothing but the bottom/right
#: remainder to a multiple of 8, which is what ``margin=0`` does.
BORDER_MARGIN = 32

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, Tensor]


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x[..., : size[0], : size[1]]


def _ramp(n: int, overlap: int, left: bool, right: bool, device) -> Tensor:
    """1-D blending weights: a raised-cosine ramp over ``overlap`` px on sides that meet another tile."""
    w = torch.ones(n, device=device)
    if overlap > 0:
        r = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap, device=device) + 0.5) / overlap)
        if left:
            w[:overlap] = r
        if right:
            w[-overlap:] = r.flip(0)
    return w


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` shared px."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def auto_tile(h: int, w: int) -> int | None:
    """The ``--tile`` default: whole image up to AUTO_TILE_PIXELS, else AUTO_TILE_SIZE tiles."""
    return AUTO_TILE_SIZE if h * w > AUTO_TILE_PIXELS else None


PRECISIONS = ("fp32", "bf16")


def bf16_mode(model: CORUN, device: torch.device | str) -> str:
    """How ``precision="bf16"`` runs ``model`` on ``device``: ``"cpu-bf16"`` (the native bf16 CPU path of
    :mod:`corun.fast_bf16`, where the CPU has AVX-512 BF16 or AMX and ``model`` runs its fast path) or
    ``"autocast"`` (torch's bf16 autocast: CUDA, and the fallback elsewhere, emulated and slow on CPUs
    without bf16 instructions)."""
    from . import fast_bf16

    if (torch.device(device).type == "cpu" and isinstance(model, CORUN) and fast_enabled(model)
            and fast_bf16.available()):
        return "cpu-bf16"
    return "autocast"


def _forward(model: CORUN, x: Tensor, precision: str) -> CORUNOutput:
    """``model(x)``, in bf16 for ``precision="bf16"`` (see :func:`bf16_mode`); outputs always float32."""
    if precision == "fp32":
        return model(x)
    if bf16_mode(model, x.device) == "cpu-bf16":
        from .fast_bf16 import forward_bf16

        return forward_bf16(model, x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
    return CORUNOutput(out.image.float(), [s.float() for s in out.stages],
                       [t.float() for t in out.transmissions])


def reflect_margin(x: Tensor, margin: int) -> Tensor:
    """``x`` (…, H, W) mirrored outwards by ``margin`` pixels on all four sides (edge replication where
    a side is too short to mirror)."""
    h, w = x.shape[-2:]
    mode = "reflect" if margin < h and margin < w else "replicate"
    return F.pad(x, (margin,) * 4, mode=mode)


def crop_margin(out: CORUNOutput, margin: int) -> CORUNOutput:
    """Every map of ``out`` without the ``margin`` added by :func:`reflect_margin`."""
    def cut(t: Tensor) -> Tensor:
        return t[..., margin:t.shape[-2] - margin, margin:t.shape[-1] - margin]

    return CORUNOutput(cut(out.image), [cut(s) for s in out.stages], [cut(t) for t in out.transmissions])


@torch.inference_mode()
def run_model(model: CORUN, x: Tensor, tile: int | None = None, overlap: int = DEFAULT_OVERLAP,
              keep_stages: bool = False, precision: str = "fp32", margin: int = 0) -> CORUNOutput:
    """Run ``model`` on (B,3,H,W) in [0,1] of any H, W and return outputs cropped back to (H, W).

    ``tile`` (a multiple of the model's size multiple) splits the padded image into overlapping tiles
    blended with raised-cosine weights, bounding memory for large photos. Spectral attention pools
    over all pixels of its input, so tiled results differ slightly from whole-image ones.
    ``transmissions`` always hold T̂_1..T̂_K; ``stages`` only when ``keep_stages``.
    ``precision``: ``"fp32"`` (default; what the accuracy tests check) or ``"bf16"``: on CUDA bf16
    autocast (about 1e-2 from fp32; the attention's Gram matrices stay fp32); on a CPU with AVX-512 BF16
    or AMX the native bf16 path of :mod:`corun.fast_bf16` (heavy kernels in bf16 through oneDNN, the
    proximal steps in fp32); elsewhere autocast (emulated). Outputs are float32 either way.

    Runs the path ``model`` is set to: the fast one unless it was built with ``CORUN(fast=False)`` or switched
    by :func:`corun.model_fast.set_fast` / :func:`corun.model_fast.fast_path`. On
    CPU that path works in row bands, so a whole-image run needs about the memory of its activations
    (C-wide, not 4C-wide); ``tile`` bounds it further.

    ``margin`` > 0 mirrors the image outwards by that many pixels on every side before the network and
    crops the result back (:func:`reflect_margin`), so that no output pixel sits at the network's
    zero-padded border; :data:`BORDER_MARGIN` removes the frame the default weights leave there. 0 (the
    default) is upstream's inference.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if margin < 0:
        raise ValueError(f"margin must be 0 or more pixels, got {margin}")
    if margin:
        out = run_model(model, reflect_margin(x, margin), tile, overlap, keep_stages, precision)
        return crop_margin(out, margin)
    multiple = model.config.multiple
    xp, size = pad_to_multiple(x, multiple)
    hp, wp = xp.shape[-2:]
    if tile is None or (tile >= hp and tile >= wp):
        out = _forward(model, xp, precision)
        stages = [crop_to(s, size) for s in out.stages] if keep_stages else []
        return CORUNOutput(crop_to(out.image, size), stages, [crop_to(t, size) for t in out.transmissions])
    if tile % multiple or tile < 2 * multiple:
        raise ValueError(f"tile must be a multiple of {multiple} and at least {2 * multiple}, got {tile}")
    if overlap < 0:  # a negative overlap leaves gaps between tiles: 0/0 = NaN pixels there
        raise ValueError(f"overlap must be 0 or more pixels, got {overlap}")
    overlap = min(overlap, tile // 2)
    overlap -= overlap % multiple  # keep every tile start on the model's grid
    th, tw = min(tile, hp), min(tile, wp)
    ys, xs = tile_starts(hp, th, overlap), tile_starts(wp, tw, overlap)

    acc: dict[str, Tensor] = {}
    weight = torch.zeros(1, 1, hp, wp, device=x.device)
    for yi, y0 in enumerate(ys):
        wy = _ramp(th, overlap, yi > 0, yi < len(ys) - 1, x.device)
        for xi, x0 in enumerate(xs):
            wx = _ramp(tw, overlap, xi > 0, xi < len(xs) - 1, x.device)
            wt = (wy[:, None] * wx[None, :])[None, None]
            out = _forward(model, xp[..., y0:y0 + th, x0:x0 + tw], precision)
            parts = {"image": out.image, **{f"t{k}": t for k, t in enumerate(out.transmissions)}}
            if keep_stages:
                parts.update({f"j{k}": j for k, j in enumerate(out.stages)})
            for name, value in parts.items():
                if name not in acc:
                    acc[name] = torch.zeros(*value.shape[:2], hp, wp, device=x.device, dtype=value.dtype)
                acc[name][..., y0:y0 + th, x0:x0 + tw] += value * wt
            weight[..., y0:y0 + th, x0:x0 + tw] += wt
    merged = {name: crop_to(v / weight, size) for name, v in acc.items()}
    k = model.depth
    return CORUNOutput(
        image=merged["image"],
        stages=[merged[f"j{i}"] for i in range(k)] if keep_stages else [],
        transmissions=[merged[f"t{i}"] for i in range(k)],
    )


def image_to_tensor(arr: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """(H, W, 3) float [0,1] → (1, 3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].to(device, torch.float32)


def tensor_to_image(x: Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) → (H, W, C) float32 numpy."""
    if x.ndim == 4:
        x = x[0]
    return x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def dehaze(image: ImageLike, model: CORUN | None = None, *, weights: str | os.PathLike | None = None,
           device: str | torch.device = "auto", tile: int | None | str = "auto",
           overlap: int = DEFAULT_OVERLAP, precision: str = "fp32", margin: int = 0):
    """Dehaze one image with CORUN.

    ``image`` is a path, a PIL image, an (H, W, 3) array (uint8 or float in [0,1]) or a (B,3,H,W) /
    (3,H,W) tensor in [0,1]. Returns the same kind: a PIL image for paths and PIL images, a float32
    array for arrays, a tensor for tensors. ``model`` defaults to one loaded from ``weights`` or, when
    that is not given either, from the project's default weights (:func:`corun.weights.default_model`).
    ``precision``: ``"fp32"`` or ``"bf16"``, ``margin``: pixels mirrored around the image first (both
    :func:`run_model`).
    """
    from .imageio import read_image, to_uint8
    from .weights import default_model

    if model is None:
        if weights is not None:
            from .checkpoint import load_model

            model = load_model(weights)
        else:
            model = default_model()
    dev = resolve_device(device)
    model = model.to(dev).eval()

    kind = "pil"
    if isinstance(image, (str, os.PathLike)):
        arr, _ = read_image(image)
    elif isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    elif isinstance(image, np.ndarray):
        kind = "array"
        arr = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) array, got shape {image.shape}")
    elif isinstance(image, Tensor):
        kind = "tensor"
        x = image[None] if image.ndim == 3 else image
        h, w = x.shape[-2:]
        t = auto_tile(h, w) if tile == "auto" else tile
        out = run_model(model, x.to(dev, torch.float32), tile=t, overlap=overlap, precision=precision,
                        margin=margin).image
        return out[0] if image.ndim == 3 else out
    else:
        raise TypeError(f"cannot dehaze an object of type {type(image).__name__}")

    h, w = arr.shape[:2]
    t = auto_tile(h, w) if tile == "auto" else tile
    out = tensor_to_image(run_model(model, image_to_tensor(arr, dev), tile=t, overlap=overlap,
                                    precision=precision, margin=margin).image)
    if kind == "array":
        return out
    return Image.fromarray(to_uint8(out))
