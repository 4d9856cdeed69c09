"""The step loop: :class:`Trainer` runs the steps of a run set up by :func:`corun.train.setup.build_run`,
logs them, validates, and writes checkpoints (:mod:`corun.train.state`)."""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings
from pathlib import Path

import torch

from .. import runlock
from ..checkpoint import CKPT_RE, latest_checkpoint
from ..colabator.finetune import init_from_pretrain
from ..config import ConfigError
from ..losses import floored_target
from .logs import LOG_FIELDS, RunLogs
from .network import describe
from .settings import TrainConfig, check_settings
from .setup import build_run, resolve, start_process
from .state import NonFiniteLossError, load_run, save_run
from .validation import validate


@contextlib.contextmanager
def stop_signals(handler):
    """SIGINT / SIGTERM call ``handler`` meanwhile (main thread only), then the old handlers are back."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Trainer:
    """One training run (pretraining, or Colabator with ``colabator.enabled``). ``Trainer(cfg,
    resume=...).fit()`` → summary dict; ``train_step()`` runs one step."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, haze_scorer=None, vgg=None):
        check_settings(cfg)
        self.resume = resume
        self.proc = start_process(cfg.train)
        self.run = build_run(cfg, self.proc, haze_scorer=haze_scorer, vgg=vgg)
        self.step, self.nonfinite_streak = 0, 0
        self._stop_signal: int | None = None

    # the pieces most callers want, by name
    cfg = property(lambda self: self.run.cfg)
    model = property(lambda self: self.run.model)
    ema = property(lambda self: self.run.ema)
    optimizer = property(lambda self: self.run.optimizer)
    scheduler = property(lambda self: self.run.scheduler)
    criterion = property(lambda self: self.run.criterion)
    out_dir = property(lambda self: self.run.out_dir)

    # ------------------------------------------------------------------ checkpoints and validation
    def save(self) -> Path | None:
        """Write ``checkpoints/step_N.pth`` (rank 0; all ranks wait)."""
        return save_run(self.run, self.step, self.nonfinite_streak)

    def load(self, path: Path) -> None:
        """Continue from checkpoint ``path`` (the label pool rolled back to it)."""
        self.step, self.nonfinite_streak = load_run(self.run, path)

    def validate(self, tb=None) -> dict | None:
        """EMA model on the synthetic test split (PSNR / SSIM) and optional real photos. Rank 0 only."""
        if not self.proc.is_main:
            return None
        r = self.run
        return validate(r.ema.module, r.cfg.val, step=self.step, out_dir=r.out_dir, device=self.proc.device,
                        multiple=r.multiple, autocast=r.autocast, resolve=resolve, tb=tb)

    def param_checksum(self) -> float:
        with torch.no_grad():
            return float(sum(p.double().sum().item() for p in self.model.parameters()))

    def _check_sync(self) -> list[float]:
        sums = self.proc.all_gather(self.param_checksum())
        if max(sums) - min(sums) > 1e-9 * max(1.0, abs(sums[0])):
            raise RuntimeError(f"ranks out of sync at step {self.step}: parameter checksums {sums}")
        return sums

    # ------------------------------------------------------------------ one step
    def _inputs(self):
        """This step's synthetic pair (hazy, target); the haze depends on (seed, step, rank) alone, so a
        resumed run synthesises exactly the same inputs."""
        cfg, r = self.cfg, self.run
        batch = r.loader.next()
        clean = batch["clean"].to(self.proc.device, non_blocking=True)
        depth = batch["inv_depth"].to(self.proc.device, non_blocking=True)
        r.synth.manual_seed(cfg.train.seed * 1_000_003 + self.step * self.proc.world + self.proc.rank)
        res = r.synth(clean, depth)
        hazy = res.hazy
        if cfg.loss.target_t_floor > 0:
            clean = floored_target(clean, res.t, res.params.A, cfg.loss.target_t_floor)
        if cfg.train.channels_last:
            hazy = hazy.contiguous(memory_format=torch.channels_last)
        return hazy, clean

    def _loss(self, hazy, clean):
        """(loss, terms, extra log values): Colabator's step, or the pretraining loss."""
        r = self.run
        if r.colab is not None:
            return r.colab.step(student=r.net, teacher=r.ema.module, hazy=hazy, clean=clean,
                                iteration=self.step, autocast=r.autocast)
        with r.autocast():
            loss, terms = r.criterion(r.net(hazy), clean, hazy)
        return loss, terms, {}

    def _backward(self, loss) -> tuple[bool, float]:
        """Backward and the total gradient norm (clipped with ``optim.grad_clip``), unless the loss is
        non-finite on any rank; returns (ok, grad norm)."""
        ok = self.proc.all_min(float(torch.isfinite(loss.detach()).item())) > 0
        if not ok:
            return False, float("nan")
        loss.backward()
        clip, params = self.cfg.optim.grad_clip, self.model.parameters()
        if clip:
            gn = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            grads = [p.grad for p in params if p.grad is not None]
            gn = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        grad_norm = float(gn)
        return math.isfinite(grad_norm), grad_norm  # gradients are all-reduced: every rank agrees

    def _skip(self, loss) -> None:
        self.run.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_streak += 1
        if self.proc.is_main:
            warnings.warn(f"step {self.step}: non-finite loss or gradient ({float(loss.detach()):.4g}); step "
                          f"skipped ({self.nonfinite_streak} in a row)", stacklevel=3)
        if self.nonfinite_streak >= self.cfg.train.max_nonfinite:
            raise NonFiniteLossError(f"{self.nonfinite_streak} non-finite losses in a row at step {self.step}"
                                     f"; stopping (last good checkpoint: "
                                     f"{latest_checkpoint(self.out_dir) or 'none yet'})")

    def train_step(self) -> dict:
        """One optimisation step: inputs, loss, backward, AdamW, EMA, schedule; returns the log values."""
        r = self.run
        self.step += 1
        hazy, clean = self._inputs()
        r.model.train()
        r.optimizer.zero_grad(set_to_none=True)
        loss, terms, extra = self._loss(hazy, clean)
        ok, grad_norm = self._backward(loss)
        if ok:
            r.optimizer.step()
            r.ema.update_parameters(r.model)
            self.nonfinite_streak = 0
        else:
            self._skip(loss)
        lr = r.optimizer.param_groups[0]["lr"]
        r.scheduler.step()
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}, **extra,
                "lr": lr, "grad_norm": grad_norm, "skipped": int(not ok)}

    # ------------------------------------------------------------------ the run
    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def fit(self) -> dict:
        """Train to ``train.total_steps``; returns the summary. Rank 0 owns the run folder (and the label pool)
        meanwhile (:mod:`corun.runlock`): a second training into it, or a fresh run over another run's
        checkpoints, is refused before anything is written."""
        pool = self.run.colab.pool_dir if self.run.colab is not None else None
        problem, taken = None, []
        if self.proc.is_main:
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
            if self.proc.all_min(0.0 if problem else 1.0) == 0.0:
                raise problem or runlock.RunFolderError(f"{self.out_dir}: rank 0 refused the run folder")
            return self._fit()
        finally:
            for folder in reversed(taken):
                runlock.release(folder)

    def _resume(self) -> None:
        ck = latest_checkpoint(self.out_dir)
        if ck is not None:
            self.load(ck)
            self.proc.say(f"resumed from {ck} (step {self.step})")
        else:
            self.proc.say(f"--resume but no checkpoint in {self.out_dir / 'checkpoints'}; starting fresh")

    def _start_colabator(self) -> None:
        """Step 0 of a Colabator run: student and teacher from the pretraining checkpoint; an existing
        label pool is refused (a fresh run) or rolled back to empty (``--resume`` before a checkpoint)."""
        r = self.run
        if r.init_checkpoint is not None:
            what = init_from_pretrain(r.model, r.ema, r.init_checkpoint, student=self.cfg.colabator.student_init)
            self.proc.say(f"Colabator starts from {what}")
        elif self.proc.is_main:
            warnings.warn("Colabator without colabator.init: the teacher starts untrained", stacklevel=3)
        if self.proc.is_main and len(r.colab.pool):
            if not self.resume:  # never silently wipe labels a user has
                raise ConfigError(f"{r.colab.pool_dir} already holds {len(r.colab.pool)} labels from "
                                  "another run: continue it with --resume, or set colabator.pool_dir "
                                  "elsewhere (or delete that folder)")
            r.colab.pool.rollback(0)  # --resume before the first checkpoint: this run's own labels
        self.proc.barrier()

    def _open_logs(self) -> RunLogs:
        r = self.run
        logs = RunLogs(self.proc.is_main).open(self.cfg, self.out_dir, self.step,
                                                fresh=not self.resume or self.step == 0,
                                                desc="colabator" if r.colab else "pretrain")
        self.proc.say(f"{self.proc.world} process(es) on {self.proc.device}, model {describe(r.model)}, "
                      f"perceptual loss {r.criterion.perceptual_status}, out {self.out_dir}")
        if r.colab is not None:
            self.proc.say(r.colab.describe())
        return logs

    def _fit(self) -> dict:
        if self.resume:
            self._resume()
        if self.run.colab is not None and self.step == 0:
            self._start_colabator()
        logs = self._open_logs()
        start = time.time()
        try:
            with stop_signals(self._on_signal):
                last_val, code, ckpt = self._loop(logs, start)
        finally:
            logs.close()
        summary = {"step": self.step, "exit_code": code, "checkpoint": str(ckpt) if ckpt else None,
                   "val": last_val, "seconds": round(time.time() - start, 2),
                   "param_checksum": self.param_checksum()}
        if self.cfg.train.check_sync:
            summary["rank_checksums"] = self._check_sync()
        return summary

    def _loop(self, logs: RunLogs, start: float):
        """Steps until ``train.total_steps`` or a stop signal; returns (last validation, exit code, checkpoint)."""
        t, every = self.cfg.train, self.cfg.val.every
        clock, s_first = [start, self.step], self.step
        last_val = None
        while self.step < t.total_steps:
            info = self.train_step()
            if self.step % t.log_every == 0 or self.step == t.total_steps:
                self._log(info, logs, clock, start)
            logs.advance()
            if every and self.step % every == 0 and self.step < t.total_steps:
                last_val = self._validate_and_log(logs)
            if t.ckpt_every and self.step % t.ckpt_every == 0 and self.step < t.total_steps:
                self.save()
            if self.proc.all_min(0.0 if self._stop_signal is not None else 1.0) == 0.0:
                return last_val, self._stopped(), self.save_stop_checkpoint()
        if self.step > s_first:  # a finished run resumed again: nothing new to validate or save
            return self._validate_and_log(logs), 0, self.save()
        return last_val, 0, latest_checkpoint(self.out_dir)

    def save_stop_checkpoint(self) -> Path | None:
        ckpt = self.save()
        self.proc.say(f"stopped by signal {int(self._stop_signal or signal.SIGTERM)} at step {self.step}; "
                      f"checkpoint {ckpt}; continue with --resume", newline=True)
        return ckpt

    def _stopped(self) -> int:
        return 128 + int(self._stop_signal or signal.SIGTERM)

    def _log(self, info: dict, logs: RunLogs, clock: list, start: float) -> None:
        """A log row: the step's values averaged over ranks, the speed since the last row."""
        now = time.time()
        it_s = (self.step - clock[1]) / max(now - clock[0], 1e-9)
        clock[:] = [now, self.step]
        keys = [k for k in LOG_FIELDS if k in info and k not in ("lr", "skipped")]
        means = dict(zip(keys, self.proc.all_mean([info[k] for k in keys])))
        if self.cfg.train.check_sync:
            self._check_sync()
        row = {**info, **means, "step": self.step, "epoch": self.run.loader.epoch,
               "it_s": round(it_s, 4), "elapsed_s": round(now - start, 2)}
        logs.step_row(row, keys, self.step)

    def _validate_and_log(self, logs: RunLogs):
        res = self.validate(logs.tb)
        if self.proc.is_main and res is not None:
            logs.val.write(res)
            self.proc.say(f"step {self.step}: EMA PSNR {res['psnr']:.2f} dB / SSIM {res['ssim']:.3f} "
                          f"(hazy input {res['psnr_hazy']:.2f} dB / {res['ssim_hazy']:.3f})", newline=True)
        self.proc.barrier()
        return res
