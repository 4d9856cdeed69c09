"""What notebooks 01–03 compute and draw, so that a notebook holds parameters, calls, plots and prose.

* shared: :func:`save_figure` (PNG + PDF), :func:`write_json` (atomic), :func:`read_log` (a run's
  ``log.csv`` / ``val.csv``), :func:`torchrun_command` and :func:`train_or_command` (smoke: train here;
  paper: print the ``torchrun`` command), :func:`unfolding_grid` (J_1…J_K over T̂_1…T̂_K, also behind
  :func:`corun.tables.unfolding_figure`);
* notebook 01 (data): :func:`dataset_targets`, :func:`check_datasets`, :func:`synthesis_grid_figure`,
  :func:`synthesis_draws`, :func:`synthesis_hist_figure`, :func:`data_manifest`;
* notebook 02 (pretraining): :func:`pretrain_curves_figure`, :func:`validation_line`,
  :func:`pretrain_unfolding_figure`;
* notebook 03 (Colabator): :func:`colabator_overrides`, :func:`pool_folder`, :func:`starting_checkpoint`,
  :func:`colabator_curves_figure`, :func:`colabator_log_line`, :func:`finetune_record`.

The label pool's figures (notebooks 03 and 04) are in :mod:`corun.colabator.inspect`, the before / after
comparison on real photos (notebook 03) in :mod:`corun.realeval`. This module imports only
:mod:`corun.utils` at import time; everything heavier is imported where it is used.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .utils import ROOT, atomic_write, repo_path, repo_relative

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from torch import Tensor

PRETRAIN_LOSSES = ("loss", "l_pix", "l_asm", "l_contrast_percep", "l_clip")
COLABATOR_LOSSES = ("loss", "l_syn_pix", "l_real_pix", "l_real_asm", "l_percep", "l_real_contrast", "l_clip")


# ---------------------------------------------------------------------------------------------- shared

def save_figure(fig: Figure, fig_dir: str | os.PathLike, name: str, dpi: int = 100) -> list[Path]:
    """Save ``fig`` as ``<fig_dir>/<name>.png`` and ``.pdf`` (tight bounding box); returns both paths."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = fig_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        out.append(path)
    return out


def write_json(path: str | os.PathLike, obj: Any, newline: bool = False, **dumps: Any) -> Path:
    """Write ``json.dumps(obj, indent=1, **dumps)`` (plus a final newline if ``newline``) to ``path``
    atomically (:func:`corun.utils.atomic_write`: a reader never sees half a file)."""
    text = json.dumps(obj, **{"indent": 1, **dumps}) + ("\n" if newline else "")
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_log(path: str | os.PathLike) -> pd.DataFrame:
    """A run's ``log.csv`` or ``val.csv`` as a DataFrame (empty cells NaN); empty when the file is missing
    or empty (a run that has not logged yet)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_csv(path)


def torchrun_command(config: str | os.PathLike, overrides: Sequence[str] = (), nproc: int = 8) -> str:
    """The command that trains ``config`` on one node with ``nproc`` GPUs, from the repository root."""
    args = " ".join(shlex.quote(o) for o in overrides)
    return f"torchrun --nproc_per_node {nproc} -m corun.train --config {repo_relative(config)} {args}".rstrip()


def train_or_command(profile: str, cfg, config: str | os.PathLike, overrides: Sequence[str] = (),
                     resume: bool = True, log: Callable[[str], None] = print) -> dict | None:
    """Smoke profile: train ``cfg`` here (:func:`corun.train.train`, resuming a run made with the same
    settings, moving aside one made with others) and return its summary. Paper profile: print the
    ``torchrun`` command instead (8 GPUs are not a notebook job) and return None."""
    if profile == "smoke":
        from .train import train

        summary = train(cfg, resume=resume, restart_if_changed=True)
        log(json.dumps(summary, indent=1))
        return summary
    log("Run the paper profile outside the notebook, from the repository root, e.g. on one node with 8 GPUs:\n")
    log(f"  {torchrun_command(config, overrides)}")
    log("\n(add --resume to continue after an interruption); this notebook then plots that run.")
    return None


@dataclass
class UnfoldingRow:
    """One input of :func:`unfolding_grid`: the image ``x`` (1, 3, H, W), CORUN's output on it (with
    stages), the title over the input, an optional row label and an optional clean reference."""

    x: Tensor
    out: Any
    title: str
    label: str | None = None
    clean: Tensor | None = None


def _image(t: Tensor):
    return t[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def unfolding_grid(rows: Sequence[UnfoldingRow], title: str, title_size: float | None = None) -> Figure:
    """CORUN's unfolding (Sec. 3.1, Eqs. 3–6): per input, top row the input, the scene estimates J_1…J_K
    (and the clean reference, when given); bottom row the transmission estimates T̂_1…T̂_K."""
    import matplotlib.pyplot as plt

    k = max(len(r.out.stages) for r in rows)
    ncol = k + 1 + any(r.clean is not None for r in rows)
    fig, axes = plt.subplots(2 * len(rows), ncol, figsize=(2.4 * ncol, 2.0 * 2 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top[0].imshow(_image(r.x))
        top[0].set_title(r.title, fontsize=8)
        if r.label:
            top[0].set_ylabel(r.label, fontsize=8)
        for s, (j, t) in enumerate(zip(r.out.stages, r.out.transmissions), 1):
            top[s].imshow(_image(j))
            top[s].set_title(f"J_{s}", fontsize=8)
            bottom[s].imshow(t[0, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            bottom[s].set_title(f"T̂_{s}", fontsize=8)
        if r.clean is not None:
            top[k + 1].imshow(_image(r.clean))
            top[k + 1].set_title("clean", fontsize=8)
        for ax in (*top, *bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        blank = [0, *range(len(r.out.stages) + 1, ncol)]  # no transmission under the input and the clean image
        for s in blank:
            bottom[s].axis("off")
        for s in range(len(r.out.stages) + 1, k + 1):
            top[s].axis("off")
        if r.clean is None and ncol > k + 1:
            top[k + 1].axis("off")
    fig.suptitle(title, **({"fontsize": title_size} if title_size else {}))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- notebook 01

def dataset_targets(profile: str, mini_dir: str | os.PathLike = "data/mini", clean_depth_dir=None,
                    real_train_dir=None, real_test_dirs: Sequence | None = None, seed: int = 0,
                    log: Callable[[str], None] = print) -> tuple[Path, list[tuple[Path, str]], float | None]:
    """The datasets of ``profile``: ``(training root, [(folder, kind)], seconds the build took)``.

    Smoke: builds (or keeps) the embedded mini dataset under ``mini_dir`` (:func:`corun.mini.build_mini`):
    clean-depth training data, synthetic test pairs and pseudo-real photos. Paper: RIDCP500 (clean-depth),
    URHI (real, training), RTTS and Fattal (real, testing) at the given or default folders; a missing
    folder is a FileNotFoundError naming it. Relative paths are the repository's."""
    if profile == "smoke":
        from .mini import MiniConfig, build_mini

        t0 = time.time()
        mini = build_mini(repo_path(mini_dir), MiniConfig(seed=seed), log=log)
        seconds = round(time.time() - t0, 1)
        return mini, [(mini, "clean-depth"), (mini / "test", "paired"), (mini / "pseudo_real" / "hazy", "real")], seconds
    if profile != "paper":
        raise ValueError(f"unknown profile {profile!r}")
    root = repo_path(clean_depth_dir or "data/RIDCP500")
    targets = [(root, "clean-depth"), (repo_path(real_train_dir or "data/URHI"), "real")]
    targets += [(repo_path(p), "real") for p in (real_test_dirs or ["data/RTTS", "data/Fattal"])]
    missing = [str(p) for p, _ in targets if not p.is_dir()]
    if missing:
        raise FileNotFoundError("paper profile: missing dataset folders " + ", ".join(missing)
                                + " (see data/README.md for where to get them, or pass the paths as parameters)")
    return root, targets, None


def check_datasets(targets: Sequence[tuple[Path, str]], log: Callable[[str], None] = print) -> list[dict]:
    """:func:`corun.data.check_folder` for every ``(folder, kind)``, with a line each (and up to five
    skipped files) to ``log``."""
    from .data import check_folder

    checks = []
    for folder, kind in targets:
        info = check_folder(folder, kind)
        checks.append(info)
        log(f"{folder} [{kind}]: {info['usable']} usable of {info['found']}, {len(info['skipped'])} skipped, "
            f"{len(info['unmatched'])} unmatched")
        for s in info["skipped"][:5]:
            log(f"   skipped {s}")
    return checks


def synthesis_grid_figure(train_root: str | os.PathLike, seed: int = 0, n: int = 4, crop: int = 256) -> Figure:
    """``n`` training images spread over the set: clean, inverse depth, the RIDCP online synthesis of
    haze from them (Eq. 1, I = J·t + A·(1 − t) with t = exp(−β·d), then its degradations) and t."""
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from .data import CleanDepthDataset
    from .synthesis import HazeSynthesisConfig, HazeSynthesizer

    ds = CleanDepthDataset(train_root, crop=crop, flip=False, seed=seed)
    batch = [ds[int(i)] for i in np.linspace(0, len(ds) - 1, n).round().astype(int)]
    clean = torch.stack([b["clean"] for b in batch])
    depth = torch.stack([b["inv_depth"] for b in batch])
    res = HazeSynthesizer(HazeSynthesisConfig(), seed=seed)(clean, depth)
    p = res.params
    fig, axes = plt.subplots(len(batch), 4, figsize=(12, 3 * len(batch)), squeeze=False)
    for r, b in enumerate(batch):
        panels = [(clean[r].permute(1, 2, 0), b["name"]), (depth[r, 0], "inverse depth (1 = near)"),
                  (res.hazy[r].permute(1, 2, 0), f"hazy β={p.beta[r]:.2f} A={p.A[r].mean():.2f}"),
                  (res.t[r, 0], "transmission t")]
        for c, (img, title) in enumerate(panels):
            axes[r, c].imshow(img.numpy(), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            axes[r, c].set_title(title, fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    return fig


def synthesis_draws(n_draws: int, seed: int = 0, cfg=None):
    """``(cfg, draws, frequencies)``: ``n_draws`` synthesis parameters of ``cfg`` (default
    :class:`~corun.synthesis.HazeSynthesisConfig`) and how often each optional degradation was drawn
    (gamma, noise, jpeg, colour shift), to compare with the configured probabilities."""
    import torch

    from .synthesis import HazeSynthesisConfig, sample_haze_params

    cfg = cfg or HazeSynthesisConfig()
    draws = sample_haze_params(cfg, n_draws, torch.Generator().manual_seed(seed))
    freq = {"gamma": float(torch.isfinite(draws.gamma).float().mean()),
            "noise": float((draws.noise_mode >= 0).float().mean()),
            "jpeg": float((draws.jpeg_quality > 0).float().mean()),
            "color_shift": float((draws.color_shift != 0).any(1).float().mean())}
    return cfg, draws, freq


def configured_frequencies(cfg) -> dict[str, float]:
    """The probabilities ``cfg`` gives the optional degradations (keys as :func:`synthesis_draws`')."""
    return {"gamma": cfg.gamma_p, "noise": cfg.noise_p, "jpeg": cfg.jpeg_p, "color_shift": cfg.color_p}


def synthesis_hist_figure(cfg, draws) -> Figure:
    """Histograms of the drawn β and A against their configured ranges."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    axes[0].hist(draws.beta.numpy(), bins=40, color="tab:blue")
    axes[0].set_title(f"β ~ U{list(cfg.beta_range)}")
    axes[1].hist(draws.A.numpy().ravel(), bins=40, color="tab:orange")
    axes[1].set_title(f"A ~ U{list(cfg.A_range)} + U{list(cfg.color_range)} per channel")
    fig.tight_layout()
    return fig


def data_manifest(profile: str, checks: Sequence[Mapping], build_seconds: float | None, cfg,
                  frequencies: Mapping[str, float], n_draws: int, seed: int, root: Path = ROOT) -> dict:
    """What notebook 01 found (``results/<profile>/data_manifest.json``): the checked datasets (paths
    relative to ``root``), the synthesis settings and observed frequencies, and the software versions."""
    import torch

    return {
        "profile": profile,
        "datasets": [{**c, "path": os.path.relpath(c["path"], root)} for c in checks],
        "mini_build_seconds": build_seconds,
        "synthesis": cfg.to_dict(),
        "observed_frequencies": dict(frequencies),
        "n_draws": n_draws,
        "seed": seed,
        "note": "smoke profile: the 'real' set is pseudo-real (synthetic, different degradation), not real haze"
                if profile == "smoke" else "paper profile",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------------------------------------- notebook 02

def _plot_losses(ax, log: pd.DataFrame, keys: Sequence[str], fontsize: float | None = None) -> None:
    for key in keys:
        if key in log and log[key].notna().any():
            ax.plot(log["step"], log[key], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training losses")
    ax.legend(**({"fontsize": fontsize} if fontsize else {}))


def pretrain_curves_figure(log: pd.DataFrame, val: pd.DataFrame) -> Figure:
    """Pretraining curves: the loss terms (log scale), the learning rate and, from ``val``, the EMA
    model's synthetic-test PSNR against the hazy input's."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    _plot_losses(axes[0], log, PRETRAIN_LOSSES)
    axes[1].plot(log["step"], log["lr"])
    axes[1].set_title("learning rate")
    axes[1].set_xlabel("step")
    if len(val):
        axes[2].plot(val["step"], val["psnr"], "o-", label="EMA model")
        axes[2].plot(val["step"], val["psnr_hazy"], "k--", label="hazy input")
        axes[2].set_title("synthetic test PSNR (dB)")
        axes[2].set_xlabel("step")
        axes[2].legend()
    fig.tight_layout()
    return fig


def validation_line(val: pd.DataFrame) -> str | None:
    """The last validation row in words (EMA model against the hazy input), or None without one."""
    if not len(val):
        return None
    last = val.iloc[-1]
    return (f"last validation (step {int(last['step'])}): EMA {last['psnr']:.2f} dB / SSIM {last['ssim']:.3f}; "
            f"hazy input {last['psnr_hazy']:.2f} dB / {last['ssim_hazy']:.3f} "
            f"(gain {last['psnr'] - last['psnr_hazy']:+.2f} dB)")


def pretrain_unfolding_figure(checkpoint: str | os.PathLike | None, test_dir: str | os.PathLike | None,
                              n_show: int = 3) -> tuple[Figure | None, list[str]]:
    """The unfolding of a pretraining checkpoint (its EMA weights) on the first ``n_show`` synthetic test
    pairs of ``test_dir``: hazy, J_1…J_K, clean over T̂_1…T̂_K (:func:`unfolding_grid`).
    ``(None, [why])`` without a checkpoint or a test split."""
    if checkpoint is None or test_dir is None:
        return None, ["no checkpoint or no synthetic test split: nothing to show"]
    from .checkpoint import load_model
    from .data import PairedDataset
    from .inference import run_model

    model = load_model(checkpoint).eval()  # the EMA weights (params_ema)
    ds = PairedDataset(repo_path(test_dir))
    rows = []
    for i in range(min(n_show, len(ds))):
        item = ds[i]
        x = item["hazy"][None]
        rows.append(UnfoldingRow(x, run_model(model, x, keep_stages=True), f"hazy {item['name']}",
                                 clean=item["clean"][None]))
    return unfolding_grid(rows, f"stage by stage ({Path(checkpoint).name}, EMA weights)"), []


# ---------------------------------------------------------------------------------------------- notebook 03

def colabator_overrides(results: str | os.PathLike, overrides: Sequence[str] = (), pretrain_checkpoint=None,
                        real_dir=None, steps: int | None = None) -> list[str]:
    """The config overrides of notebook 03, lowest priority first: the label pool under
    ``<results>/label_pool``, then the user's ``overrides``, then the explicit parameters
    (``colabator.init``, ``colabator.real_dir``, ``train.total_steps``; relative paths: the repository's)."""
    explicit = ([f"colabator.init={repo_path(pretrain_checkpoint)}"] if pretrain_checkpoint is not None else []) \
        + ([f"colabator.real_dir={repo_path(real_dir)}"] if real_dir is not None else []) \
        + ([f"train.total_steps={int(steps)}"] if steps is not None else [])
    return [f"colabator.pool_dir={repo_relative(repo_path(results) / 'label_pool')}", *overrides, *explicit]


def pool_folder(cfg) -> Path:
    """Where the run of ``cfg`` keeps its label pool: ``colabator.pool_dir``, else ``<out_dir>/label_pool``."""
    out_dir = repo_path(cfg.train.out_dir)
    return repo_path(cfg.colabator.pool_dir) if cfg.colabator.pool_dir else out_dir / "label_pool"


def starting_checkpoint(cfg, profile: str, log: Callable[[str], None] = print) -> Path | None:
    """The pretraining checkpoint ``colabator.init`` names (a file, or a run folder's latest checkpoint).

    Without one, the smoke profile raises FileNotFoundError saying what to run first (Colabator fine-tunes
    a pretrained CORUN); the paper profile logs a note and returns None (the notebook only prints a
    command there)."""
    from .colabator.finetune import resolve_init

    spec = cfg.colabator.init
    try:
        ckpt = resolve_init(str(repo_path(spec)) if spec else None)
        problem = None if spec else "colabator.init is not set: the teacher would start untrained"
    except FileNotFoundError as exc:
        ckpt, problem = None, str(exc)
    if ckpt is not None:
        log(f"starting point: {repo_relative(ckpt)}")
    elif profile == "smoke":
        raise FileNotFoundError(
            f"Colabator fine-tunes a pretrained CORUN, and none was found ({problem}). Run the pretraining first: "
            f"notebook 02_pretrain_corun.ipynb, or `corun train --config configs/smoke_pretrain.yaml` "
            f"(or pass pretrain_checkpoint=<checkpoint or run folder>).")
    else:
        log(f"note: {problem}; the torchrun command below needs it (pretrain_checkpoint=... or colabator.init=...)")
    return ckpt


def colabator_curves_figure(log: pd.DataFrame, title: str = "") -> Figure:
    """Colabator fine-tuning from ``log.csv``: the loss terms; the fraction of each logged step's
    candidates the pool accepted and the pool's size; the candidates' mean normalised global scores
    (quality q and haze h, Sec. 3.3; 1 = best)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    _plot_losses(axes[0], log, COLABATOR_LOSSES, fontsize=8)
    axes[1].plot(log["step"], log["accept_rate"], "o-", ms=3, label="accepted (this step's batch)")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_xlabel("step")
    axes[1].set_title("label pool")
    ax2 = axes[1].twinx()
    ax2.plot(log["step"], log["pool_size"], color="C1", label="pool size")
    ax2.set_ylabel("images in the pool", color="C1")
    axes[1].legend(loc="lower left", fontsize=8)
    axes[2].plot(log["step"], log["q_mean"], label="quality q")
    axes[2].plot(log["step"], log["h_mean"], label="haze h (1 = clear)")
    axes[2].set_xlabel("step")
    axes[2].set_title("candidates' mean global scores")
    axes[2].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def colabator_log_line(log: pd.DataFrame) -> str:
    """The last logged step of a Colabator run in words, with the first logged candidate scores."""
    last = log.iloc[-1]
    return (f"step {int(last['step'])}: loss {last['loss']:.4f}, pool {int(last['pool_size'])} images, "
            f"candidate q {last['q_mean']:.3f} / h {last['h_mean']:.3f} (first logged: "
            f"{log['q_mean'].iloc[0]:.3f} / {log['h_mean'].iloc[0]:.3f})")


def finetune_record(profile: str, config, overrides: Sequence[str], out_dir, pool_dir, init_checkpoint,
                    summary: dict | None, pool=None, history=None, means=None) -> dict:
    """What notebook 03 records in ``results/<profile>/colabator_finetune.json``: where the run, its pool
    and checkpoints are (relative to the repository), the training summary, the pool's size, decisions and
    acceptance rate, and the before / after means on real photos (``means``, a DataFrame)."""
    from .checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(out_dir)
    record = {"profile": profile, "config": repo_relative(config), "overrides": list(overrides),
              "run": repo_relative(out_dir), "pool": repo_relative(pool_dir),
              "init_checkpoint": repo_relative(init_checkpoint) if init_checkpoint else None,
              "checkpoint": repo_relative(ckpt) if ckpt else None, "train_summary": summary}
    if history is not None and not history.empty:
        record["pool_size"], record["decisions"] = len(pool), len(history)
        record["accept_rate"] = float(history["accepted"].mean())
    if means is not None:
        record["real_photos"] = json.loads(means.to_json())
    return record
