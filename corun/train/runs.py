"""Starting a run in this process: :func:`train`, which continues the run in ``train.out_dir`` or, when that
was made with other settings, moves it aside first (:func:`supersede_changed_run`)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .. import runlock
from ..checkpoint import latest_checkpoint
from .settings import TrainConfig
from .state import run_changes
from .trainer import Trainer


def supersede_changed_run(cfg: TrainConfig) -> Path | None:
    """Move aside a run in ``train.out_dir`` that ``cfg`` would not continue (see :func:`run_changes`).

    The old run folder (and its label pool, when that lies elsewhere) is renamed to
    ``NAME.superseded-YYYYmmdd-HHMMSS``: nothing is deleted. Returns the new name, or None when there is
    nothing to move. Single-process use (notebooks); torchrun users choose with ``--resume`` themselves.
    """
    out_dir = Path(cfg.train.out_dir)
    ck = latest_checkpoint(out_dir)
    if ck is None:
        return None
    changes = run_changes(ck, cfg)
    if not changes:
        return None
    if (owner := runlock.holder(out_dir)) is not None:
        raise runlock.RunFolderError(f"{out_dir}: made with other settings, but in use by another training "
                                     f"({owner}); not moved")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = out_dir.with_name(f"{out_dir.name}.superseded-{stamp}")
    pool = Path(cfg.colabator.pool_dir) if cfg.colabator.enabled and cfg.colabator.pool_dir else None
    out_dir.rename(moved)
    if pool is not None and pool.exists() and not pool.resolve().is_relative_to(moved.resolve()):
        pool.rename(pool.with_name(f"{pool.name}.superseded-{stamp}"))
    print(f"corun train: the run in {out_dir} was made with other settings ({'; '.join(changes)}); "
          f"moved to {moved} and starting afresh", file=sys.stderr, flush=True)
    return moved


def train(cfg: TrainConfig, resume: bool = False, restart_if_changed: bool = False, **kw) -> dict:
    """Run (or resume) a training run in this process; returns the summary dict.

    ``restart_if_changed`` (with ``resume``): a run in ``train.out_dir`` made with other settings is moved
    aside (:func:`supersede_changed_run`) and a new one starts; the same run is continued. Notebooks use
    this, so an edited config or a re-run pretraining is never answered by a stale finished run.
    ``kw``: ``haze_scorer`` / ``vgg`` for :class:`Trainer`.
    """
    if resume and restart_if_changed:
        supersede_changed_run(cfg)
    return Trainer(cfg, resume=resume, **kw).fit()
