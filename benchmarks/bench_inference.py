"""CORUN inference: the plain fp32 eager path against the optimised path, side by side, one process.

    python benchmarks/bench_inference.py                          # CPU, 2 threads, 256² and 512², batch 1
    python benchmarks/bench_inference.py --sizes 1024 --batch 8   # the larger cases (slow on a small CPU)
    python benchmarks/bench_inference.py --memory                 # also peak RSS of each path (subprocesses)
    python benchmarks/bench_inference.py --device cuda --sizes 256 512 1024 --bf16

plain:     ``torch.no_grad()`` and ``corun.model.fast_path(False)``: upstream's arithmetic transcribed as
           is (separate q/k/v projections, permutes, unfused GELUs), fp32, eager.
optimised: :func:`corun.inference.run_model` with the default fast path: ``torch.inference_mode``,
           channels-last, Gram-matrix spectral attention, fused oneDNN conv/linear + GELU kernels run in
           row bands on CPU; with ``--bf16`` also bf16 autocast (CUDA).

The network is the paper's (depth 4, dim 30, 18.7 M parameters), randomly initialised: speed does not
depend on the weights. The two paths are timed alternately and the minimum of ``--repeats`` runs is
reported (other processes may share the machine; the load average is recorded). The largest absolute
difference between the two paths' outputs (final image, every stage J_k and transmission T̂_k) is
printed too. One JSON line per size goes to benchmarks/results/inference.jsonl.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys

from common import ROOT, env_record, header, setup, summary, synchronizer, time_interleaved, write_result

import torch  # noqa: E402

from corun import CORUN  # noqa: E402
from corun.inference import run_model  # noqa: E402
from corun.model import fast_path  # noqa: E402


def max_abs_diff(a, b) -> float:
    pairs = [(a.image, b.image), *zip(a.stages, b.stages), *zip(a.transmissions, b.transmissions)]
    return max((x.float() - y.float()).abs().max().item() for x, y in pairs)


def peak_rss_child(path: str, size: int, batch: int, threads: int) -> float:
    """Peak resident memory (GiB) of a fresh process that runs one forward of ``path`` (plain/optimised)."""
    code = f"""
import resource, torch, sys
sys.path.insert(0, {str(ROOT)!r})
from corun import CORUN
from corun.inference import run_model
from corun.model import fast_path
torch.set_num_threads({threads})
model = CORUN(depth=4).eval()
x = torch.rand({batch}, 3, {size}, {size})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if {path!r} == "plain":
    with torch.no_grad(), fast_path(False):
        model(x)
else:
    run_model(model, x, keep_stages=True)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    _, peak = map(int, out.split())
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--bf16", action="store_true", help="optimised path under bf16 autocast (CUDA)")
    ap.add_argument("--memory", action="store_true",
                    help="also measure each path's peak RSS in a fresh subprocess (CPU)")
    ap.add_argument("--verbose", action="store_true", help="print every timed run")
    args = ap.parse_args()

    dev = setup(args.device, args.threads)
    torch.manual_seed(0)
    model = CORUN(depth=args.depth).eval().to(dev)
    params = sum(p.numel() for p in model.parameters())
    sync = synchronizer(dev)
    precision = "bf16" if args.bf16 else "fp32"
    print(f"CORUN depth {args.depth}: {params / 1e6:.2f} M parameters, batch {args.batch}, "
          f"plain fp32 vs optimised {precision}")

    for size in args.sizes:
        x = torch.rand(args.batch, 3, size, size, device=dev)
        rec = env_record("inference", dev)
        if size == args.sizes[0]:
            print(header(rec))

        def plain():
            with torch.no_grad(), fast_path(False):
                return model(x)

        def optimised():
            return run_model(model, x, keep_stages=True, precision=precision)

        diff = max_abs_diff(plain(), optimised())
        times = time_interleaved({"plain": plain, "optimised": optimised}, args.repeats, args.warmup, sync,
                                 args.verbose)
        p, o = summary(times["plain"]), summary(times["optimised"])
        rec.update({"size": size, "batch": args.batch, "depth": args.depth, "params": params,
                    "plain": {"dtype": "fp32", "mode": "no_grad eager, fast_path(False)", "seconds": p},
                    "optimised": {"dtype": precision, "mode": "run_model: inference_mode, fast path",
                                  "seconds": o},
                    "speedup_min": p["min"] / o["min"], "speedup_median": p["median"] / o["median"],
                    "max_abs_diff": diff, "repeats": args.repeats})
        line = (f"{size:>5}² ×{args.batch}  plain {p['min']:.3f} s   optimised {o['min']:.3f} s   "
                f"ratio {rec['speedup_min']:.2f}× (medians {rec['speedup_median']:.2f}×)   "
                f"max |Δ| {diff:.1e}")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            optimised()
            rec["optimised"]["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
            line += f"   peak GPU {rec['optimised']['peak_gpu_gib']:.2f} GiB"
        elif args.memory:
            rec["plain"]["peak_rss_gib"] = peak_rss_child("plain", size, args.batch, torch.get_num_threads())
            rec["optimised"]["peak_rss_gib"] = peak_rss_child("optimised", size, args.batch,
                                                              torch.get_num_threads())
            line += (f"   peak RSS plain {rec['plain']['peak_rss_gib']:.2f} GiB, "
                     f"optimised {rec['optimised']['peak_rss_gib']:.2f} GiB")
        else:
            rec["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(line, flush=True)
        write_result("inference", rec)
    print(f"results appended to {ROOT / 'benchmarks' / 'results' / 'inference.jsonl'}")


if __name__ == "__main__":
    main()
