"""Shared helpers of the benchmark scripts: environment record, interleaved timing, JSON-lines output.

Every script times the plain path and the optimised path in one process, alternating them run by run
(so a burst of load from other processes hits both alike) and reports the minimum over the repeats:
on a shared machine the minimum is the least disturbed run. Results are appended, one JSON object per
run, to ``benchmarks/results/<name>.jsonl`` together with the device, torch version, thread count,
git hash and the load average seen at start and end (to tell a quiet machine from a shared one).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def git_hash() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_name()


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def setup(device: str, threads: int) -> torch.device:
    """Set the CPU thread count (0: leave torch's default) and return the device."""
    if threads > 0:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    return dev


#: environment variables that change CPU timings; recorded when set
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "LD_PRELOAD",
            "THP_MEM_ALLOC_ENABLE", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def env_record(bench: str, dev: torch.device) -> dict:
    return {
        "bench": bench,
        "time": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": str(dev),
        "device_name": device_name(dev),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git": git_hash(),
        "loadavg_start": loadavg(),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }


def synchronizer(dev: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def _run_timed(name: str, fn: Callable[[], object], warm: bool, times: dict[str, list[float]],
               sync: Callable[[], None], verbose: bool) -> None:
    """One wall-clock timed call of ``fn``; kept in ``times[name]`` unless it is a warm-up."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    dt = time.perf_counter() - t0
    if not warm:
        times[name].append(dt)
    if verbose:
        print(f"    {'warm-up' if warm else 'run'} {name}: {dt:.3f} s", flush=True)


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                     sync: Callable[[], None] = lambda: None, verbose: bool = False) -> dict[str, list[float]]:
    """Wall-clock seconds of each function, run alternately: warm-up rounds, then ``repeats`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            _run_timed(name, fn, r < warmup, times, sync, verbose)
    return times


def time_blocks(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                before: dict[str, Callable[[], object]] | None = None, sync: Callable[[], None] = lambda: None,
                verbose: bool = False) -> dict[str, list[float]]:
    """Like :func:`time_interleaved`, but one block per function, in order: ``before[name]()`` (e.g. a
    process-wide setting), ``warmup`` untimed runs, ``repeats`` timed runs. For settings that cannot be
    switched back and forth (the CPU allocator policy)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        if before and name in before:
            before[name]()
        for r in range(warmup + repeats):
            _run_timed(name, fn, r < warmup, times, sync, verbose)
    return times


def summary(times: list[float]) -> dict:
    return {"min": min(times), "median": statistics.median(times), "all": [round(t, 4) for t in times]}


def write_result(name: str, record: dict) -> Path:
    record = {**record, "loadavg_end": loadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path


def header(record: dict) -> str:
    load = record.get("loadavg_start")
    shared = ""
    if load is not None and record["device"] == "cpu" and load > 0.5 * (record["cpu_count"] or 1):
        shared = f"  (machine shared: load average {load} on {record['cpu_count']} CPUs)"
    env = "".join(f", {k}={v}" for k, v in record.get("env", {}).items())
    return (f"device {record['device']} ({record['device_name']}), {record['threads']} threads, "
            f"torch {record['torch']}, git {record['git']}{env}{shared}")
