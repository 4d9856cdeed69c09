"""Reading and writing CORUN weights.

Formats read by :func:`load_checkpoint` / :func:`read_state_dict`:

* the authors' BasicSR files: ``{"params_ema": sd}`` and/or ``{"params": sd}`` (``params_ema`` preferred);
* this project's checkpoints: the same two keys plus ``"model_config"`` and training state;
* a bare state dict, or a ``.safetensors`` file (the shipped default weights, stored fp16).

Networks other than CORUN (``model: {factory: "pkg.mod:fn", kwargs: {...}}`` in a training config) are
built by :func:`build_network`, which notes the factory and its arguments on the module; checkpoints and
safetensors files of such a network carry them as ``"model_factory"`` (instead of CORUN's
``"model_config"``), so :func:`load_model` rebuilds the same network.

A training run keeps its checkpoints as ``<run>/checkpoints/step_NNNNNNN.pth``; :func:`latest_checkpoint`
finds the newest one.

Prefixes added by DataParallel/DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) are stripped.
All writes are atomic: a temporary file in the same folder, fsynced, then renamed over the target.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from .model import CORUN, CORUNConfig
from .utils import atomic_write

STRIP_PREFIXES = ("module.", "_orig_mod.")
#: a training checkpoint's file name; group 1 is its step
CKPT_RE = re.compile(r"step_(\d+)\.pth$")
#: ``package.module:function`` (the function may be a class, or an attribute path such as ``Nets.unet``)
FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
#: the attribute :func:`build_network` sets on the module it builds: ``{"factory": ..., "kwargs": ...}``
FACTORY_ATTR = "_corun_factory"


class CheckpointError(RuntimeError):
    """A weights file could not be used; the message names the file and the reason."""


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest ``<out_dir>/checkpoints/step_N.pth`` (largest N), or None when there is none."""
    found = sorted(((int(m.group(1)), p) for p in (Path(out_dir) / "checkpoints").glob("step_*.pth")
                    if (m := CKPT_RE.search(p.name))))
    return found[-1][1] if found else None


# ------------------------------------------------------------------------------ networks by factory

def import_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named by ``"package.module:function"``; raises ValueError naming what is missing."""
    if not isinstance(spec, str) or not FACTORY_RE.match(spec):
        raise ValueError(f"model factory {spec!r}: expected 'package.module:function'")
    module_name, _, attr_path = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model factory {spec!r}: cannot import {module_name} ({exc})") from None
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"model factory {spec!r}: {obj.__name__ if hasattr(obj, '__name__') else obj} "
                             f"has no attribute {attr!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ValueError(f"model factory {spec!r} is not callable")
    return obj


def build_network(factory: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``factory(**kwargs)``, checked to be an ``nn.Module``, with the recipe noted on it (``FACTORY_ATTR``)
    so that :func:`save_checkpoint` / :func:`save_safetensors` record it and :func:`load_model` can rebuild it."""
    kwargs = dict(kwargs or {})
    net = import_factory(factory)(**kwargs)
    if not isinstance(net, nn.Module):
        raise ValueError(f"model factory {factory!r} returned {type(net).__name__}, not a torch.nn.Module")
    setattr(net, FACTORY_ATTR, {"factory": factory, "kwargs": kwargs})
    return net


def network_record(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint stores to rebuild ``model``: ``{"model_config": ...}`` for CORUN,
    ``{"model_factory": {"factory", "kwargs"}}`` for a network from :func:`build_network`, else ``{}``."""
    model = _unwrap(model)
    if isinstance(model, CORUN):
        return {"model_config": model_config_dict(model)}
    recipe = getattr(model, FACTORY_ATTR, None)
    return {"model_factory": dict(recipe)} if recipe else {}


def _strip_prefixes(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in sd.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def read_state_dict(path: str | os.PathLike, prefer: str = "params_ema") -> tuple[dict[str, Tensor], dict]:
    """Read a weights file and return ``(state_dict, meta)``.

    ``meta`` holds ``model_config`` (a dict) when the file has one, and ``source_key``: which entry the
    weights came from (``params_ema``, ``params``, ``state_dict`` or ``None`` for a bare dict).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    meta: dict[str, Any] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                sd = {k: f.get_tensor(k) for k in f.keys()}
                header = f.metadata() or {}
            import json

            for key in ("model_config", "model_factory"):
                if key in header:
                    meta[key] = json.loads(header[key])
            meta["source_key"] = None
            return _strip_prefixes(sd), meta
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # unreadable, truncated, pickled objects, not a checkpoint
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    order = [prefer] + [k for k in ("params_ema", "params", "state_dict", "model") if k != prefer]
    for key in order:
        if isinstance(obj.get(key), Mapping):
            sd, meta["source_key"] = obj[key], key
            break
    else:
        sd, meta["source_key"] = obj, None
    for key in ("model_config", "model_factory"):
        if isinstance(obj.get(key), Mapping):
            meta[key] = dict(obj[key])
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]}")
    return _strip_prefixes(sd), meta


def infer_config(sd: Mapping[str, Tensor]) -> CORUNConfig:
    """Recover the architecture from a state dict (the authors' files carry no config)."""
    try:
        basic = {int(m.group(1)) for k in sd if (m := re.match(r"basic\.(\d+)\.", k))}
        dim = sd["first.dehaze_net.embedding.weight"].shape[0]
        levels = len({int(m.group(1)) for k in sd
                      if (m := re.match(r"first\.dehaze_net\.encoder_layers\.(\d+)\.", k))})
        blocks = []
        for i in range(levels):
            pat = re.compile(rf"first\.dehaze_net\.encoder_layers\.{i}\.0\.blocks\.(\d+)\.")
            blocks.append(len({int(m.group(1)) for k in sd if (m := pat.match(k))}))
    except KeyError as exc:
        raise CheckpointError(f"not a CORUN state dict (missing {exc})") from None
    return CORUNConfig(depth=len(basic) + 2, dim=dim, levels=levels, num_blocks=tuple(blocks))


def load_checkpoint(model: nn.Module, path: str | os.PathLike, prefer: str = "params_ema",
                    strict: bool = True) -> dict:
    """Load weights from ``path`` into ``model`` (in place) and return the file's ``meta``.

    Raises :class:`CheckpointError` naming the file and listing missing / unexpected keys and shape
    mismatches when the weights do not fit.
    """
    sd, meta = read_state_dict(path, prefer=prefer)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        parts = [f"{path}: weights do not fit {type(model).__name__}"]
        if "model_config" in meta:
            parts.append(f"  the file was saved from {meta['model_config']}")
        for name, items in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", shapes)):
            if items:
                shown = "\n    ".join(items[:10])
                more = f"\n    ... and {len(items) - 10} more" if len(items) > 10 else ""
                parts.append(f"  {name} ({len(items)}):\n    {shown}{more}")
        raise CheckpointError("\n".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items() if k in own}, strict=strict)
    return meta


def load_model(path: str | os.PathLike, prefer: str = "params_ema", map_location="cpu") -> nn.Module:
    """Build the network the weights in ``path`` belong to and load them: a :class:`CORUN` of the right
    size, or for a ``"model_factory"`` file the network its factory builds (:func:`build_network`)."""
    sd, meta = read_state_dict(path, prefer=prefer)
    if "model_factory" in meta:
        recipe = meta["model_factory"]
        try:
            model = build_network(recipe["factory"], recipe.get("kwargs"))
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: cannot rebuild its network {recipe} ({exc})") from None
        load_checkpoint(model, path, prefer=prefer)
        return model.to(map_location).eval()
    cfg = meta.get("model_config")
    config = CORUNConfig(**{**cfg, "num_blocks": tuple(cfg.get("num_blocks", (1, 1, 1)))}) if cfg \
        else infer_config(sd)
    model = CORUN(**dataclasses.asdict(config))
    load_checkpoint(model, path, prefer=prefer)
    return model.to(map_location).eval()


def model_config_dict(model: CORUN) -> dict:
    cfg = dataclasses.asdict(model.config)
    cfg["num_blocks"] = list(cfg["num_blocks"])
    return cfg


def save_checkpoint(path: str | os.PathLike, model: nn.Module, ema: nn.Module | None = None,
                    **extra: Any) -> Path:
    """Atomically save ``{"params", "params_ema", "model_config", **extra}`` (``"model_factory"`` instead of
    ``"model_config"`` for a network that is not CORUN, see :func:`network_record`).

    ``params_ema`` is the EMA model's weights when given, else the model's own, so both the authors'
    tools (which read ``params_ema``) and ours pick the weights meant for inference.
    """
    params = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    params_ema = {k: v.detach().cpu() for k, v in _unwrap(ema).state_dict().items()} if ema else params
    payload = {"params": params, "params_ema": params_ema, **network_record(model), **extra}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def save_safetensors(path: str | os.PathLike, model: nn.Module, dtype: torch.dtype = torch.float16) -> Path:
    """Atomically save inference weights as safetensors (fp16 by default) with the model config."""
    import json

    from safetensors.torch import save_file

    model = _unwrap(model)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in network_record(model).items()}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DDP / torch.compile / AveragedModel wrappers."""
    changed = True
    while changed:
        changed = False
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model, changed = inner, True
    return model
