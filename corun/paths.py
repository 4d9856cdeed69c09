"""What "relative to the repository" means, in one place.

The notebooks take folder parameters (``runs/...``, ``results/...``, ``figures/...``) that must mean the same
thing wherever the kernel starts: papermill under ``corun reproduce`` starts it in the repository, JupyterLab
in ``notebooks/``. Every relative path a notebook is given or builds goes through :func:`repo_path`, and
the training config a notebook hands to :func:`corun.train.train` through :func:`anchor_outputs`, so a
kernel started in ``notebooks/`` finds the finished runs of ``make reproduce`` instead of training new ones
into ``notebooks/runs/`` (issue 17.9).

The command line keeps the usual meaning (relative to the current folder); the trainer falls back to the
repository for *inputs* that are not found there (``corun.train._resolve``).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

#: the repository (the folder holding ``corun/``, ``configs/``, ``notebooks/``)
ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str | os.PathLike, root: Path = ROOT) -> Path:
    """``path`` as an absolute path: absolute paths stay (``~`` expanded), relative ones are relative to ``root``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def repo_relative(path: str | os.PathLike, root: Path = ROOT) -> str:
    """``path`` shown relative to ``root`` when it lies inside it, else as given."""
    p = Path(path)
    return str(p.relative_to(root)) if p.is_absolute() and p.is_relative_to(root) else str(p)


def anchor_outputs(cfg, root: Path = ROOT):
    """A copy of the training config ``cfg`` whose output folders (``train.out_dir`` and, when set,
    ``colabator.pool_dir``) are absolute, relative to ``root``.

    Only outputs move: those two are settings a resumed run may change (``corun.train.RESUMABLE_KEYS``), so a
    run made under ``corun reproduce`` is still recognised as the same run. Inputs keep the values written
    in the config (the trainer finds them in the repository when they are not in the current folder).
    """
    train = dataclasses.replace(cfg.train, out_dir=str(repo_path(cfg.train.out_dir, root)))
    changes = {"train": train}
    colab = getattr(cfg, "colabator", None)
    if colab is not None and colab.pool_dir:
        changes["colabator"] = dataclasses.replace(colab, pool_dir=str(repo_path(colab.pool_dir, root)))
    return dataclasses.replace(cfg, **changes)
