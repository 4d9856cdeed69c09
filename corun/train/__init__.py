"""Training CORUN, or any restorer: pretraining on synthetic haze (the paper's first stage) and Colabator
fine-tuning on real photos, ``corun train --config FILE``.

    corun train --config configs/smoke_pretrain.yaml                 # CPU, mini dataset, minutes
    corun train --config configs/smoke_pretrain.yaml --resume        # continue from the latest checkpoint
    corun train --config configs/paper_pretrain.yaml train.total_steps=1000   # KEY=VALUE overrides
    corun train --config configs/smoke_pretrain.yaml model.factory=mypkg.nets:unet model.kwargs.width=16
    torchrun --nproc_per_node 8 -m corun.train --config configs/paper_pretrain.yaml

Each step draws clean patches + depth, synthesises haze online (:class:`~corun.synthesis.HazeSynthesizer`,
seeded per step and rank, so a resumed run sees the same haze), runs the network (``model:``, CORUN by
default, see :class:`~corun.train.settings.ModelSection`) and minimises :class:`~corun.losses.CORUNLoss`
(with ``colabator.enabled``: :mod:`corun.colabator.finetune`'s step). AdamW, upstream's
cosine-with-restarts schedule, an EMA of the weights (the EMA is what checkpoints offer for inference, as
``params_ema``).

A run directory (``train.out_dir``) holds::

    checkpoints/step_NNNNNNN.pth   model + EMA + optimiser + scheduler + step + RNG + data position
    log.csv                        every logged step (step, epoch, lr, loss, loss terms, it/s, ...)
    val.csv                        every validation (PSNR / SSIM of the EMA model and of the hazy input)
    tb/                            TensorBoard scalars and image grids (when tensorboard is installed)
    val_real/step_NNNNNNN/         dehazed real photos (when ``val.real_dir`` is set)
    config.yaml                    the resolved configuration
    label_pool/                    Colabator's optimal label pool (unless ``colabator.pool_dir`` is elsewhere)

Checkpoints are atomic (temp file + rename) and never hold non-finite weights; SIGINT / SIGTERM save one
and exit (code 130 / 143); ``--resume`` continues exactly (same next batch, same haze, same loss).
Multi-GPU: torchrun + DDP (NCCL on CUDA, gloo on CPU); rank 0 logs and writes checkpoints.

The package, in the order of its imports:

* :mod:`~corun.train.settings` – the config dataclasses (``TrainConfig``) and their value checks;
* :mod:`~corun.train.network` – the network from ``model:`` (CORUN or a factory), its EMA, the divergence probe;
* :mod:`~corun.train.setup` – device / DDP, optimiser and schedule, data, losses, Colabator parts → a ``Run``;
* :mod:`~corun.train.validation` – PSNR / SSIM on the synthetic split, dehazed real photos;
* :mod:`~corun.train.state` – checkpoint writing and exact resume (label pool rolled back);
* :mod:`~corun.train.logs` – ``log.csv``, ``val.csv``, TensorBoard, progress bar;
* :mod:`~corun.train.trainer` – :class:`Trainer`, the step loop;
* :mod:`~corun.train.runs` – :func:`train` (and moving a changed run aside);
(the command line, ``corun train`` and ``python -m corun.train``, is :mod:`corun.cli.train`).
"""
from ..checkpoint import CKPT_RE, latest_checkpoint
from ..config import to_dict
from ..data import ResumableLoader
from ..model import CORUN
from .logs import LOG_FIELDS, VAL_FIELDS
from .network import PROBE_SIDE, build_model, diverged, make_ema, probe_image
from .runs import supersede_changed_run, train
from .settings import (RESUMABLE_KEYS, DataSection, EMASection, ModelSection, OptimSection, RunSection,
                       ScheduleSection, TrainConfig, ValSection, check_settings, effective_resize_crop)
from .setup import cosine_restart_factor
from .state import NonFiniteLossError, run_changes
from .trainer import Trainer
from .validation import psnr, ssim

__all__ = [
    "CKPT_RE", "CORUN", "LOG_FIELDS", "PROBE_SIDE", "RESUMABLE_KEYS", "VAL_FIELDS", "DataSection", "EMASection",
    "ModelSection", "NonFiniteLossError", "OptimSection", "ResumableLoader", "RunSection", "ScheduleSection",
    "TrainConfig", "Trainer", "ValSection", "build_model", "check_settings",
    "cosine_restart_factor", "diverged", "effective_resize_crop", "latest_checkpoint", "make_ema",
    "probe_image", "psnr", "run_changes", "ssim", "supersede_changed_run", "to_dict", "train",
]
