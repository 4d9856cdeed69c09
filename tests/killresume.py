"""Trainings in subprocesses for the tests, and the one kill-and-resume check: a run killed with SIGKILL
after a checkpoint, resumed to a few steps past it, against an uninterrupted reference run."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def run_python(args, timeout=240, **kw) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository, output captured."""
    return subprocess.run([PY, *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout, **kw)


def read_log(run: Path) -> dict[int, dict]:
    """A run's ``log.csv`` as {step: row}."""
    with open(run / "log.csv", newline="") as f:
        return {int(r["step"]): r for r in csv.DictReader(f)}


def latest_step(run: Path) -> int:
    from corun.checkpoint import CKPT_RE, latest_checkpoint

    return int(CKPT_RE.search(latest_checkpoint(run).name).group(1))


def kill_after_checkpoint(cfg: Path, run: Path, step: int = 2, settle: float = 0.0, timeout: float = 180) -> int:
    """Start ``python -m corun.train --config cfg``, SIGKILL it once ``checkpoints/step_<step>.pth`` exists
    (``settle`` seconds later, to kill it inside a later step), and return the latest checkpoint's step."""
    proc = subprocess.Popen([PY, "-m", "corun.train", "--config", str(cfg)], cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while not (run / "checkpoints" / f"step_{step:07d}.pth").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        time.sleep(settle)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return latest_step(run)


@dataclass
class KillResume:
    killed_at: int  #: the step of the last checkpoint the killed run left
    total: int  #: the step both runs end at
    resumed: subprocess.CompletedProcess
    got: dict[int, dict]  #: the resumed run's log
    want: dict[int, dict]  #: the reference run's log


def kill_and_resume(cfg: Path, ref_cfg: Path, run: Path, ref_run: Path, *, after: int = 2, settle: float = 0.0,
                    timeout: float = 180, more: int = 2) -> KillResume:
    """Kill the run of ``cfg`` after checkpoint ``after`` (:func:`kill_after_checkpoint`), resume it to
    ``more`` steps past its last checkpoint, run ``ref_cfg`` uninterrupted to the same step, and check both
    finished with a log row for every step (rows logged after the kill dropped)."""
    k = kill_after_checkpoint(cfg, run, after, settle, timeout)
    total = k + more
    resumed = run_python(["-m", "corun.train", "--config", str(cfg), "--resume", f"train.total_steps={total}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref = run_python(["-m", "corun.train", "--config", str(ref_cfg), f"train.total_steps={total}"])
    assert ref.returncode == 0, ref.stderr[-3000:]
    got, want = read_log(run), read_log(ref_run)
    assert sorted(got) == sorted(want) == list(range(1, total + 1))
    return KillResume(k, total, resumed, got, want)
