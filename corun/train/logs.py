"""What a run writes besides checkpoints (rank 0): ``config.yaml``, ``log.csv``, ``val.csv``, TensorBoard
scalars and images, and the progress bar. Rows logged after the checkpoint a run resumes from are dropped,
so a killed and resumed run's logs read like an uninterrupted one's."""
from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

from ..colabator.finetune import REAL_LOG_FIELDS
from ..config import to_dict
from ..utils import atomic_write

LOG_FIELDS = ["step", "epoch", "lr", "loss", "l_pix", "l_asm", "l_contrast_percep", "l_clip", *REAL_LOG_FIELDS,
              "grad_norm", "it_s", "elapsed_s", "skipped"]
VAL_FIELDS = ["step", "psnr", "ssim", "psnr_hazy", "ssim_hazy", "n_images"]


def truncate_csv(path: Path, last_step: int) -> None:
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


class CSVLog:
    """An appending CSV file with a fixed header; every row is flushed."""

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


class RunLogs:
    """Rank 0's logs of one run; on other ranks every method does nothing (``active`` False)."""

    def __init__(self, active: bool):
        self.active = active
        self.log = self.val = self.tb = self.bar = None

    def open(self, cfg, out_dir: Path, step: int, fresh: bool, desc: str) -> "RunLogs":
        """Write ``config.yaml``; open the CSV logs (emptied when ``fresh``, else cut back to ``step``), the
        TensorBoard writer and the progress bar (starting at ``step``)."""
        if not self.active:
            return self
        import yaml

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        for name in ("log.csv", "val.csv"):
            if fresh:
                (out_dir / name).unlink(missing_ok=True)
            truncate_csv(out_dir / name, step)
        self.log, self.val = CSVLog(out_dir / "log.csv", LOG_FIELDS), CSVLog(out_dir / "val.csv", VAL_FIELDS)
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=step or None)
            except ImportError:
                warnings.warn("tensorboard is not installed; TensorBoard logging is off", stacklevel=2)
        from tqdm import tqdm

        self.bar = tqdm(total=cfg.train.total_steps, initial=step, desc=desc, unit="it",
                        disable=not cfg.train.progress, dynamic_ncols=True)
        return self

    def step_row(self, row: dict, keys: list[str], step: int) -> None:
        """One ``log.csv`` row, its finite values as TensorBoard scalars, and the bar's loss / lr."""
        if not self.active:
            return
        self.log.write(row)
        if self.tb is not None:
            for k in keys + ["lr"]:
                if math.isfinite(row[k]):
                    self.tb.add_scalar(f"train/{k}", row[k], step)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        for h in (self.bar, self.log, self.val, self.tb):
            if h is not None:
                h.close()
