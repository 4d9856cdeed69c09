"""Colabator fine-tuning (Fang et al. 2024, arXiv:2406.07966, Sec. 3.3): mean teacher + optimal label pool
on real haze, for CORUN or any other restorer.

One iteration, with a synthetic batch ``(hazy, clean)`` and a real batch ``(real, real_strong, names)``:

1. :func:`teacher_candidates` — the EMA teacher (no grad) dehazes the *weak* view of the real photos (resized
   to the patch size; JPEG-compressed with p = 0.5 as upstream) into candidate labels Ĵ and, for a
   CORUN-like network, transmissions T̂, clamped to [0, 1]; the student sees the *strong* view (upstream's
   RandAugment(2) op set, :func:`corun.data.strong_augment`);
2. :func:`score_candidates` — the paper's coherence-based scoring: a quality scorer q and a haze scorer h
   give each candidate its *global coherence* (two whole-image scores) and its *local coherence* (32×32-block
   scores upsampled to a per-pixel weight map w = (q_map + h_map) / 2, or q_map · h_map);
   see :mod:`corun.colabator.scoring`;
3. :func:`select_labels` — the optimal label pool keeps, per image name, the best label so far (replaced
   only when *both* global scores are at least as good, :func:`corun.colabator.label_pool.accept`); the
   entry kept is this step's pseudo label;
4. the student sees ``[hazy; real_strong]`` in one forward pass and minimises
   :func:`corun.losses.colabator_loss` (pixel, ASM, perceptual and contrastive terms; the weights are
   upstream's *effective* ones, ``colabator_by_depth_model.py`` + ``my_loss.py``: its L1 carries
   ``loss_weight: 0.5`` inside, so the ASM term is 0.01 × 0.5 = 0.005; its perceptual loss carries 0.2 inside
   and is multiplied by 0.2 again, so 0.04; the contrastive term carries only the inner 0.2. The perceptual
   terms run only when VGG19 weights are present);
5. the trainer steps AdamW and updates the EMA teacher (decay 0.999).

Any restorer (upstream's generic ``colabator_model.py``): a network that returns only an image has no
transmission, so the pool stores labels without T and the loss has no ASM term; everything else is the same.

The trainer in :mod:`corun.train` runs this when a config has ``colabator.enabled: true``
(``configs/smoke_colabator.yaml``, ``configs/paper_colabator.yaml``); :meth:`ColabatorParts.step` receives
the student, the teacher and the iteration explicitly.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import Tensor, nn

from ..checkpoint import latest_checkpoint, read_state_dict
from ..data import RealHazyDataset, ResumableLoader, read_name_list
from ..losses import ColabatorLoss, split_output
from .label_pool import LabelPool
from .scoring import check_scorers_vs_metrics, create_scorer, weight_map

REAL_LOG_FIELDS = ["l_syn_pix", "l_real_pix", "l_real_asm", "l_percep", "l_real_contrast", "accept_rate",
                   "pool_size", "q_mean", "h_mean"]


@dataclass
class ColabatorSection:
    """The ``colabator:`` block of a training config (upstream's values as defaults)."""

    enabled: bool = False
    #: pretraining checkpoint to start from (a file, or a run directory → its latest checkpoint); the
    #: teacher starts from its ``params_ema``, the student from ``student_init``.
    init: str | None = None
    #: "params_ema" (upstream: ``param_key_g: params_ema`` loads the EMA into the student, and BasicSR
    #: copies the student into the teacher) or "params" (the raw pretraining weights, when present)
    student_init: str = "params_ema"
    real_dir: str = "data/mini/pseudo_real/hazy"  #: real hazy photos (URHI in the paper)
    #: optional split file (one image name or stem per line): only these photos of real_dir are used
    real_list: str | None = None
    real_jpeg_p: float = 0.5  #: weak view JPEG q ~ randint[30, 95] (upstream SemiHazeOnlineDataset: 0.5)
    real_batch_size: int = 8  #: per process; real photos are resized to data.patch × data.patch
    pool_dir: str | None = None  #: the label pool (default: <train.out_dir>/label_pool)
    #: one pool shared by all DDP ranks (corun); false = one pool per rank in <pool_dir>/rank_K, like
    #: upstream's per-process memory bank (docs/deviations.md)
    shared_pool: bool = True
    quality_scorer: str = "piqe"  #: upstream: MUSIQ ("pyiqa:musiq"); offline default PIQE
    haze_scorer: str = "dark_channel"  #: upstream: DA-CLIP; offline default the dark-channel density
    block: int = 32
    combine: str = "mean"  #: "mean" (q_map + h_map) / 2 or "product" q_map · h_map
    pixel_weight: float = 5.0  #: the outer factor of the L1 terms
    syn_weight: float = 0.5  #: L1(J_syn, clean) inside the bracket
    real_weight: float = 1.0  #: upstream's 0.5 · 2 on the weighted |J_real − label|
    real_asm_weight: float = 0.005  #: upstream: 0.01 outside × the L1's 0.5 inside
    perceptual_weight: float = 0.04  #: VGG19 perceptual L1 on the synthetic pair; upstream 0.2 inside × 0.2
    real_contrast_weight: float = 0.2  #: contrastive perceptual on (J_real, label, real_strong)
    #: clamp the student's synthetic output to [0, 1] before its L1 and perceptual terms (upstream does)
    clamp_syn_output: bool = True
    #: local haze weight of a block: "clear" = 1 − P(hazy) (the paper's intent, corun's default) or
    #: "upstream" = P(hazy), what upstream's double inversion computes (docs/deviations.md)
    haze_weighting: str = "clear"
    eval_metrics: tuple[str, ...] = ("fade", "brisque", "nima")  #: warn when a scorer is one of these


@torch.no_grad()
def teacher_candidates(teacher: nn.Module, real: Tensor) -> tuple[Tensor, Tensor | None]:
    """Step 1: the EMA teacher's dehazed image and last transmission estimate, both clamped to [0, 1]
    (the transmission is None for a network without one)."""
    was_training = teacher.training
    teacher.eval()
    out = split_output(teacher(real))
    teacher.train(was_training)
    trans = None if out.transmission is None else out.transmission.float().clamp(0, 1)
    return out.image.float().clamp(0, 1), trans


def score_candidates(q_scorer, h_scorer, labels: Tensor, block: int = 32, combine: str = "mean",
                     haze_weighting: str = "clear"):
    """Step 2: the global coherence (scores for the pool) and the local coherence (the per-pixel weight
    map) of the candidates (:func:`corun.colabator.scoring.weight_map`)."""
    return weight_map(q_scorer, h_scorer, labels, block=block, combine=combine, haze_weighting=haze_weighting)


def select_labels(pool, names, labels: Tensor, trans: Tensor | None, scores, iteration: int, rank: int = 0):
    """Step 3: offer the candidates to the optimal label pool; returns (labels, trans, weights, accepted)."""
    return pool.update(list(names), labels, trans, scores.q_global, scores.h_global, scores.weight,
                       iteration=iteration, rank=rank)


def resolve_init(spec: str | None) -> Path | None:
    """``colabator.init`` → a checkpoint file (a run directory gives its latest checkpoint)."""
    if spec in (None, "", "none"):
        return None
    p = Path(spec)
    if p.is_dir():
        ck = latest_checkpoint(p)
        if ck is None:
            raise FileNotFoundError(f"colabator.init: {p} has no checkpoints/step_*.pth")
        return ck
    if not p.is_file():
        raise FileNotFoundError(f"colabator.init: {p}: no such checkpoint (run the pretraining first)")
    return p


def init_from_pretrain(model: nn.Module, ema, path: Path, student: str = "params_ema") -> str:
    """Load the teacher from ``params_ema`` and the student from ``student``: ``"params_ema"`` (upstream)
    or ``"params"`` (falls back to ``params_ema`` when the file has no raw weights)."""
    if student not in ("params_ema", "params"):
        raise ValueError(f"colabator.student_init must be 'params_ema' or 'params', got {student!r}")
    sd_ema, meta = read_state_dict(path, prefer="params_ema")
    sd_student, meta_s = sd_ema, meta
    if student == "params":
        try:
            sd_student, meta_s = read_state_dict(path, prefer="params")
        except Exception:  # noqa: BLE001 - fall back to the EMA weights
            pass
    model.load_state_dict(sd_student)
    ema.module.load_state_dict(sd_ema)
    # AveragedModel copies the model on its first update when n_averaged == 0: mark the EMA as started
    ema.n_averaged.fill_(1)
    return f"student ← {meta_s.get('source_key')}, teacher ← {meta.get('source_key')} of {path}"


class ColabatorParts:
    """Everything the trainer needs for Colabator: scorers, the pool, the real loader and the loss."""

    def __init__(self, cfg: ColabatorSection, *, patch: int, device: torch.device, world: int, rank: int,
                 seed: int, num_workers: int, out_dir: Path, layer_weights: dict[str, float], vgg=None,
                 clip_weight: float = 0.0, haze_scorer=None, resolve=lambda p: Path(p)):
        if cfg.combine not in ("mean", "product"):
            raise ValueError(f"colabator.combine must be 'mean' or 'product', got {cfg.combine!r}")
        if cfg.haze_weighting not in ("clear", "upstream"):
            raise ValueError(f"colabator.haze_weighting must be 'clear' or 'upstream', got {cfg.haze_weighting!r}")
        self.cfg, self.device, self.rank = cfg, device, rank
        for w in check_scorers_vs_metrics([cfg.quality_scorer, cfg.haze_scorer], cfg.eval_metrics):
            if rank == 0:
                warnings.warn(w, stacklevel=2)
        self.q_scorer = create_scorer(cfg.quality_scorer, device=device)
        self.h_scorer = create_scorer(cfg.haze_scorer, device=device)
        names = read_name_list(resolve(cfg.real_list)) if cfg.real_list else None
        self.dataset = RealHazyDataset(resolve(cfg.real_dir), size=patch, strong=True, seed=seed + 1,
                                       names=names, jpeg_p=cfg.real_jpeg_p)
        self.loader = ResumableLoader(self.dataset, cfg.real_batch_size, world, rank, seed + 1, num_workers,
                                      pin_memory=device.type == "cuda")
        self.pool_dir = Path(cfg.pool_dir) if cfg.pool_dir else out_dir / "label_pool"
        if not cfg.shared_pool:
            self.pool_dir = self.pool_dir / f"rank_{rank}"
        self.pool = LabelPool.open(self.pool_dir)
        self.loss = ColabatorLoss(cfg, layer_weights, vgg=vgg, haze_scorer=haze_scorer,
                                  clip_weight=clip_weight).to(device)

    def describe(self) -> str:
        return (f"Colabator: {len(self.dataset)} real photos from {self.dataset.root}, quality "
                f"{self.q_scorer!r}, haze {self.h_scorer!r}, pool {self.pool_dir} ({len(self.pool)} entries)")

    def step(self, *, student: nn.Module, teacher: nn.Module, hazy: Tensor, clean: Tensor, iteration: int,
             autocast: Callable[[], ContextManager] = contextlib.nullcontext
             ) -> tuple[Tensor, dict[str, Tensor], dict]:
        """Steps 1–4 for one iteration; returns (loss, loss terms, extra log values).

        ``student``: the network to train, as the trainer calls it (DDP / compiled wrapper included);
        ``teacher``: the EMA model; ``iteration``: this step's number (the pool's version stamp);
        ``autocast``: a factory of the precision context both forward passes run in."""
        batch = self.loader.next()
        real = batch["image"].to(self.device, non_blocking=True)
        strong = batch["strong"].to(self.device, non_blocking=True)
        if real.shape[-2:] != hazy.shape[-2:]:
            raise ValueError(f"real batch {tuple(real.shape[-2:])} and synthetic batch "
                             f"{tuple(hazy.shape[-2:])} differ in size")
        with autocast():
            cand, cand_t = teacher_candidates(teacher, real)
        scores = score_candidates(self.q_scorer, self.h_scorer, cand, self.cfg.block, self.cfg.combine,
                                  self.cfg.haze_weighting)
        labels, _, weights, accepted = select_labels(self.pool, batch["name"], cand, cand_t, scores,
                                                     iteration=iteration, rank=self.rank)
        n_syn = hazy.shape[0]
        with autocast():
            out = split_output(student(torch.cat([hazy, strong])))
            j, t = out.raw, out.transmission
            loss, terms = self.loss(j[:n_syn], clean, j[n_syn:], None if t is None else t[n_syn:], strong,
                                    labels, weights)
        extra = {"accept_rate": float(accepted.float().mean()), "pool_size": float(len(self.pool)),
                 "q_mean": float(scores.q_global.mean()), "h_mean": float(scores.h_global.mean())}
        return loss, terms, extra
