"""CORUN inference speed: seconds per forward (fp32, batch 1) at a few sizes, and peak memory.

    python benchmarks/bench_inference.py                 # CPU, 2 threads, 256² and 512²
    python benchmarks/bench_inference.py --device cuda --sizes 256 512 1024

Runs the paper network (CORUN depth 4, freshly initialised: speed does not depend on the weights) in
``torch.inference_mode`` and prints one line per size. With ``--baseline`` it also times the same
network in plain eager no-grad mode in the same process and prints the ratio. Each run appends a JSON
line to benchmarks/results/inference.jsonl with the device, torch version and git hash.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corun import CORUN  # noqa: E402


def git_hash() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_forward(model, x, repeats: int, warmup: int, mode) -> list[float]:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    with mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--baseline", action="store_true", help="also time plain torch.no_grad eager")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = CORUN(depth=4).eval().to(dev)
    params = sum(p.numel() for p in model.parameters())
    print(f"CORUN depth 4: {params / 1e6:.2f} M parameters; device {dev}, "
          f"{args.threads} CPU threads, torch {torch.__version__}, batch {args.batch}, fp32")
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        x = torch.rand(args.batch, 3, size, size, device=dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fast = time_forward(model, x, args.repeats, args.warmup, torch.inference_mode)
        record = {
            "bench": "inference", "size": size, "batch": args.batch, "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
            or platform.machine(), "threads": args.threads, "torch": torch.__version__, "git": git_hash(),
            "dtype": "fp32", "seconds_median": statistics.median(fast), "seconds_all": fast,
        }
        line = f"{size:>5}²  inference_mode: {record['seconds_median']:.3f} s/forward"
        if args.baseline:
            base = time_forward(model, x, args.repeats, args.warmup, torch.no_grad)
            record["baseline_seconds_median"] = statistics.median(base)
            record["speedup"] = record["baseline_seconds_median"] / record["seconds_median"]
            line += f"   no_grad eager: {record['baseline_seconds_median']:.3f} s   ratio {record['speedup']:.2f}×"
        if dev.type == "cuda":
            record["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            line += f"   peak GPU {record['peak_gpu_mem_gib']:.2f} GiB"
        else:
            record["peak_rss_gib_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            line += f"   peak RSS so far {record['peak_rss_gib_so_far']:.2f} GiB"
        print(line, flush=True)
        with open(out_dir / "inference.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
