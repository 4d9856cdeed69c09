"""The training configuration: one dataclass per YAML section, and the value checks a run needs.

``load_config(TrainConfig, "configs/smoke_pretrain.yaml", ["train.total_steps=50"])`` builds it
(:mod:`corun.config` refuses unknown keys and wrong types); :func:`check_settings` then refuses values the
types allow but a run cannot use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..checkpoint import FACTORY_RE
from ..colabator.finetune import ColabatorSection
from ..config import ConfigError
from ..losses import LossConfig


@dataclass
class ModelSection:
    """``model:``, the network to train: CORUN (the default) or any restorer an importable factory builds.

    CORUN::

        model: {depth: 4, dim: 30, levels: 3, num_blocks: [1, 1, 1]}

    Any other restorer (a function or class returning an ``nn.Module`` that maps a (B, 3, H, W) hazy batch in
    [0, 1] to the restored image: a tensor, a tuple whose first entry is the image, or a CORUNOutput)::

        model:
          factory: mypkg.nets:unet      # "package.module:function", called as factory(**kwargs)
          kwargs: {width: 16}
          multiple: 4                   # H and W must be multiples of this (default: the network's own
                                        # ``multiple`` attribute, else 1)

    The CORUN keys stay at their defaults then. Checkpoints record the factory and its kwargs
    (``"model_factory"``), so ``--resume``, ``colabator.init``, ``corun export`` and
    :func:`corun.checkpoint.load_model` rebuild the same network. A network that returns a CORUNOutput gets
    the ASM (transmission) terms of the losses and of Colabator; one that returns only an image does not.
    """

    depth: int = 4  #: CORUN: unfolding stages K
    dim: int = 30  #: CORUN: base width
    levels: int = 3  #: CORUN: encoder/decoder levels (patches are multiples of 2**levels)
    num_blocks: tuple[int, ...] = (1, 1, 1)  #: CORUN: attention blocks per level
    #: another restorer: "package.module:function" (null = CORUN)
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  #: keyword arguments of ``factory``
    #: H, W multiple the factory's network needs (null: its ``multiple`` attribute, else 1); CORUN: 2**levels
    multiple: int | None = None


@dataclass
class DataSection:
    root: str = "data/mini"  #: clean images + depth (RIDCP500 layout: rgb_500/ + depth_500/)
    patch: int = 288  #: random crop size (multiple of 2**levels)
    batch_size: int = 2  #: per process (GPU)
    num_workers: int = 0
    flip: bool = True
    synthesis: str = "paper"  #: "paper" (A ∈ [0.25, 1], upstream HEAD) or "upstream_release" (A ∈ [0.25, 1.8])
    cache_images: bool = False  #: keep decoded images + depth in memory (small datasets, e.g. the mini set)
    #: clean images and depth in two folders of your own (instead of root's rgb_500/ + depth_500/ layout),
    #: e.g. photos and the output of `corun data depth`
    clean_dir: str | None = None
    depth_dir: str | None = None
    #: rescale so the short side is U[patch, short side] before the crop (upstream use_resize_crop);
    #: None = upstream's choice: on for Colabator (train_corun_with_colabator_by_depth.yml), off for
    #: pretraining (train_corun_by_depth.yml)
    resize_crop: bool | None = None
    #: clip the synthetic hazy image to [0, 1]; upstream leaves it unclipped where no JPEG step ran (A plus
    #: the colour shift can exceed 1)
    clamp_hazy: bool = True


@dataclass
class OptimSection:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = None  #: max total grad norm; None = no clipping (upstream)


@dataclass
class ScheduleSection:
    """BasicSR's CosineAnnealingRestartCyclicLR: cosine from lr·restart_weight to eta_min in each period.

    Upstream's values (periods [30000], restart_weights [1], eta_mins [1e-4]) with lr 1e-4 make the
    learning rate constant at 1e-4: eta_min equals the base lr.
    """

    periods: tuple[int, ...] = (30000,)
    restart_weights: tuple[float, ...] = (1.0,)
    eta_mins: tuple[float, ...] = (1e-4,)
    #: linear warm-up over the first N steps (BasicSR's ``warmup_iter``; upstream: none), lr·(step+1)/N
    warmup_steps: int = 0


@dataclass
class EMASection:
    decay: float = 0.999
    #: use min(decay, (1+n)/(10+n)) after n updates, so short runs' EMA is not stuck near the init
    warmup: bool = False


@dataclass
class ValSection:
    every: int = 5000  #: validate every N steps (and at the end); 0 = only at the end
    synthetic_dir: str | None = "data/mini/test"  #: paired hazy/ + clean/ folders → PSNR / SSIM
    max_images: int = 0  #: 0 = all
    real_dir: str | None = None  #: real hazy photos: dehazed copies are saved (no reference metrics)
    max_real: int = 8
    tb_images: int = 3  #: test images shown in the TensorBoard grid


@dataclass
class RunSection:
    total_steps: int = 30000
    seed: int = 0
    out_dir: str = "runs/pretrain"
    ckpt_every: int = 5000
    keep_last: int = 3  #: checkpoints kept (older ones deleted); 0 = keep all
    log_every: int = 100
    device: str = "auto"
    threads: int = 0  #: CPU threads (0 = torch's choice)
    #: CPU: keep freed memory in the process instead of page-faulting large activations in again every
    #: step (glibc only; see corun.cpu_memory). Same results, faster steps; the process keeps its peak RSS.
    cpu_retain_memory: bool = True
    bf16: bool = False  #: bf16 autocast (CUDA only); upstream trains in fp32
    channels_last: bool = False
    compile: bool = False
    max_nonfinite: int = 5  #: abort after this many non-finite losses in a row
    tensorboard: bool = True
    progress: bool = True
    check_sync: bool = False  #: DDP: compare a parameter checksum across ranks at every log step


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    ema: EMASection = field(default_factory=EMASection)
    loss: LossConfig = field(default_factory=LossConfig)
    val: ValSection = field(default_factory=ValSection)
    train: RunSection = field(default_factory=RunSection)
    #: Colabator fine-tuning on real photos (off for pretraining); see corun/colabator/finetune.py
    colabator: ColabatorSection = field(default_factory=ColabatorSection)


#: settings a resumed run may change without becoming another run: length, logging, hardware, validation
RESUMABLE_KEYS = ("train.total_steps", "train.out_dir", "train.ckpt_every", "train.keep_last", "train.log_every",
                  "train.device", "train.threads", "train.cpu_retain_memory", "train.compile", "train.tensorboard",
                  "train.progress", "train.check_sync", "train.max_nonfinite", "data.num_workers", "val.",
                  "colabator.pool_dir")

CORUN_KEYS = ("depth", "dim", "levels", "num_blocks")


def effective_resize_crop(cfg: TrainConfig) -> bool:
    """``data.resize_crop``, or upstream's choice when unset: on for Colabator (Y2), off for pretraining (Y1)."""
    return cfg.colabator.enabled if cfg.data.resize_crop is None else bool(cfg.data.resize_crop)


def check_settings(cfg: TrainConfig) -> None:
    """Values the types allow but a run cannot use (``train.total_steps=-3``), refused before anything is
    written; :func:`corun.config.check_type` has already refused wrong types (``train.total_steps=abc``)."""
    t, d, o, s = cfg.train, cfg.data, cfg.optim, cfg.schedule
    rules = [("train.total_steps", t.total_steps >= 1, "at least 1"),
             ("train.ckpt_every", t.ckpt_every >= 0, "0 (only at the end) or more"),
             ("train.keep_last", t.keep_last >= 0, "0 (keep all) or more"),
             ("train.log_every", t.log_every >= 1, "at least 1"),
             ("train.max_nonfinite", t.max_nonfinite >= 1, "at least 1"),
             ("train.threads", t.threads >= 0, "0 (torch's choice) or more"),
             ("data.batch_size", d.batch_size >= 1, "at least 1"),
             ("data.patch", d.patch >= 1, "positive"),
             ("data.num_workers", d.num_workers >= 0, "0 or more"),
             ("optim.lr", math.isfinite(o.lr) and o.lr > 0, "a positive number"),
             ("optim.weight_decay", o.weight_decay >= 0, "0 or more"),
             ("optim.grad_clip", o.grad_clip is None or o.grad_clip > 0, "null or positive"),
             ("optim.betas", all(0 <= b < 1 for b in o.betas), "in [0, 1)"),
             ("ema.decay", 0 <= cfg.ema.decay <= 1, "in [0, 1]"),
             ("schedule.periods", all(p > 0 for p in s.periods), "positive"),
             ("schedule.eta_mins", all(e >= 0 for e in s.eta_mins), "0 or more"),
             ("schedule.warmup_steps", s.warmup_steps >= 0, "0 or more"),
             ("val.every", cfg.val.every >= 0, "0 (only at the end) or more"),
             *_model_rules(cfg.model)]
    bad = [f"{key} must be {need}, got {_value_of(cfg, key)!r}" for key, ok, need in rules if not ok]
    if bad:
        raise ConfigError("; ".join(bad))


def _model_rules(m: ModelSection) -> list[tuple[str, bool, str]]:
    """``model:``: a well-formed factory; the CORUN keys only for CORUN, ``kwargs`` only for a factory."""
    default = ModelSection()
    if m.factory is None:
        return [("model.kwargs", not m.kwargs, "empty without model.factory (CORUN takes depth, dim, ...)"),
                ("model.multiple", m.multiple in (None, 2 ** m.levels), f"null for CORUN (2**levels = {2 ** m.levels})")]
    corun_set = {f.name for f in fields(ModelSection) if f.name in CORUN_KEYS
                 and getattr(m, f.name) != getattr(default, f.name)}
    return [("model.factory", bool(FACTORY_RE.match(m.factory)), "'package.module:function'"),
            ("model.multiple", m.multiple is None or m.multiple >= 1, "null or at least 1"),
            *[(f"model.{k}", False, "left out with model.factory (the network's arguments go in model.kwargs)")
              for k in sorted(corun_set)]]


def _value_of(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)
