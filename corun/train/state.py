"""A run's checkpoints: writing ``checkpoints/step_N.pth`` (never with diverged weights) and loading one to
resume exactly: weights, EMA, optimiser, schedule, data position, RNG, and for Colabator the real-photo
loader and the label pool rolled back to the checkpoint's step, so the same decisions follow."""
from __future__ import annotations

import contextlib
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import CKPT_RE, latest_checkpoint, save_checkpoint
from ..colabator.finetune import resolve_init
from ..config import ConfigError, to_dict
from ..utils import sha256_file
from .network import diverged, same_network
from .settings import RESUMABLE_KEYS, TrainConfig
from .setup import Run, cosine_restart_factor, resolve


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row; nothing non-finite was written."""


def rng_state() -> dict:
    """Every RNG a step draws from (torch, Python, NumPy, CUDA), as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.state_dict().values() if p.is_floating_point())


def plain_table(df) -> dict:
    """A DataFrame as a dict of plain Python lists (loadable with ``torch.load(weights_only=True)``)."""
    return {str(c): [v.item() if hasattr(v, "item") else v for v in df[c].tolist()] for c in df.columns}


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested config dict as ``{"section.key": value}`` (tuples as lists)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


# ------------------------------------------------------------------------------------------ writing

def _colabator_entries(run: Run) -> dict:
    if run.colab is None:
        return {}
    entries = {"real_loader": run.colab.loader.state_dict(),
               "label_pool_table": plain_table(run.colab.pool.table())}
    if run.init_checkpoint is not None:
        entries["init_sha256"] = run.init_sha256
    return entries


def _refuse_diverged(run: Run, step: int) -> None:
    bad = [name for name, m in (("weights", run.model), ("EMA", run.ema.module)) if diverged(m, run.multiple)]
    if bad:  # every rank holds the same weights, so every rank stops here together
        raise NonFiniteLossError(
            f"step {step}: the {' and the '.join(bad)} give non-finite output on a fixed probe image "
            f"(the run diverged; try a lower optim.lr); not checkpointed. Last good checkpoint: "
            f"{latest_checkpoint(run.out_dir) or 'none'}")


def _kept_steps(ckdir: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in ckdir.glob("step_*.pth") if (m := CKPT_RE.search(p.name)))


def save_run(run: Run, step: int, nonfinite_streak: int) -> Path | None:
    """Rank 0 writes ``checkpoints/step_N.pth`` atomically (and deletes those beyond ``train.keep_last``);
    all ranks wait for it. Label-pool versions older than the oldest kept checkpoint are pruned."""
    colab = _colabator_entries(run)
    _refuse_diverged(run, step)
    path, keep = None, run.cfg.train.keep_last
    if run.proc.is_main:
        if not (all_finite(run.model) and all_finite(run.ema.module)):
            raise NonFiniteLossError(f"refusing to write a checkpoint with non-finite weights at step {step}")
        path = run.out_dir / "checkpoints" / f"step_{step:07d}.pth"
        save_checkpoint(path, run.model, run.ema.module,
                        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                        step=step, ema_n_averaged=int(run.ema.n_averaged), nonfinite_streak=nonfinite_streak,
                        rng=rng_state(), loader=run.loader.state_dict(), world_size=run.proc.world,
                        train_config=to_dict(run.cfg), **colab)
        if keep > 0:
            for p in sorted(p for p in path.parent.glob("step_*.pth") if CKPT_RE.search(p.name))[:-keep]:
                p.unlink(missing_ok=True)
    run.proc.barrier()
    if run.colab is not None and keep > 0 and (run.proc.is_main or not run.cfg.colabator.shared_pool):
        # label versions older than the oldest kept checkpoint can never be rolled back to
        kept = _kept_steps(run.out_dir / "checkpoints")
        if kept:
            run.colab.pool.prune(kept[0])
    return path


# ------------------------------------------------------------------------------------------ reading

def run_changes(checkpoint: str | os.PathLike | dict, cfg: TrainConfig) -> list[str]:
    """What makes ``cfg`` a different run from the one that wrote ``checkpoint`` (empty: the same run).

    Compares every config setting except :data:`~corun.train.settings.RESUMABLE_KEYS`, and for Colabator
    the content (SHA-256) of the pretraining checkpoint it starts from, so a re-run pretraining is noticed
    even at the same path.
    """
    ck = checkpoint if isinstance(checkpoint, dict) else torch.load(checkpoint, map_location="cpu",
                                                                     weights_only=True)
    old = flatten(ck.get("train_config") or {})
    new = flatten(to_dict(cfg))
    changes = []
    for key in sorted(set(old) & set(new)):  # a setting added to the code since is not a change
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_KEYS):
            continue
        if cfg.colabator.enabled and key.startswith("model."):
            continue  # Colabator takes the architecture from its init checkpoint (compared below)
        if old[key] != new[key]:
            changes.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    if cfg.colabator.enabled and cfg.colabator.init:
        try:
            init = resolve_init(str(resolve(cfg.colabator.init)))
        except FileNotFoundError:
            init = None
        old_sha = ck.get("init_sha256")
        if init is not None and old_sha is not None and sha256_file(init) != old_sha:
            changes.append(f"colabator.init: {init} is not the checkpoint this run started from")
    return changes


def _roll_back_pool(run: Run, ck: dict, path: Path, step: int) -> None:
    """Colabator: the real-photo loader and the label pool back to their state at the checkpoint."""
    if "real_loader" not in ck:
        raise ConfigError(f"{path}: not a Colabator checkpoint (no real-photo loader state)")
    run.colab.loader.load_state_dict(ck["real_loader"])
    if run.proc.is_main:  # the pool back to its state at this checkpoint: the same decisions follow
        run.colab.pool.rollback(step, expected=ck.get("label_pool_table"))
    elif not run.cfg.colabator.shared_pool:  # per-rank pools: each rank rolls back its own
        run.colab.pool.rollback(step)
    run.proc.barrier()


def load_run(run: Run, path: Path) -> tuple[int, int]:
    """Load checkpoint ``path`` into ``run``; returns ``(step, nonfinite_streak)``. Settings in which
    ``run.cfg`` differs from the checkpoint's (:func:`run_changes`) are warned about, and new optimiser and
    schedule settings apply from here on (:func:`apply_optim_settings`)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if (why := same_network(ck, run.model)) is not None:
        raise ConfigError(f"{path}: {why}")
    run.model.load_state_dict(ck["params"])
    run.ema.module.load_state_dict(ck["params_ema"])
    run.ema.n_averaged.fill_(int(ck.get("ema_n_averaged", 1)))
    run.optimizer.load_state_dict(ck["optimizer"])
    run.scheduler.load_state_dict(ck["scheduler"])
    step = int(ck["step"])
    run.loader.load_state_dict(ck["loader"])
    if run.colab is not None:
        _roll_back_pool(run, ck, path, step)
    if run.proc.is_main and (changes := run_changes(ck, run.cfg)):
        warnings.warn(f"{path}: resuming a run made with other settings ({'; '.join(changes)}); the "
                      "checkpoint's model and optimiser state continue under the new settings", stacklevel=3)
    apply_optim_settings(run, ck, step)
    if ck.get("world_size", run.proc.world) != run.proc.world:
        warnings.warn(f"{path}: saved with {ck['world_size']} processes, resuming with {run.proc.world}; the "
                      "data order from here on differs from the original run", stacklevel=3)
    set_rng_state(ck["rng"])
    return step, int(ck.get("nonfinite_streak", 0))


def _schedule_changed(ck: dict, cfg: TrainConfig) -> bool:
    old = flatten((ck.get("train_config") or {}).get("schedule") or {})
    new = flatten(to_dict(cfg.schedule))
    return any(old[k] != new[k] for k in set(old) & set(new))


def apply_optim_settings(run: Run, ck: dict, step: int) -> None:
    """``--resume`` with another ``optim.lr`` / ``betas`` / ``weight_decay`` or ``schedule``: the loaded
    optimiser and scheduler carry the old values, so the new ones are applied here and the learning rate
    follows the new schedule from this step on (Adam's moments continue). Unchanged settings touch
    nothing, so a plain resume stays bit-identical."""
    o, groups, scheduler = run.cfg.optim, run.optimizer.param_groups, run.scheduler
    for g in groups:
        if tuple(g["betas"]) != tuple(o.betas):
            g["betas"] = tuple(o.betas)
        if g["weight_decay"] != o.weight_decay:
            g["weight_decay"] = o.weight_decay
    if list(scheduler.base_lrs) == [o.lr] * len(groups) and not _schedule_changed(ck, run.cfg):
        return
    lr = o.lr * cosine_restart_factor(step, o.lr, run.cfg.schedule)
    scheduler.base_lrs = [o.lr] * len(groups)
    for g in groups:
        g["initial_lr"], g["lr"] = o.lr, lr
    scheduler._last_lr = [lr] * len(groups)
    run.proc.say(f"optim.lr {o.lr:g} and the schedule of this config apply from step {step} "
                 f"(learning rate now {lr:.3g})")
