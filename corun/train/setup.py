"""Setting a run up: the process (device, DDP), the network and its EMA, optimiser and schedule, the data
with online haze synthesis, the losses and the Colabator parts. :func:`build_run` returns them as a
:class:`Run`; nothing here trains or writes files."""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import cpu_memory
from ..colabator.finetune import ColabatorParts, resolve_init
from ..config import ConfigError
from ..data import CleanDepthDataset, ResumableLoader
from ..losses import CORUNLoss
from ..synthesis import HazeSynthesisConfig, HazeSynthesizer
from ..utils import sha256_file
from .network import build_model, make_ema, model_from_init, size_multiple
from .settings import ScheduleSection, TrainConfig, effective_resize_crop


# ------------------------------------------------------------------------------------------- process

def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


class Process:
    """This process's place in the run: rank, world size, device, and the collective operations (which are
    no-ops in a single process)."""

    def __init__(self, device: torch.device, rank: int = 0, world: int = 1):
        self.device, self.rank, self.world = device, rank, world
        self.distributed, self.is_main = world > 1, rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_min(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return float(t.item())

    def all_mean(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def all_gather(self, value: float) -> list[float]:
        local = torch.tensor([value], dtype=torch.float64, device=self.device)
        if not self.distributed:
            return [local.item()]
        gathered = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        return [g.item() for g in gathered]

    def say(self, message: str, newline: bool = False) -> None:
        """Print a ``corun train:`` line on rank 0 (``newline``: after an empty line, past the progress bar)."""
        if self.is_main:
            print(f"{chr(10) if newline else ''}corun train: {message}", file=sys.stderr, flush=True)


def start_process(t) -> Process:
    """Threads, device, CPU allocator and the DDP process group for the ``train:`` section ``t``."""
    rank, world, local_rank = dist_env()
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.device == "auto":
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(t.device)
    if dev.type == "cpu" and t.cpu_retain_memory:
        cpu_memory.retain_freed_memory()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Process(dev, rank, world)


def autocast_for(device: torch.device, bf16: bool):
    """A factory of the forward passes' precision context: bf16 autocast on CUDA with ``train.bf16``."""
    if device.type == "cuda" and bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


# ------------------------------------------------------------------------------------------- pieces

def resolve(path: str | None) -> Path | None:
    """A config path; a relative one that does not exist here is looked up in the repository."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        from ..utils import ROOT

        if (ROOT / p).exists():
            return ROOT / p
    return p


def cosine_restart_factor(step: int, base_lr: float, sched: ScheduleSection) -> float:
    """LR multiplier at ``step`` (BasicSR CosineAnnealingRestartCyclicLR semantics)."""
    periods = list(sched.periods)
    if not (len(periods) == len(sched.restart_weights) == len(sched.eta_mins)):
        raise ConfigError("schedule.periods, restart_weights and eta_mins need the same length")
    cumulative = np.cumsum(periods)
    idx = int(np.searchsorted(cumulative, step, side="left"))
    idx = min(idx, len(periods) - 1)
    start = 0 if idx == 0 else int(cumulative[idx - 1])
    progress = min(max(step - start, 0) / periods[idx], 1.0)
    eta_min, weight = sched.eta_mins[idx], sched.restart_weights[idx]
    lr = eta_min + weight * 0.5 * (base_lr - eta_min) * (1 + math.cos(math.pi * progress))
    warm = min(1.0, (step + 1) / sched.warmup_steps) if sched.warmup_steps > 0 else 1.0
    return warm * lr / base_lr


def make_optimizer(model: nn.Module, cfg: TrainConfig):
    """AdamW and upstream's cosine-with-restarts schedule (a LambdaLR over :func:`cosine_restart_factor`)."""
    o = cfg.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_restart_factor(s, o.lr, cfg.schedule))
    return optimizer, scheduler


def make_data(cfg: TrainConfig, proc: Process):
    """The clean + depth dataset, its resumable loader and the online haze synthesiser."""
    d, t = cfg.data, cfg.train
    root = resolve(d.root) if not d.clean_dir else None
    dataset = CleanDepthDataset(root, clean_dir=resolve(d.clean_dir), depth_dir=resolve(d.depth_dir), crop=d.patch,
                                flip=d.flip, resize_crop=effective_resize_crop(cfg), seed=t.seed,
                                cache=d.cache_images)
    loader = ResumableLoader(dataset, d.batch_size, proc.world, proc.rank, t.seed, d.num_workers,
                             pin_memory=proc.device.type == "cuda")
    if d.synthesis == "paper":
        scfg = HazeSynthesisConfig(clamp_output=d.clamp_hazy)
    elif d.synthesis == "upstream_release":
        scfg = HazeSynthesisConfig.upstream_release(clamp_output=d.clamp_hazy)
    else:
        raise ConfigError(f"data.synthesis must be 'paper' or 'upstream_release', got {d.synthesis!r}")
    return dataset, loader, HazeSynthesizer(scfg, seed=t.seed)


def make_colabator(cfg: TrainConfig, proc: Process, out_dir: Path, criterion: CORUNLoss,
                   haze_scorer=None) -> ColabatorParts:
    """Colabator's scorers, label pool, real-photo loader and loss (sharing the pretraining loss's VGG)."""
    perceptual = criterion.perceptual
    return ColabatorParts(cfg.colabator, patch=cfg.data.patch, device=proc.device, world=proc.world,
                          rank=proc.rank, seed=cfg.train.seed, num_workers=cfg.data.num_workers, out_dir=out_dir,
                          layer_weights=cfg.loss.perceptual_layers,
                          vgg=perceptual.vgg if perceptual is not None else None,
                          clip_weight=cfg.loss.clip_weight, haze_scorer=haze_scorer, resolve=resolve)


def colabator_init(cfg: TrainConfig) -> Path | None:
    """``colabator.init`` as a checkpoint file (a run folder gives its latest), or None."""
    try:
        return resolve_init(str(resolve(cfg.colabator.init)) if cfg.colabator.init else None)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None


# ------------------------------------------------------------------------------------------- the run

@dataclass
class Run:
    """Everything a training run is made of (:func:`build_run`)."""

    cfg: TrainConfig  #: the effective config (Colabator: ``model:`` from its init checkpoint)
    proc: Process
    out_dir: Path
    model: nn.Module  #: the bare network (what checkpoints store)
    ema: nn.Module  #: its EMA (``AveragedModel``): the teacher, and the weights offered for inference
    net: nn.Module  #: what the step calls: ``model`` or its DDP / ``torch.compile`` wrapper
    multiple: int  #: H and W multiple the network needs
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: CORUNLoss
    dataset: CleanDepthDataset
    loader: ResumableLoader
    synth: HazeSynthesizer
    colab: ColabatorParts | None = None
    init_checkpoint: Path | None = None  #: Colabator's pretraining checkpoint
    init_sha256: str | None = None  #: its content hash (which pretraining this run grew from)

    def autocast(self):
        return autocast_for(self.proc.device, self.cfg.train.bf16)()


def build_networks(cfg: TrainConfig, proc: Process) -> tuple[nn.Module, nn.Module, nn.Module, int]:
    """Seeded network on the device, its EMA, the wrapper the step calls, and the size multiple."""
    t = cfg.train
    torch.manual_seed(t.seed)
    np.random.seed(t.seed)
    random.seed(t.seed)
    model = build_model(cfg.model).to(proc.device)
    multiple = size_multiple(model, cfg.model)
    if cfg.data.patch % multiple:
        raise ConfigError(f"data.patch {cfg.data.patch} must be a multiple of {multiple}")
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = make_ema(model, cfg.ema.decay, cfg.ema.warmup)
    net = model
    if proc.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[proc.device.index] if proc.device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)
    return model, ema, net, multiple


def build_run(cfg: TrainConfig, proc: Process, haze_scorer=None, vgg=None) -> Run:
    """All pieces of a run for ``cfg`` in process ``proc``; ``vgg``/``haze_scorer`` as for :class:`CORUNLoss`."""
    init = init_sha = None
    if cfg.colabator.enabled:
        init = colabator_init(cfg)
        if init is not None:
            init_sha = sha256_file(init)
            cfg = model_from_init(cfg, init, announce=proc.is_main)
    out_dir = Path(cfg.train.out_dir)
    model, ema, net, multiple = build_networks(cfg, proc)
    optimizer, scheduler = make_optimizer(model, cfg)
    criterion = CORUNLoss(cfg.loss, vgg=vgg, haze_scorer=haze_scorer).to(proc.device)
    dataset, loader, synth = make_data(cfg, proc)
    colab = make_colabator(cfg, proc, out_dir, criterion, haze_scorer) if cfg.colabator.enabled else None
    return Run(cfg, proc, out_dir, model, ema, net, multiple, optimizer, scheduler, criterion, dataset, loader,
               synth, colab, init, init_sha)

