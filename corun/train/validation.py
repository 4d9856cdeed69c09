"""Validation during training: the EMA model on the synthetic test split (PSNR / SSIM against the clean
images, and the hazy input's own scores for reference) and dehazed copies of a few real photos."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch
from torch import Tensor, nn

from ..losses import split_output
from ..model import CORUN
from ..utils import pad_to_multiple

#: real photos larger than this (longest side) are dehazed by CORUN in tiles of 512 px
REAL_TILE_ABOVE = 1024


def psnr(x: Tensor, y: Tensor) -> float:
    mse = torch.mean((x.double() - y.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(x: Tensor, y: Tensor) -> float:
    from skimage.metrics import structural_similarity

    a = x.detach().float().cpu().permute(1, 2, 0).numpy()
    b = y.detach().float().cpu().permute(1, 2, 0).numpy()
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def restore(model: nn.Module, x: Tensor, multiple: int, tile: int | None = None) -> Tensor:
    """The restored image of ``x`` (any size) in [0, 1]: CORUN through :func:`corun.inference.run_model`
    (padding, optional tiles), any other network padded to ``multiple`` and cropped back (whole image)."""
    if isinstance(model, CORUN):
        from ..inference import run_model

        return run_model(model, x, tile=tile).image
    xp, (h, w) = pad_to_multiple(x, multiple)
    return split_output(model(xp)).image[..., :h, :w]


def synthetic_scores(model: nn.Module, folder: Path, *, device, multiple: int, max_images: int, tb_images: int,
                     autocast: Callable[[], ContextManager]) -> tuple[dict, list[Tensor]]:
    """Mean PSNR / SSIM of ``model`` and of the hazy input on the paired ``folder``, and TensorBoard grid rows
    (hazy | output | clean) for the first ``tb_images``."""
    from ..data import PairedDataset

    ds = PairedDataset(folder, crop=None, flip=False)
    n = len(ds) if not max_images else min(max_images, len(ds))
    scores = {"psnr": [], "ssim": [], "psnr_hazy": [], "ssim_hazy": []}
    grid = []
    for i in range(n):
        item = ds[i]
        hazy, clean = item["hazy"][None].to(device), item["clean"][None].to(device)
        with autocast():
            out = restore(model, hazy, multiple)
        j = out.float().clamp(0, 1)
        scores["psnr"].append(psnr(j, clean))
        scores["ssim"].append(ssim(j[0], clean[0]))
        scores["psnr_hazy"].append(psnr(hazy, clean))
        scores["ssim_hazy"].append(ssim(hazy[0], clean[0]))
        if i < tb_images:
            grid.append(torch.cat([hazy[0], j[0], clean[0]], dim=2).cpu())
    return {**{k: float(np.mean(s)) for k, s in scores.items()}, "n_images": n}, grid


def dehaze_real(model: nn.Module, folder: Path, dst: Path, *, device, multiple: int, max_real: int,
                autocast: Callable[[], ContextManager]) -> None:
    """Dehazed PNG copies of the first ``max_real`` photos of ``folder`` (0 = all) in ``dst``."""
    from ..data import image_files, read_rgb
    from ..imageio import save_png
    from ..inference import tensor_to_image

    for p in image_files(folder)[: max_real or None]:
        x = read_rgb(p)[None].to(device)
        with autocast():
            out = restore(model, x, multiple, tile=512 if max(x.shape[-2:]) > REAL_TILE_ABOVE else None)
        save_png(tensor_to_image(out.float()), dst / f"{p.stem}.png")


@torch.no_grad()
def validate(model: nn.Module, v, *, step: int, out_dir: Path, device, multiple: int,
             autocast: Callable[[], ContextManager], resolve: Callable, tb=None) -> dict | None:
    """The ``val:`` section ``v`` for the EMA ``model`` at ``step``: the result row of ``val.csv`` (None
    without a synthetic split), TensorBoard scalars and grid, and ``<out_dir>/val_real/step_N/`` PNGs."""
    model = model.eval()
    result = None
    sdir = resolve(v.synthetic_dir)
    if sdir is not None:
        scores, grid = synthetic_scores(model, sdir, device=device, multiple=multiple, max_images=v.max_images,
                                        tb_images=v.tb_images, autocast=autocast)
        result = {"step": step, **scores}
        if tb is not None:
            for k in ("psnr", "ssim"):
                tb.add_scalar(f"val/{k}", result[k], step)
            if grid:
                from torchvision.utils import make_grid

                tb.add_image("val/hazy_output_clean", make_grid(grid, nrow=1), step)
    rdir = resolve(v.real_dir)
    if rdir is not None:
        dehaze_real(model, rdir, out_dir / "val_real" / f"step_{step:07d}", device=device, multiple=multiple,
                    max_real=v.max_real, autocast=autocast)
    return result
