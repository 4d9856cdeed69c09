"""Pretraining CORUN on synthetic haze (the paper's first stage): ``corun train --config FILE``.

    corun train --config configs/smoke_pretrain.yaml                 # CPU, mini dataset, minutes
    corun train --config configs/smoke_pretrain.yaml --resume        # continue from the latest checkpoint
    corun train --config configs/paper_pretrain.yaml train.total_steps=1000   # KEY=VALUE overrides
    torchrun --nproc_per_node 8 -m corun.train --config configs/paper_pretrain.yaml

Each step draws clean patches + depth, synthesises haze online (:class:`~corun.synthesis.HazeSynthesizer`,
seeded per step and rank, so a resumed run sees the same haze), runs CORUN and minimises
:class:`~corun.losses.CORUNLoss`. AdamW, upstream's cosine-with-restarts schedule, an EMA of the weights
(the EMA is what checkpoints offer for inference, as ``params_ema``).

A run directory (``train.out_dir``) holds::

    checkpoints/step_NNNNNNN.pth   model + EMA + optimiser + scheduler + step + RNG + data position
    log.csv                        every logged step (step, epoch, lr, loss, loss terms, it/s, ...)
    val.csv                        every validation (PSNR / SSIM of the EMA model and of the hazy input)
    tb/                            TensorBoard scalars and image grids (when tensorboard is installed)
    val_real/step_NNNNNNN/         dehazed real photos (when ``val.real_dir`` is set)
    config.yaml                    the resolved configuration

Checkpoints are atomic (temp file + rename) and never hold non-finite weights; SIGINT / SIGTERM save one
and exit (code 130 / 143); ``--resume`` continues exactly (same next batch, same haze, same loss).
Multi-GPU: torchrun + DDP (NCCL on CUDA, gloo on CPU); rank 0 logs and writes checkpoints.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import math
import os
import random
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import cpu_memory, runlock
from .checkpoint import model_config_dict, save_checkpoint
from .colabator.finetune import REAL_LOG_FIELDS, ColabatorSection
from .config import ConfigError, load_config, to_dict
from .losses import CORUNLoss, LossConfig
from .model import CORUN
from .utils import atomic_write, sha256_file

LOG_FIELDS = ["step", "epoch", "lr", "loss", "l_pix", "l_asm", "l_contrast_percep", "l_clip", *REAL_LOG_FIELDS,
              "grad_norm", "it_s", "elapsed_s", "skipped"]
VAL_FIELDS = ["step", "psnr", "ssim", "psnr_hazy", "ssim_hazy", "n_images"]
CKPT_RE = re.compile(r"step_(\d+)\.pth$")


# ------------------------------------------------------------------------------------------- config

@dataclass
class ModelSection:
    depth: int = 4
    dim: int = 30
    levels: int = 3
    num_blocks: tuple[int, ...] = (1, 1, 1)


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


def effective_resize_crop(cfg: TrainConfig) -> bool:
    """``data.resize_crop``, or upstream's choice when unset: on for Colabator (Y2), off for pretraining (Y1)."""
    return cfg.colabator.enabled if cfg.data.resize_crop is None else bool(cfg.data.resize_crop)


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row; nothing non-finite was written."""


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
             ("val.every", cfg.val.every >= 0, "0 (only at the end) or more")]
    bad = [f"{key} must be {need}, got {_value_of(cfg, key)!r}" for key, ok, need in rules if not ok]
    if bad:
        raise ConfigError("; ".join(bad))


def _value_of(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


#: side of the fixed probe image a checkpoint's weights must dehaze to finite values (:func:`diverged`)
PROBE_SIDE = 32


def probe_image(multiple: int, device) -> Tensor:
    """A fixed smooth (1, 3, S, S) image in [0.15, 0.85], S = max(PROBE_SIDE, 2·multiple); no RNG is drawn."""
    side = max(PROBE_SIDE, 2 * multiple)
    side += (-side) % multiple
    ramp = torch.linspace(0.0, 1.0, side, device=device)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    img = torch.stack([0.5 + 0.35 * torch.sin(6 * xx + 2 * c) * torch.cos(4 * yy - c) for c in range(3)])
    return img[None].float()


@torch.no_grad()
def diverged(model: CORUN) -> bool:
    """Whether ``model`` gives non-finite output (image, stages or transmissions) on :func:`probe_image`:
    weights can be finite and still diverged (``optim.lr=0.3``), and those must never become a checkpoint."""
    was_training = model.training
    model.eval()
    try:
        out = model(probe_image(model.config.multiple, next(model.parameters()).device))
    finally:
        model.train(was_training)
    return not all(bool(torch.isfinite(v).all()) for v in (out.image, *out.stages, *out.transmissions))


# ---------------------------------------------------------------------------------------- pieces

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


def make_ema(model: nn.Module, decay: float, warmup: bool):
    """``AveragedModel`` with an exponential moving average (optionally with the usual warm-up)."""
    from torch.optim.swa_utils import AveragedModel

    def ema_update(ema_params, params, num_averaged):
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        torch._foreach_lerp_(ema_params, params, 1.0 - d)

    return AveragedModel(model, multi_avg_fn=ema_update)


class _Batches(torch.utils.data.Sampler):
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class ResumableLoader:
    """Epoch-wise batches from a DistributedSampler, resumable at (epoch, batch index)."""

    def __init__(self, dataset, batch_size: int, world: int, rank: int, seed: int, num_workers: int,
                 pin_memory: bool = False):
        from torch.utils.data import DistributedSampler

        self.dataset, self.batch_size, self.num_workers, self.pin = dataset, batch_size, num_workers, pin_memory
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        if len(self.sampler) < batch_size:
            raise ConfigError(f"data.batch_size {batch_size} is larger than the {len(self.sampler)} samples "
                              f"each of the {world} process(es) gets from {len(dataset)} images")
        self.epoch, self.index = 0, 0
        self._it = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self._it = int(state["epoch"]), int(state["index"]), None

    def _start_epoch(self):
        from torch.utils.data import DataLoader

        self.sampler.set_epoch(self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        idx = list(self.sampler)
        batches = [idx[i:i + self.batch_size] for i in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
        loader = DataLoader(self.dataset, batch_sampler=_Batches(batches[self.index:]),
                            num_workers=self.num_workers, pin_memory=self.pin)
        self._it = iter(loader)

    def next(self) -> dict:
        """The next batch; ``state_dict()`` afterwards points past it."""
        for _ in range(2):
            if self._it is None:
                self._start_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.index, self._it = self.epoch + 1, 0, None
                continue
            self.index += 1
            return batch
        raise RuntimeError("the data loader produced no batch")


def psnr(x: Tensor, y: Tensor) -> float:
    mse = torch.mean((x.double() - y.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(x: Tensor, y: Tensor) -> float:
    from skimage.metrics import structural_similarity

    a = x.detach().float().cpu().permute(1, 2, 0).numpy()
    b = y.detach().float().cpu().permute(1, 2, 0).numpy()
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = sorted(((int(m.group(1)), p) for p in (Path(out_dir) / "checkpoints").glob("step_*.pth")
                    if (m := CKPT_RE.search(p.name))))
    return found[-1][1] if found else None


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def _all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.state_dict().values() if p.is_floating_point())


def _plain_table(df) -> dict:
    """A DataFrame as a dict of plain Python lists (loadable with ``torch.load(weights_only=True)``)."""
    return {str(c): [v.item() if hasattr(v, "item") else v for v in df[c].tolist()] for c in df.columns}


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows logged after ``last_step`` (a run killed after its last checkpoint logged them)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = rows and list(rows[0].keys())
    if not rows:
        return
    keep = [r for r in rows if int(float(r["step"])) <= last_step]

    def write(tmp):  # atomic: a crash here leaves the old log, never half of it
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(keep)

    atomic_write(path, write)


class _CSVLog:
    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        new = not path.is_file() or path.stat().st_size == 0
        self.f = open(path, "a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=fields, restval="", extrasaction="ignore")
        if new:
            self.w.writeheader()
            self.f.flush()

    def write(self, row: dict) -> None:
        self.w.writerow(row)
        self.f.flush()

    def close(self) -> None:
        self.f.close()


# ---------------------------------------------------------------------------------------- trainer

def _dist_env() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _resolve(path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        from .utils import ROOT

        if (ROOT / p).exists():
            return ROOT / p
    return p


class Trainer:
    """One pretraining run. ``Trainer(cfg, resume=...).fit()`` → summary dict."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, haze_scorer=None, vgg=None):
        check_settings(cfg)
        self.cfg, self.resume = cfg, resume
        self.rank, self.world, self.local_rank = _dist_env()
        self.distributed = self.world > 1
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.device == "auto":
            dev = torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        else:
            dev = torch.device(t.device)
        self.device = dev
        if dev.type == "cpu" and t.cpu_retain_memory:
            cpu_memory.retain_freed_memory()
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        self.is_main = self.rank == 0
        self.out_dir = Path(t.out_dir)
        self.colab = None
        self.init_checkpoint = None
        if cfg.colabator.enabled:
            self._model_from_init()
            cfg = self.cfg
        m = cfg.model
        if cfg.data.patch % (2 ** m.levels):
            raise ConfigError(f"data.patch {cfg.data.patch} must be a multiple of {2 ** m.levels}")

        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        random.seed(t.seed)
        self.model = CORUN(depth=m.depth, dim=m.dim, levels=m.levels, num_blocks=tuple(m.num_blocks)).to(dev)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = make_ema(self.model, cfg.ema.decay, cfg.ema.warmup)
        self.net: nn.Module = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.net = DDP(self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        if t.compile:
            self.net = torch.compile(self.net)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                           weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_restart_factor(s, o.lr, cfg.schedule))
        self.criterion = CORUNLoss(cfg.loss, vgg=vgg, haze_scorer=haze_scorer).to(dev)

        from .data import CleanDepthDataset
        from .synthesis import HazeSynthesisConfig, HazeSynthesizer

        d = cfg.data
        root = _resolve(d.root) if not d.clean_dir else None
        resize_crop = effective_resize_crop(cfg)
        self.dataset = CleanDepthDataset(root, clean_dir=_resolve(d.clean_dir), depth_dir=_resolve(d.depth_dir),
                                         crop=d.patch, flip=d.flip, resize_crop=resize_crop, seed=t.seed,
                                         cache=d.cache_images)
        self.loader = ResumableLoader(self.dataset, d.batch_size, self.world, self.rank, t.seed, d.num_workers,
                                      pin_memory=dev.type == "cuda")
        if d.synthesis == "paper":
            scfg = HazeSynthesisConfig(clamp_output=d.clamp_hazy)
        elif d.synthesis == "upstream_release":
            scfg = HazeSynthesisConfig.upstream_release(clamp_output=d.clamp_hazy)
        else:
            raise ConfigError(f"data.synthesis must be 'paper' or 'upstream_release', got {d.synthesis!r}")
        self.synth = HazeSynthesizer(scfg, seed=t.seed)
        if cfg.colabator.enabled:
            from .colabator.finetune import ColabatorParts

            perceptual = self.criterion.perceptual
            self.colab = ColabatorParts(cfg.colabator, patch=d.patch, device=dev, world=self.world,
                                        rank=self.rank, seed=t.seed, num_workers=d.num_workers,
                                        out_dir=self.out_dir, layer_weights=cfg.loss.perceptual_layers,
                                        vgg=perceptual.vgg if perceptual is not None else None,
                                        clip_weight=cfg.loss.clip_weight, haze_scorer=haze_scorer,
                                        resolve=_resolve)
        self.step, self.nonfinite_streak = 0, 0
        self._stop_signal: int | None = None

    def _model_from_init(self) -> None:
        """Colabator: the architecture comes from the pretraining checkpoint it starts from."""
        from .checkpoint import CheckpointError, infer_config, read_state_dict
        from .colabator.finetune import resolve_init

        try:
            self.init_checkpoint = resolve_init(str(_resolve(self.cfg.colabator.init))
                                                if self.cfg.colabator.init else None)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
        if self.init_checkpoint is None:
            return
        self.init_sha256 = sha256_file(self.init_checkpoint)  # which pretraining this run grew from
        try:
            sd, meta = read_state_dict(self.init_checkpoint)
        except CheckpointError as exc:
            raise ConfigError(f"colabator.init: {exc}") from None
        arch = meta.get("model_config") or dataclasses.asdict(infer_config(sd))
        m = self.cfg.model
        new = ModelSection(depth=int(arch["depth"]), dim=int(arch["dim"]), levels=int(arch["levels"]),
                           num_blocks=tuple(arch["num_blocks"]))
        if (m.depth, m.dim, m.levels, tuple(m.num_blocks)) != (new.depth, new.dim, new.levels, new.num_blocks):
            if self.is_main:
                print(f"corun train: model {dataclasses.asdict(new)} taken from {self.init_checkpoint}",
                      file=sys.stderr, flush=True)
            self.cfg = dataclasses.replace(self.cfg, model=new)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Rank 0 writes ``checkpoints/step_N.pth`` atomically; all ranks wait for it."""
        path = None
        colab = {}
        if self.colab is not None:
            colab = {"real_loader": self.colab.loader.state_dict(),
                     "label_pool_table": _plain_table(self.colab.pool.table())}
            if self.init_checkpoint is not None:
                colab["init_sha256"] = self.init_sha256
        bad = [name for name, m in (("weights", self.model), ("EMA", self.ema.module)) if diverged(m)]
        if bad:  # every rank holds the same weights, so every rank stops here together
            raise NonFiniteLossError(
                f"step {self.step}: the {' and the '.join(bad)} give non-finite output on a fixed probe image "
                f"(the run diverged; try a lower optim.lr); not checkpointed. Last good checkpoint: "
                f"{latest_checkpoint(self.out_dir) or 'none'}")
        if self.is_main:
            if not (_all_finite(self.model) and _all_finite(self.ema.module)):
                raise NonFiniteLossError(f"refusing to write a checkpoint with non-finite weights at step "
                                         f"{self.step}")
            path = self.out_dir / "checkpoints" / f"step_{self.step:07d}.pth"
            save_checkpoint(path, self.model, self.ema.module,
                            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                            step=self.step, ema_n_averaged=int(self.ema.n_averaged),
                            nonfinite_streak=self.nonfinite_streak, rng=_rng_state(),
                            loader=self.loader.state_dict(), world_size=self.world,
                            train_config=to_dict(self.cfg), **colab)
            keep = self.cfg.train.keep_last
            if keep > 0:
                old = sorted(p for p in path.parent.glob("step_*.pth") if CKPT_RE.search(p.name))[:-keep]
                for p in old:
                    p.unlink(missing_ok=True)
        self._barrier()
        keep = self.cfg.train.keep_last
        if self.colab is not None and keep > 0 and (self.is_main or not self.cfg.colabator.shared_pool):
            # label versions older than the oldest kept checkpoint can never be rolled back to
            ckdir = self.out_dir / "checkpoints"
            kept = sorted(int(m.group(1)) for p in ckdir.glob("step_*.pth") if (m := CKPT_RE.search(p.name)))
            if kept:
                self.colab.pool.prune(kept[0])
        return path

    def load(self, path: Path) -> None:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        cfg_file = ck.get("model_config")
        if cfg_file and cfg_file != model_config_dict(self.model):
            raise ConfigError(f"{path}: saved from model {cfg_file}, but the config asks for "
                              f"{model_config_dict(self.model)}")
        self.model.load_state_dict(ck["params"])
        self.ema.module.load_state_dict(ck["params_ema"])
        self.ema.n_averaged.fill_(int(ck.get("ema_n_averaged", 1)))
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step = int(ck["step"])
        self.nonfinite_streak = int(ck.get("nonfinite_streak", 0))
        self.loader.load_state_dict(ck["loader"])
        if self.colab is not None:
            if "real_loader" not in ck:
                raise ConfigError(f"{path}: not a Colabator checkpoint (no real-photo loader state)")
            self.colab.loader.load_state_dict(ck["real_loader"])
            if self.is_main:  # the pool back to its state at this checkpoint: the same decisions follow
                self.colab.pool.rollback(self.step, expected=ck.get("label_pool_table"))
            elif not self.cfg.colabator.shared_pool:  # per-rank pools: each rank rolls back its own
                self.colab.pool.rollback(self.step)
            self._barrier()
        if self.is_main and (changes := run_changes(ck, self.cfg)):
            warnings.warn(f"{path}: resuming a run made with other settings ({'; '.join(changes)}); the "
                          "checkpoint's model and optimiser state continue under the new settings", stacklevel=2)
        self._apply_optim_settings(ck)
        if ck.get("world_size", self.world) != self.world:
            warnings.warn(f"{path}: saved with {ck['world_size']} processes, resuming with {self.world}; the "
                          "data order from here on differs from the original run", stacklevel=2)
        _set_rng_state(ck["rng"])

    def _apply_optim_settings(self, ck: dict) -> None:
        """``--resume`` with another ``optim.lr`` / ``betas`` / ``weight_decay`` or ``schedule``: the loaded
        optimiser and scheduler carry the old values, so the new ones are applied here and the learning rate
        follows the new schedule from this step on (Adam's moments continue). Unchanged settings touch
        nothing, so a plain resume stays bit-identical."""
        o, groups = self.cfg.optim, self.optimizer.param_groups
        old = _flatten((ck.get("train_config") or {}).get("schedule") or {})
        new = _flatten(to_dict(self.cfg.schedule))
        schedule_changed = any(old[k] != new[k] for k in set(old) & set(new))
        for g in groups:
            if tuple(g["betas"]) != tuple(o.betas):
                g["betas"] = tuple(o.betas)
            if g["weight_decay"] != o.weight_decay:
                g["weight_decay"] = o.weight_decay
        if list(self.scheduler.base_lrs) == [o.lr] * len(groups) and not schedule_changed:
            return
        lr = o.lr * cosine_restart_factor(self.step, o.lr, self.cfg.schedule)
        self.scheduler.base_lrs = [o.lr] * len(groups)
        for g in groups:
            g["initial_lr"], g["lr"] = o.lr, lr
        self.scheduler._last_lr = [lr] * len(groups)
        if self.is_main:
            print(f"corun train: optim.lr {o.lr:g} and the schedule of this config apply from step {self.step} "
                  f"(learning rate now {lr:.3g})", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ distributed helpers
    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _all_min(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return float(t.item())

    def _all_mean(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def param_checksum(self) -> float:
        with torch.no_grad():
            return float(sum(p.double().sum().item() for p in self.model.parameters()))

    def _check_sync(self) -> list[float]:
        local = torch.tensor([self.param_checksum()], dtype=torch.float64, device=self.device)
        if not self.distributed:
            return [local.item()]
        gathered = [torch.zeros_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        sums = [g.item() for g in gathered]
        if max(sums) - min(sums) > 1e-9 * max(1.0, abs(sums[0])):
            raise RuntimeError(f"ranks out of sync at step {self.step}: parameter checksums {sums}")
        return sums

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict:
        cfg = self.cfg
        batch = self.loader.next()
        self.step += 1
        clean = batch["clean"].to(self.device, non_blocking=True)
        depth = batch["inv_depth"].to(self.device, non_blocking=True)
        # haze drawn from (seed, step, rank) alone: a resumed run synthesises exactly the same inputs
        self.synth.manual_seed(cfg.train.seed * 1_000_003 + self.step * self.world + self.rank)
        res = self.synth(clean, depth)
        hazy = res.hazy
        if cfg.loss.target_t_floor > 0:
            from .losses import floored_target

            clean = floored_target(clean, res.t, res.params.A, cfg.loss.target_t_floor)
        if cfg.train.channels_last:
            hazy = hazy.contiguous(memory_format=torch.channels_last)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        extra = {}
        if self.colab is not None:
            loss, terms, extra = self.colab.step(self, hazy, clean)
        else:
            with self._autocast():
                out = self.net(hazy)
                loss, terms = self.criterion(out, clean, hazy)
        grad_norm = float("nan")
        ok = self._all_min(float(torch.isfinite(loss.detach()).item())) > 0
        if ok:
            loss.backward()
            if cfg.optim.grad_clip:
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            else:
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            grad_norm = float(gn)
            ok = math.isfinite(grad_norm)  # gradients are all-reduced: every rank agrees
        if ok:
            self.optimizer.step()
            self.ema.update_parameters(self.model)
            self.nonfinite_streak = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_streak += 1
            if self.is_main:
                warnings.warn(f"step {self.step}: non-finite loss or gradient ({float(loss.detach()):.4g}); step skipped "
                              f"({self.nonfinite_streak} in a row)", stacklevel=2)
            if self.nonfinite_streak >= cfg.train.max_nonfinite:
                raise NonFiniteLossError(f"{self.nonfinite_streak} non-finite losses in a row at step {self.step}"
                                         f"; stopping (last good checkpoint: "
                                         f"{latest_checkpoint(self.out_dir) or 'none yet'})")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}, **extra,
                "lr": lr, "grad_norm": grad_norm, "skipped": int(not ok)}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, tb=None) -> dict | None:
        """EMA model on the synthetic test split (PSNR / SSIM) and optional real photos. Rank 0 only."""
        if not self.is_main:
            return None
        from .data import PairedDataset, image_files, read_rgb
        from .inference import run_model

        v = self.cfg.val
        model = self.ema.module.eval()
        result = None
        sdir = _resolve(v.synthetic_dir)
        if sdir is not None:
            ds = PairedDataset(sdir, crop=None, flip=False)
            n = len(ds) if not v.max_images else min(v.max_images, len(ds))
            scores = {"psnr": [], "ssim": [], "psnr_hazy": [], "ssim_hazy": []}
            grid = []
            for i in range(n):
                item = ds[i]
                hazy, clean = item["hazy"][None].to(self.device), item["clean"][None].to(self.device)
                with self._autocast():
                    out = run_model(model, hazy)
                j = out.image.float().clamp(0, 1)
                scores["psnr"].append(psnr(j, clean))
                scores["ssim"].append(ssim(j[0], clean[0]))
                scores["psnr_hazy"].append(psnr(hazy, clean))
                scores["ssim_hazy"].append(ssim(hazy[0], clean[0]))
                if i < v.tb_images:
                    grid.append(torch.cat([hazy[0], j[0], clean[0]], dim=2).cpu())
            result = {"step": self.step, **{k: float(np.mean(s)) for k, s in scores.items()}, "n_images": n}
            if tb is not None:
                for k in ("psnr", "ssim"):
                    tb.add_scalar(f"val/{k}", result[k], self.step)
                if grid:
                    from torchvision.utils import make_grid

                    tb.add_image("val/hazy_output_clean", make_grid(grid, nrow=1), self.step)
        rdir = _resolve(v.real_dir)
        if rdir is not None:
            from .imageio import save_png
            from .inference import tensor_to_image

            dst = self.out_dir / "val_real" / f"step_{self.step:07d}"
            for p in image_files(rdir)[: v.max_real or None]:
                x = read_rgb(p)[None].to(self.device)
                with self._autocast():
                    out = run_model(model, x, tile=512 if max(x.shape[-2:]) > 1024 else None)
                save_png(tensor_to_image(out.image.float()), dst / f"{p.stem}.png")
        return result

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def fit(self) -> dict:
        """Train to ``train.total_steps``; returns the summary. Rank 0 owns the run folder (and the label pool)
        meanwhile (:mod:`corun.runlock`): a second training into it, or a fresh run over another run's
        checkpoints, is refused before anything is written."""
        pool = self.colab.pool_dir if self.colab is not None else None
        problem, taken = None, []
        if self.is_main:
            try:
                for folder in (self.out_dir, pool):
                    if folder is not None and folder not in taken:
                        runlock.acquire(folder, "label pool" if taken else "run folder")
                        taken.append(folder)
                if not self.resume:
                    found = latest_checkpoint(self.out_dir)
                    runlock.check_fresh_run(self.out_dir, int(CKPT_RE.search(found.name).group(1)) if found else None)
            except runlock.RunFolderError as exc:
                problem = exc
        try:
            if self._all_min(0.0 if problem else 1.0) == 0.0:
                raise problem or runlock.RunFolderError(f"{self.out_dir}: rank 0 refused the run folder")
            return self._fit()
        finally:
            for folder in reversed(taken):
                runlock.release(folder)

    def _fit(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        if self.resume:
            ck = latest_checkpoint(self.out_dir)
            if ck is not None:
                self.load(ck)
                if self.is_main:
                    print(f"corun train: resumed from {ck} (step {self.step})", file=sys.stderr, flush=True)
            elif self.is_main:
                print(f"corun train: --resume but no checkpoint in {self.out_dir / 'checkpoints'}; starting fresh",
                      file=sys.stderr, flush=True)
        if self.colab is not None and self.step == 0:
            from .colabator.finetune import init_from_pretrain

            if self.init_checkpoint is not None:
                what = init_from_pretrain(self.model, self.ema, self.init_checkpoint,
                                          student=cfg.colabator.student_init)
                if self.is_main:
                    print(f"corun train: Colabator starts from {what}", file=sys.stderr, flush=True)
            elif self.is_main:
                warnings.warn("Colabator without colabator.init: the teacher starts untrained", stacklevel=2)
            if self.is_main and len(self.colab.pool):
                if not self.resume:  # never silently wipe labels a user has
                    raise ConfigError(f"{self.colab.pool_dir} already holds {len(self.colab.pool)} labels from "
                                      "another run: continue it with --resume, or set colabator.pool_dir "
                                      "elsewhere (or delete that folder)")
                self.colab.pool.rollback(0)  # --resume before the first checkpoint: this run's own labels
            self._barrier()
        log = val_log = tb = bar = None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            import yaml

            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            if not self.resume or self.step == 0:
                for name in ("log.csv", "val.csv"):
                    (self.out_dir / name).unlink(missing_ok=True)
            _truncate_csv(self.out_dir / "log.csv", self.step)
            _truncate_csv(self.out_dir / "val.csv", self.step)
            log = _CSVLog(self.out_dir / "log.csv", LOG_FIELDS)
            val_log = _CSVLog(self.out_dir / "val.csv", VAL_FIELDS)
            if t.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step or None)
                except ImportError:
                    warnings.warn("tensorboard is not installed; TensorBoard logging is off", stacklevel=2)
            from tqdm import tqdm

            bar = tqdm(total=t.total_steps, initial=self.step, desc="colabator" if self.colab else "pretrain", unit="it",
                       disable=not t.progress, dynamic_ncols=True)
            print(f"corun train: {self.world} process(es) on {self.device}, model {model_config_dict(self.model)}, "
                  f"perceptual loss {self.criterion.perceptual_status}, out {self.out_dir}",
                  file=sys.stderr, flush=True)
            if self.colab is not None:
                print(f"corun train: {self.colab.describe()}", file=sys.stderr, flush=True)
        old = {}
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                old[s] = signal.signal(s, self._on_signal)
        start, t_last, s_last = time.time(), time.time(), self.step
        s_first = self.step
        last_val, code, ckpt = None, 0, None
        try:
            while self.step < t.total_steps:
                info = self.train_step()
                if self.step % t.log_every == 0 or self.step == t.total_steps:
                    now = time.time()
                    it_s = (self.step - s_last) / max(now - t_last, 1e-9)
                    t_last, s_last = now, self.step
                    keys = [k for k in LOG_FIELDS if k in info and k not in ("lr", "skipped")]
                    means = dict(zip(keys, self._all_mean([info[k] for k in keys])))
                    if t.check_sync:
                        self._check_sync()
                    if self.is_main:
                        row = {**info, **means, "step": self.step, "epoch": self.loader.epoch,
                               "it_s": round(it_s, 4), "elapsed_s": round(now - start, 2)}
                        log.write(row)
                        if tb is not None:
                            for k in keys + ["lr"]:
                                if math.isfinite(row[k]):
                                    tb.add_scalar(f"train/{k}", row[k], self.step)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                if bar is not None:
                    bar.update(1)
                if cfg.val.every and self.step % cfg.val.every == 0 and self.step < t.total_steps:
                    last_val = self._validate_and_log(val_log, tb)
                if t.ckpt_every and self.step % t.ckpt_every == 0 and self.step < t.total_steps:
                    ckpt = self.save()
                stop = self._all_min(0.0 if self._stop_signal is not None else 1.0) == 0.0
                if stop:
                    ckpt = self.save()
                    sig = self._stop_signal or signal.SIGTERM
                    code = 128 + int(sig)
                    if self.is_main:
                        print(f"\ncorun train: stopped by signal {int(sig)} at step {self.step}; checkpoint {ckpt}; "
                              "continue with --resume", file=sys.stderr, flush=True)
                    break
            else:
                if self.step > s_first:  # a finished run resumed again: nothing new to validate or save
                    last_val = self._validate_and_log(val_log, tb)
                    ckpt = self.save()
                else:
                    ckpt = latest_checkpoint(self.out_dir)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            for h in (bar, log, val_log, tb):
                if h is not None:
                    h.close()
        summary = {"step": self.step, "exit_code": code, "checkpoint": str(ckpt) if ckpt else None,
                   "val": last_val, "seconds": round(time.time() - start, 2),
                   "param_checksum": self.param_checksum()}
        if t.check_sync:
            summary["rank_checksums"] = self._check_sync()
        return summary

    def _validate_and_log(self, val_log, tb):
        res = self.validate(tb)
        if self.is_main and res is not None:
            val_log.write(res)
            print(f"\ncorun train: step {self.step}: EMA PSNR {res['psnr']:.2f} dB / SSIM {res['ssim']:.3f} "
                  f"(hazy input {res['psnr_hazy']:.2f} dB / {res['ssim_hazy']:.3f})", file=sys.stderr, flush=True)
        self._barrier()
        return res


#: settings a resumed run may change without becoming another run: length, logging, hardware, validation
RESUMABLE_KEYS = ("train.total_steps", "train.out_dir", "train.ckpt_every", "train.keep_last", "train.log_every",
                  "train.device", "train.threads", "train.cpu_retain_memory", "train.compile", "train.tensorboard",
                  "train.progress", "train.check_sync", "train.max_nonfinite", "data.num_workers", "val.",
                  "colabator.pool_dir")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def run_changes(checkpoint: str | os.PathLike | dict, cfg: TrainConfig) -> list[str]:
    """What makes ``cfg`` a different run from the one that wrote ``checkpoint`` (empty: the same run).

    Compares every config setting except :data:`RESUMABLE_KEYS`, and for Colabator the content (SHA-256)
    of the pretraining checkpoint it starts from, so a re-run pretraining is noticed even at the same path.
    """
    ck = checkpoint if isinstance(checkpoint, dict) else torch.load(checkpoint, map_location="cpu",
                                                                     weights_only=True)
    old = _flatten(ck.get("train_config") or {})
    new = _flatten(to_dict(cfg))
    changes = []
    for key in sorted(set(old) & set(new)):  # a setting added to the code since is not a change
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_KEYS):
            continue
        if cfg.colabator.enabled and key.startswith("model."):
            continue  # Colabator takes the architecture from its init checkpoint (compared below)
        if old[key] != new[key]:
            changes.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    if cfg.colabator.enabled and cfg.colabator.init:
        from .colabator.finetune import resolve_init

        try:
            init = resolve_init(str(_resolve(cfg.colabator.init)))
        except FileNotFoundError:
            init = None
        old_sha = ck.get("init_sha256")
        if init is not None and old_sha is not None and sha256_file(init) != old_sha:
            changes.append(f"colabator.init: {init} is not the checkpoint this run started from")
    return changes


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
    """
    if resume and restart_if_changed:
        supersede_changed_run(cfg)
    return Trainer(cfg, resume=resume, **kw).fit()


# ---------------------------------------------------------------------------------------- CLI

def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config (configs/*_pretrain.yaml)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in train.out_dir (start fresh if none)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.total_steps=100 train.out_dir=runs/x")
    p.set_defaults(func=_cmd_train)
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        summary = train(cfg, resume=args.resume)
    except (ConfigError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if _dist_env()[0] == 0:
        import json

        print(json.dumps(summary), flush=True)
    return summary["exit_code"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``corun train`` on the top-level CLI's subparsers."""
    p = sub.add_parser("train", help="pretrain CORUN on synthetic haze (torchrun for several GPUs)",
                       description="Pretrain CORUN on online-synthesised haze; see corun/train.py.")
    return _configure(p)


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m corun.train",
                                                 description="Pretrain CORUN on synthetic haze"))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
