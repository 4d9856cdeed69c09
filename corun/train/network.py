"""The network a run trains (CORUN or any restorer, ``model:``), its EMA, and the divergence probe."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, build_network, infer_config, network_record, read_state_dict
from ..config import ConfigError
from ..losses import split_output
from ..model import CORUN
from .settings import ModelSection

#: side of the fixed probe image a checkpoint's weights must dehaze to finite values (:func:`diverged`)
PROBE_SIDE = 32


def build_model(m: ModelSection) -> nn.Module:
    """The network ``model:`` names: CORUN from depth/dim/levels/num_blocks, or ``factory(**kwargs)``."""
    if m.factory is None:
        return CORUN(depth=m.depth, dim=m.dim, levels=m.levels, num_blocks=tuple(m.num_blocks))
    try:
        return build_network(m.factory, m.kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model.factory: {exc}") from None


def size_multiple(model: nn.Module, m: ModelSection) -> int:
    """What H and W must be multiples of: CORUN's 2**levels, else ``model.multiple`` of the config, else the
    network's own ``multiple`` attribute, else 1."""
    if isinstance(model, CORUN):
        return model.config.multiple
    if m.multiple is not None:
        return int(m.multiple)
    own = getattr(model, "multiple", None)
    return int(own) if isinstance(own, int) and own >= 1 else 1


def describe(model: nn.Module) -> dict:
    """The network in one dict for logs: CORUN's config, or the factory and its kwargs."""
    record = network_record(model)
    return record.get("model_config") or record.get("model_factory") or {"class": type(model).__name__}


def section_from_checkpoint(meta: dict, sd: dict) -> ModelSection:
    """The ``model:`` section a checkpoint was trained with (its ``model_factory``, its CORUN
    ``model_config``, or for the authors' files the CORUN size read off the weights)."""
    if "model_factory" in meta:
        recipe = meta["model_factory"]
        return ModelSection(factory=recipe["factory"], kwargs=dict(recipe.get("kwargs") or {}))
    arch = meta.get("model_config") or dataclasses.asdict(infer_config(sd))
    return ModelSection(depth=int(arch["depth"]), dim=int(arch["dim"]), levels=int(arch["levels"]),
                        num_blocks=tuple(arch["num_blocks"]))


def model_from_init(cfg, init_checkpoint: Path, announce: bool):
    """Colabator: ``cfg`` with the ``model:`` section of the pretraining checkpoint it starts from (the
    architecture comes from there); ``model.multiple`` of ``cfg`` is kept for a factory network."""
    try:
        sd, meta = read_state_dict(init_checkpoint)
        new = section_from_checkpoint(meta, sd)
    except CheckpointError as exc:
        raise ConfigError(f"colabator.init: {exc}") from None
    if new.factory is not None:
        new = dataclasses.replace(new, multiple=cfg.model.multiple)
    if _architecture(cfg.model) == _architecture(new):
        return cfg
    if announce:
        shown = dataclasses.asdict(new) if new.factory is None else {"factory": new.factory, "kwargs": new.kwargs}
        if new.factory is None:
            shown = {k: shown[k] for k in ("depth", "dim", "levels", "num_blocks")}
        print(f"corun train: model {shown} taken from {init_checkpoint}", file=sys.stderr, flush=True)
    return dataclasses.replace(cfg, model=new)


def _architecture(m: ModelSection) -> tuple:
    if m.factory is not None:
        return (m.factory, m.kwargs)
    return (m.depth, m.dim, m.levels, tuple(m.num_blocks))


def same_network(record: dict, model: nn.Module) -> str | None:
    """Why a checkpoint's network ``record`` (its ``model_config`` / ``model_factory``) is not ``model``'s,
    or None when it is (or the checkpoint does not say)."""
    own = network_record(model)
    for key in ("model_config", "model_factory"):
        if record.get(key) and record[key] != own.get(key):
            return f"saved from model {record[key]}, but the config asks for {describe(model)}"
    return None


def make_ema(model: nn.Module, decay: float, warmup: bool):
    """``AveragedModel`` with an exponential moving average (optionally with the usual warm-up)."""
    from torch.optim.swa_utils import AveragedModel

    def ema_update(ema_params, params, num_averaged):
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return AveragedModel(model, multi_avg_fn=ema_update)


def probe_image(multiple: int, device) -> Tensor:
    """A fixed smooth (1, 3, S, S) image in [0.15, 0.85], S = max(PROBE_SIDE, 2·multiple); no RNG is drawn."""
    side = max(PROBE_SIDE, 2 * multiple)
    side += (-side) % multiple
    ramp = torch.linspace(0.0, 1.0, side, device=device)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    img = torch.stack([0.5 + 0.35 * torch.sin(6 * xx + 2 * c) * torch.cos(4 * yy - c) for c in range(3)])
    return img[None].float()


@torch.no_grad()
def diverged(model: nn.Module, multiple: int | None = None) -> bool:
    """Whether ``model`` gives non-finite output (for CORUN: image, stages or transmissions) on
    :func:`probe_image`: weights can be finite and still diverged (``optim.lr=0.3``), and those must never
    become a checkpoint. ``multiple``: the network's size multiple (CORUN's is read off the model)."""
    if multiple is None:
        multiple = model.config.multiple if isinstance(model, CORUN) else 1
    was_training = model.training
    model.eval()
    try:
        out = model(probe_image(multiple, next(model.parameters()).device))
    finally:
        model.train(was_training)
    if hasattr(out, "stages") and hasattr(out, "transmissions"):
        values = (out.image, *out.stages, *out.transmissions)
    else:
        values = (split_output(out).raw,)
    return not all(bool(torch.isfinite(v).all()) for v in values)

