"""CORUN inference: two variants side by side in one process (timed alternately), by default the plain fp32
eager path against the optimised path.

    python benchmarks/bench_inference.py                          # CPU, 2 threads, 256² and 512², batch 1
    python benchmarks/bench_inference.py --sizes 1024 --batch 8   # the larger cases (slow on a small CPU)
    python benchmarks/bench_inference.py --memory                 # also peak RSS of each path (subprocesses)
    python benchmarks/bench_inference.py --device cuda --sizes 256 512 1024 --bf16
    python benchmarks/bench_inference.py --compare bf16 --sizes 512     # CPU: native bf16 path vs fp32 fast path
    python benchmarks/bench_inference.py --compare compile --sizes 256  # torch.compile'd fast path vs eager

``--compare plain`` (default):
  plain:     ``torch.no_grad()`` and ``corun.model_fast.fast_path(model, False)``: upstream's arithmetic as
             is (separate q/k/v projections, permutes, unfused GELUs), fp32, eager.
  optimised: :func:`corun.inference.run_model` with the default fast path: ``torch.inference_mode``,
             channels-last, Gram-matrix spectral attention, fused oneDNN conv/linear + GELU kernels run in
             row bands on CPU; with ``--bf16`` also bf16 autocast (CUDA).
``--compare bf16``: ``fast`` (run_model fp32) against ``bf16`` (``run_model(precision="bf16")``, on a CPU
  with AVX-512 BF16 or AMX the native bf16 path of corun/fast_bf16.py), with the PSNR of the bf16 image
  against the fp32 one. On a CPU without bf16 instructions it says that the path is not available (and
  writes that in its JSON line) instead of timing an emulation.
``--compare compile``: ``fast`` eager against ``torch.compile(model)`` (fp32, ``torch.inference_mode``,
  ``--compile-backend``, default inductor); the first compiled call (the build) is reported separately.

The network is the paper's (depth 4, dim 30, 18.7 M parameters), randomly initialised: speed does not
depend on the weights. The two variants are timed alternately and the minimum of ``--repeats`` runs is
reported (other processes may share the machine; the load average is recorded), with the process CPU
time of each run (``cpu_seconds``: on a machine shared with other jobs, less disturbed than wall time
when the threads are not starved). The largest absolute difference between the two variants' outputs
(final image, every stage J_k and transmission T̂_k) is printed too. One JSON line per size goes to
benchmarks/results/inference.jsonl (``--results DIR``: to DIR/inference.jsonl instead, e.g. for a trial run).
"""
from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import common
from common import ROOT, env_record, header, setup, summary, synchronizer, time_interleaved, write_result

import torch  # noqa: E402

from corun import CORUN, fast_bf16  # noqa: E402
from corun.inference import bf16_mode, run_model  # noqa: E402
from corun.model_fast import fast_path  # noqa: E402


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
from corun.model_fast import fast_path
torch.set_num_threads({threads})
model = CORUN(depth=4).eval()
x = torch.rand({batch}, 3, {size}, {size})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if {path!r} == "plain":
    with torch.no_grad(), fast_path(model, False):
        model(x)
else:
    run_model(model, x, keep_stages=True)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    _, peak = map(int, out.split())
    return peak / 2**20


def _with_cpu_time(fn, cpu: list):
    """``fn`` that also appends the process CPU seconds of each call to ``cpu``."""
    def run():
        t0 = time.process_time()
        out = fn()
        cpu.append(time.process_time() - t0)
        return out
    return run


def psnr_db(a, b) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def variants(args, model, x, dev) -> tuple[dict, dict]:
    """The two functions to compare (baseline first) and what each one is, for ``--compare``."""
    precision = "bf16" if args.bf16 else "fp32"

    def plain():
        with torch.no_grad(), fast_path(model, False):
            return model(x)

    def fast():
        return run_model(model, x, keep_stages=True, precision=precision if args.compare == "plain" else "fp32")

    if args.compare == "plain":
        return ({"plain": plain, "optimised": fast},
                {"plain": {"dtype": "fp32", "mode": "no_grad eager, fast_path(model, False)"},
                 "optimised": {"dtype": precision, "mode": "run_model: inference_mode, fast path"}})
    if args.compare == "bf16":
        def bf16():
            return run_model(model, x, keep_stages=True, precision="bf16")

        return ({"fast": fast, "bf16": bf16},
                {"fast": {"dtype": "fp32", "mode": "run_model fp32, fast path"},
                 "bf16": {"dtype": "bf16", "mode": f"run_model(precision='bf16'): {bf16_mode(model, dev)}",
                          "dense_conv_dtype": str(fast_bf16.dense_conv_dtype()).removeprefix("torch.")}})
    compiled = torch.compile(model, backend=args.compile_backend)

    @torch.inference_mode()
    def comp():
        return compiled(x)

    return ({"fast": fast, "compiled": comp},
            {"fast": {"dtype": "fp32", "mode": "run_model fp32, fast path, eager"},
             "compiled": {"dtype": "fp32", "mode": f"torch.compile(model, backend={args.compile_backend!r}), "
                                                   "inference_mode, fast path"}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--compare", choices=["plain", "bf16", "compile"], default="plain",
                    help="plain: plain fp32 eager vs the optimised path (default); bf16: the bf16 path vs the fp32 "
                         "fast path; compile: torch.compile'd fast path vs eager")
    ap.add_argument("--bf16", action="store_true", help="--compare plain: optimised path under bf16 autocast (CUDA)")
    ap.add_argument("--compile-backend", default="inductor", help="--compare compile: torch.compile backend")
    ap.add_argument("--memory", action="store_true",
                    help="also measure each path's peak RSS in a fresh subprocess (CPU, --compare plain)")
    ap.add_argument("--verbose", action="store_true", help="print every timed run")
    ap.add_argument("--results", type=Path, default=common.RESULTS,
                    help="folder of the inference.jsonl the results are appended to (default: %(default)s)")
    args = ap.parse_args()
    common.RESULTS = args.results

    dev = setup(args.device, args.threads)
    torch.manual_seed(0)
    model = CORUN(depth=args.depth).eval().to(dev)
    params = sum(p.numel() for p in model.parameters())
    sync = synchronizer(dev)
    if args.compare == "bf16" and dev.type == "cpu" and not fast_bf16.available():
        rec = env_record("inference", dev)
        print(header(rec))
        reason = fast_bf16.unavailable_reason()
        print(f"bf16 CPU inference path not available here: {reason}")
        rec.update({"compare": "bf16", "available": False, "reason": reason,
                    "cpu_bf16": fast_bf16.cpu_bf16_capabilities()})
        write_result("inference", rec)
        return
    print(f"CORUN depth {args.depth}: {params / 1e6:.2f} M parameters, batch {args.batch}, compare {args.compare}")

    for size in args.sizes:
        x = torch.rand(args.batch, 3, size, size, device=dev)
        rec = env_record("inference", dev)
        if size == args.sizes[0]:
            print(header(rec))
        fns, what = variants(args, model, x, dev)
        (base, fb), (var, fv) = fns.items()
        t0 = time.perf_counter()
        ref, out = fb(), fv()  # also the compiled variant's build
        first_s = time.perf_counter() - t0
        diff = max_abs_diff(ref, out)
        db = psnr_db(out.image, ref.image)
        cpu = {base: [], var: []}
        timed = {k: _with_cpu_time(f, cpu[k]) for k, f in fns.items()}
        times = time_interleaved(timed, args.repeats, args.warmup, sync, args.verbose)
        cpu = {k: v[args.warmup:] for k, v in cpu.items()}
        p, o = summary(times[base]), summary(times[var])
        rec.update({"size": size, "batch": args.batch, "depth": args.depth, "params": params, "compare": args.compare,
                    base: {**what[base], "seconds": p, "cpu_seconds": summary(cpu[base])},
                    var: {**what[var], "seconds": o, "cpu_seconds": summary(cpu[var])},
                    "speedup_min": p["min"] / o["min"], "speedup_median": p["median"] / o["median"],
                    "speedup_cpu_min": min(cpu[base]) / min(cpu[var]),
                    "max_abs_diff": diff, "psnr_db": db, "repeats": args.repeats})
        if args.compare == "bf16":
            rec["available"] = True
            rec["cpu_bf16"] = fast_bf16.cpu_bf16_capabilities() if dev.type == "cpu" else None
        if args.compare == "compile":
            rec["first_calls_incl_compile_s"] = first_s
        line = (f"{size:>5}² ×{args.batch}  {base} {p['min']:.3f} s   {var} {o['min']:.3f} s   "
                f"ratio {rec['speedup_min']:.2f}× (medians {rec['speedup_median']:.2f}×, CPU time "
                f"{rec['speedup_cpu_min']:.2f}×)   max |Δ| {diff:.1e}   PSNR {db:.1f} dB")
        if args.compare == "compile":
            line += f"   (first calls incl. compiling {first_s:.0f} s)"
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            fv()
            rec[var]["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
            line += f"   peak GPU {rec[var]['peak_gpu_gib']:.2f} GiB"
        elif args.memory and args.compare == "plain":
            rec["plain"]["peak_rss_gib"] = peak_rss_child("plain", size, args.batch, torch.get_num_threads())
            rec["optimised"]["peak_rss_gib"] = peak_rss_child("optimised", size, args.batch,
                                                              torch.get_num_threads())
            line += (f"   peak RSS plain {rec['plain']['peak_rss_gib']:.2f} GiB, "
                     f"optimised {rec['optimised']['peak_rss_gib']:.2f} GiB")
        else:
            rec["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(line, flush=True)
        write_result("inference", rec)
    print(f"results appended to {common.RESULTS / 'inference.jsonl'}")


if __name__ == "__main__":
    main()
