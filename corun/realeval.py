"""Real-haze comparisons: dehaze a set of real hazy photos with several methods and score them with
no-reference metrics *and* the structure score S (issue 16: the default weights on real fog).

    from corun.realeval import compare_on_real_haze
    per_image = compare_on_real_haze("../shared/data/dawn_fog/images", "out/dawn_test",
                                     {"DCP": "dcp", "pretrain": "runs/default_pretrain",
                                      "Colabator": "runs/default_colabator"},
                                     names=read_name_list("../shared/data/dawn_fog/test.txt"))

Each method's outputs go to ``out/<method>/`` (PNG, the input's name and native size; existing outputs are
kept, so an interrupted comparison resumes; ``out/<method>/.corun_source.json`` records the weights and the
``margin`` they were made with, and outputs made by others are recomputed, as ``corun reproduce`` does); the hazy inputs of the set are linked into ``out/hazy/``.
Methods: ``"hazy"`` (the input itself), ``"dcp"`` (He et al. 2009 with the guided filter,
:func:`corun.physics.dcp_dehaze`), or a checkpoint / run folder / weights file for CORUN (its EMA weights).
FADE and BRISQUE reward invented texture, so S (:func:`corun.metrics.structure_score`: 1 = no new
structure) is reported beside them; look at the images too (:func:`side_by_side_figure`).

:func:`before_after` (notebook 03) compares checkpoints in memory instead: Colabator's pretrained teacher
against the fine-tuned EMA model on a few real photos, scored by the run's own scorers and by PSNR where a
reference exists (:func:`before_after_figure`, :func:`mean_scores`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .imageio import collect_images

DEFAULT_REAL_METRICS = ("fade", "brisque", "structure")


def link_subset(src_dir: str | os.PathLike, names: Sequence[str] | None, dst: str | os.PathLike) -> list[Path]:
    """Symlink the listed photos (names or stems; all photos when ``names`` is None) of ``src_dir`` into
    ``dst`` and return the links; a listed name with no file is an error naming it."""
    src_dir, dst = Path(src_dir), Path(dst)
    files = collect_images([src_dir]).files
    if names is not None:
        by_key = {**{f.stem: f for f in files}, **{f.name: f for f in files}}
        missing = [n for n in names if n not in by_key]
        if missing:
            raise FileNotFoundError(f"{src_dir}: {len(missing)} listed photo(s) not found, e.g. {missing[:3]}")
        files = [by_key[n] for n in names]
    dst.mkdir(parents=True, exist_ok=True)
    links = []
    for f in files:
        link = dst / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
        links.append(link)
    return links


def resolve_weights(spec: str | os.PathLike) -> Path:
    """A run folder → its latest checkpoint; a file as is."""
    p = Path(spec)
    if p.is_dir():
        from .checkpoint import latest_checkpoint

        ck = latest_checkpoint(p)
        if ck is None:
            raise FileNotFoundError(f"{p}: no checkpoints/step_*.pth")
        return ck
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such weights file or run folder")
    return p


def dehaze_method(method: str | os.PathLike, inputs: Sequence[Path], out_dir: Path, progress: bool = False,
                  margin: int = 0) -> Path:
    """Write ``method``'s results for ``inputs`` into ``out_dir`` (see the module docstring); ``margin``:
    :func:`corun.inference.run_model`'s, for CORUN weights."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if str(method) == "hazy":
        return inputs[0].parent
    if str(method) == "dcp":
        from .tables import dehaze_dcp

        dehaze_dcp(list(inputs), out_dir)
        return out_dir
    from .batch import dehaze_files, output_names
    from .checkpoint import load_model
    from .tables import prepare_output
    from .utils import sha256_file

    weights = resolve_weights(method)
    prepare_output(out_dir, {"weights": weights.name, "sha256": sha256_file(weights), "margin": margin},
                   set(output_names(list(inputs))))
    model = load_model(weights)
    report = dehaze_files(list(inputs), out_dir, model, progress=progress, log=lambda m: None, margin=margin)
    if report.failed:
        raise RuntimeError(f"{method}: {len(report.failed)} photo(s) failed, e.g. {report.failed[0]}")
    return out_dir


def compare_on_real_haze(hazy_dir: str | os.PathLike, out: str | os.PathLike,
                         methods: Mapping[str, str | os.PathLike], names: Sequence[str] | None = None,
                         metrics: Sequence[str] = DEFAULT_REAL_METRICS,
                         weights: Mapping[str, str | os.PathLike] | None = None, progress: bool = False,
                         margin: int = 0):
    """Per-image scores (pandas: ``method``, ``image``, one column per metric, ``error``) of each method on
    the real hazy photos ``names`` of ``hazy_dir``; outputs and a score cache under ``out``. ``margin``:
    :func:`corun.inference.run_model`'s, for every CORUN method."""
    import pandas as pd

    from .metrics import evaluate_folder

    out = Path(out)
    inputs = link_subset(hazy_dir, names, out / "hazy")
    frames = []
    for label, method in methods.items():
        folder = dehaze_method(method, inputs, out / _safe(label), progress=progress, margin=margin)
        df = evaluate_folder(folder, metrics=list(metrics), hazy=out / "hazy", weights=weights,
                             cache_dir=out / ".metric_cache", progress=progress)
        keep = {p.stem for p in inputs}
        df = df[df["image"].map(lambda n: Path(n).stem in keep)]
        frames.append(df.assign(method=label)[["method", *df.columns]])
    return pd.concat(frames, ignore_index=True)


def summary_table(per_image, metrics: Sequence[str] = DEFAULT_REAL_METRICS):
    """Mean per method (and the minimum of S), in the methods' order."""
    import pandas as pd

    rows = []
    for method, part in per_image.groupby("method", sort=False):
        row = {"method": method, "n": int(part[list(metrics)].notna().all(axis=1).sum())}
        for m in metrics:
            row[m] = float(part[m].mean())
        if "structure" in metrics:
            row["structure_min"] = float(part["structure"].min())
        rows.append(row)
    return pd.DataFrame(rows)


def side_by_side_figure(out: str | os.PathLike, methods: Sequence[str], photos: Sequence[str],
                        max_side: int = 480):
    """A matplotlib figure: one row per photo, one column per method (``hazy`` first), from ``out``."""
    import matplotlib.pyplot as plt
    from PIL import Image

    out = Path(out)
    fig, axes = plt.subplots(len(photos), len(methods), figsize=(3.2 * len(methods), 2.1 * len(photos)),
                             squeeze=False)
    for r, stem in enumerate(photos):
        for c, method in enumerate(methods):
            folder = out / ("hazy" if method == "hazy" else _safe(method))
            found = [p for p in folder.iterdir() if p.stem == stem]
            ax = axes[r][c]
            ax.axis("off")
            if r == 0:
                ax.set_title(method, fontsize=9)
            if found:
                im = Image.open(found[0]).convert("RGB")
                im.thumbnail((max_side, max_side))
                ax.imshow(np.asarray(im))
    fig.tight_layout()
    return fig


def _fit_side(x, max_side: int):
    """``x`` (1, 3, H, W) scaled down (area) so that its longer side is at most ``max_side``."""
    import torch.nn.functional as F

    return F.interpolate(x, scale_factor=max_side / max(x.shape[-2:]), mode="area") if max(x.shape[-2:]) > max_side else x


def before_after(checkpoints: Mapping[str, str | os.PathLike], photos_dir: str | os.PathLike,
                 scorers: Mapping[str, object], n_eval: int, n_show: int = 0, device: str = "auto",
                 max_side: int = 768, log=print):
    """Colabator's before / after on real photos (notebook 03): the first ``n_eval`` photos of
    ``photos_dir`` dehazed by each checkpoint of ``checkpoints`` (``{label: file}``, EMA weights; e.g. the
    pretrained teacher and the fine-tuned EMA model), scored by ``scorers`` (``{key: spec}`` for
    :func:`corun.colabator.scoring.create_scorer`; normalised global scores, 1 = best) and by PSNR where
    ``<photos_dir>/../clean/<name>`` is a reference of the same size. Photos larger than ``max_side`` are
    scaled down. A scorer that cannot be created (e.g. weights not downloaded) leaves the scores out, with
    a line to ``log``.

    Returns ``(scores, shown)``: one row per photo and image (``photo``, ``image`` = "hazy" or a label,
    one column per scorer key, ``psnr``) and, for the first ``n_show`` photos, ``(name, {image: tensor})``."""
    import pandas as pd
    import torch

    from .checkpoint import load_model
    from .colabator.scoring import create_scorer
    from .data import image_files, read_rgb
    from .inference import auto_tile, run_model
    from .train import psnr
    from .utils import resolve_device

    device = resolve_device(device)
    models = {label: load_model(c, map_location=device) for label, c in checkpoints.items()}
    try:
        scorers = {key: create_scorer(spec, device=device) for key, spec in scorers.items()}
    except Exception as exc:  # noqa: BLE001 - e.g. scorer weights not downloaded: the images without scores
        scorers = {}
        log(f"no scores: {type(exc).__name__}: {exc}")
    photos_dir = Path(photos_dir)
    rows, shown = [], []
    for i, path in enumerate(image_files(photos_dir)[:n_eval]):
        x = _fit_side(read_rgb(path)[None].to(device), max_side)  # large photos (URHI): a smaller copy
        ref = photos_dir.parent / "clean" / path.name
        ref = read_rgb(ref)[None].to(device) if ref.is_file() else None
        ref = ref if ref is not None and ref.shape == x.shape else None
        images = {"hazy": x}
        with torch.no_grad():
            for label, model in models.items():
                images[label] = run_model(model, x, tile=auto_tile(*x.shape[-2:])).image.float().clamp(0, 1)
        for label, img in images.items():
            row = {"photo": path.name, "image": label}
            row.update({key: float(scorer.score(img)[0]) for key, scorer in scorers.items()})
            if ref is not None:
                row["psnr"] = psnr(img, ref)
            rows.append(row)
        if i < n_show:
            shown.append((path.name, images))
    return pd.DataFrame(rows), shown


def score_keys(scores) -> list[str]:
    """The scorer columns of a :func:`before_after` table."""
    return [c for c in scores.columns if c not in ("photo", "image", "psnr")]


def before_after_figure(scores, shown, title: str = ""):
    """One row per shown photo of :func:`before_after`, one column per image (hazy, then each model), each
    titled with its scores; None when no photo is shown."""
    import matplotlib.pyplot as plt

    if not shown:
        return None
    keys = score_keys(scores)
    ncol = max(len(images) for _, images in shown)
    fig, axes = plt.subplots(len(shown), ncol, figsize=(4 * ncol, 3.6 * len(shown)), squeeze=False)
    for r, (name, images) in enumerate(shown):
        for c, (label, img) in enumerate(images.items()):
            s = scores[(scores["photo"] == name) & (scores["image"] == label)].iloc[0]
            extra = " ".join(f"{k} {s[k]:.3f}" for k in keys) + (f" PSNR {s['psnr']:.2f}" if "psnr" in s else "")
            axes[r][c].imshow(img[0].permute(1, 2, 0).cpu().numpy())
            axes[r][c].set_title(f"{label if r == 0 else ''}\n{name if c == 0 else ''} {extra}".strip(), fontsize=8)
            axes[r][c].axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def mean_scores(scores):
    """Mean of every score per image kind (hazy, then each model, in order) of a :func:`before_after` table."""
    return scores.drop(columns="photo").groupby("image", sort=False).mean()


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
