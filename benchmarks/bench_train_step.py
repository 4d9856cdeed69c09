"""One CORUN training step (forward + loss + backward + AdamW step): plain path against the fast path.

    python benchmarks/bench_train_step.py                    # CPU, 2 threads: the smoke and paper configs
    python benchmarks/bench_train_step.py --configs paper --breakdown   # + what allocator and code each give
    python benchmarks/bench_train_step.py --configs paper --variants fast+system fast   # fast path, fresh process
    python benchmarks/bench_train_step.py --compile          # also torch.compile'd fast path (slow to build)

configs:  smoke  depth 2, dim 8,  patch 64,  batch 8  (configs/smoke_pretrain.yaml)
          paper  depth 4, dim 30, patch 288, batch 2  (the paper's pretraining, configs/paper_pretrain.yaml)

variants (each from the same weights, on the same batch):
  plain         ``corun.model_fast.set_fast(model, False)``: upstream's arithmetic as written, fp32 eager,
                glibc's default allocator (the baseline);
  fast          what ``corun train`` runs: Gram-matrix attention, channels-last, no concatenations, NCHW
                weight gradients for the dense 3×3 convolutions and, on CPU,
                ``corun.cpu_memory.retain_freed_memory`` (freed memory reused, not page-faulted in again);
  fast+system   the fast code with glibc's default allocator;
  plain+retain  the plain code with retained memory.
``--breakdown`` runs all four. On CPU each variant is one block (``--warmup`` untimed steps, then
``--repeats`` timed ones), the system-allocator variants first: once memory has been retained, a heap
never behaves like a fresh process's again. Note that a system-allocator variant after another one runs
in a heap the first has grown (glibc reuses its free blocks before mapping new ones), so ``fast+system``
after ``plain`` faults less than the fast path in a fresh process; ``--variants fast+system fast`` shows
the latter. Each block records its minor page faults and system CPU seconds per step.

The loss is the pretraining objective without its perceptual term (pixel L1 + ASM reconstruction L1;
VGG is not CORUN). After the timing, the gradients of the two paths are compared (largest absolute
difference relative to the largest gradient). Reported: minimum and median over the timed steps, and
the first variant's time over each variant's. One JSON line per config goes to
benchmarks/results/train_step.jsonl (``--results DIR``: DIR/train_step.jsonl); several configs on CPU run one
process each.
"""
from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import time
from pathlib import Path

import common
from common import env_record, header, setup, summary, synchronizer, time_blocks, write_result

import torch  # noqa: E402

from corun import CORUN, cpu_memory  # noqa: E402
from corun.losses import CORUNLoss, LossConfig  # noqa: E402
from corun.model_fast import set_fast  # noqa: E402

CONFIGS = {
    "smoke": dict(depth=2, dim=8, patch=64, batch=8),
    "paper": dict(depth=4, dim=30, patch=288, batch=2),
}


class Step:
    """A model, its AdamW and a fixed batch; ``step()`` runs one optimisation step on the chosen path
    (``fast``: ``model`` is switched to it, :func:`corun.model_fast.set_fast`)."""

    def __init__(self, model: CORUN, x, y, fast: bool, compiled: bool = False):
        self.model, self.x, self.y, self.fast = set_fast(model, fast), x, y, fast
        self.net = torch.compile(model) if compiled else model
        self.criterion = CORUNLoss(LossConfig(perceptual_weight=0.0)).to(x.device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def _backward(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss, _ = self.criterion(self.net(self.x), self.y, self.x)
        loss.backward()

    def grads(self) -> dict:
        self._backward()
        return {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}

    def step(self) -> None:
        self._backward()
        self.opt.step()


def _metered(fn, usage: list):
    """``fn`` that also appends (minor page faults, system CPU seconds) of each call to ``usage``."""
    def run():
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        fn()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        usage.append((r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime))
    return run


def _usage_summary(usage: list, warmup: int, repeats: int) -> dict:
    """Mean page faults and system seconds over the timed steps (each block's warm-up left out)."""
    block = warmup + repeats
    timed = [u for i, u in enumerate(usage) if i % block >= warmup]
    return {"minor_faults": sum(u[0] for u in timed) / len(timed), "system_s": sum(u[1] for u in timed) / len(timed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    ap.add_argument("--configs", nargs="+", default=["smoke", "paper"], choices=sorted(CONFIGS))
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--breakdown", action="store_true",
                    help="variants plain, fast+system, fast, plain+retain (CPU)")
    ap.add_argument("--variants", nargs="+", choices=["plain", "fast", "fast+system", "plain+retain"],
                    help="what to time, in this order (system-allocator ones first); ratios are against the "
                         "first one. e.g. --variants fast+system fast: the fast path in a fresh process")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile(model) on the fast path; its build time is reported")
    ap.add_argument("--verbose", action="store_true", help="print every timed run")
    ap.add_argument("--results", type=Path, default=common.RESULTS,
                    help="folder of the train_step.jsonl the results are appended to (default: %(default)s)")
    ap.add_argument("--no-header", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    common.RESULTS = args.results
    if len(args.configs) > 1 and torch.device(args.device).type == "cpu":
        # each config in a fresh process: the system-allocator baseline needs an untouched heap
        for i, name in enumerate(args.configs):  # a repeated --configs overrides the first
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--configs", name,
                            *([] if i == 0 else ["--no-header"])], check=True)
        return

    dev = setup(args.device, args.threads)
    sync = synchronizer(dev)
    for name in args.configs:
        c = CONFIGS[name]
        rec = env_record("train_step", dev)
        if name == args.configs[0] and not args.no_header:
            print(header(rec))
        torch.manual_seed(0)
        model = CORUN(depth=c["depth"], dim=c["dim"]).to(dev)
        x = torch.rand(c["batch"], 3, c["patch"], c["patch"], device=dev)
        y = torch.rand_like(x)
        plain = Step(copy.deepcopy(model), x, y, fast=False)
        fast = Step(copy.deepcopy(model), x, y, fast=True)
        cpu = dev.type == "cpu" and cpu_memory.available()
        if cpu and cpu_memory.retaining():
            raise SystemExit("the system-allocator variants need a process that has not retained memory")
        names = args.variants or (["plain", "fast+system", "fast", "plain+retain"] if args.breakdown and cpu
                                  else ["plain", "fast"])
        if not cpu:
            names = [n for n in names if n in ("plain", "fast")]
        retained = [i for i, n in enumerate(names) if n.endswith("retain") or n == "fast"]
        if cpu and retained and any(n in ("plain", "fast+system") for n in names[retained[0]:]):
            raise SystemExit("--variants: system-allocator variants (plain, fast+system) must come before the "
                             "retained-memory ones (fast, plain+retain): a heap that has retained memory never "
                             "behaves like a fresh one again")
        steps = {"plain": plain.step, "fast+system": fast.step, "fast": fast.step, "plain+retain": plain.step}
        fns = {n: steps[n] for n in names}
        before = {n: cpu_memory.retain_freed_memory for n in names if cpu and n in ("fast", "plain+retain")}
        compile_s = None
        if args.compile:
            comp = Step(copy.deepcopy(model), x, y, fast=True, compiled=True)
            fns["fast+compile"] = comp.step

            def build():
                nonlocal compile_s
                if cpu:
                    cpu_memory.retain_freed_memory()
                t0 = time.perf_counter()
                comp.step()
                sync()
                compile_s = time.perf_counter() - t0
            before["fast+compile"] = build
        usage = {k: [] for k in fns}
        fns = {k: _metered(fn, usage[k]) for k, fn in fns.items()}
        times = time_blocks(fns, args.repeats, args.warmup, before, sync, args.verbose)
        # the two paths' gradients from the same weights and batch (after the timing: the plain path's
        # allocations would otherwise shape the heap the system-allocator fast variant runs in)
        gp = Step(copy.deepcopy(model), x, y, fast=False).grads()
        gf = Step(copy.deepcopy(model), x, y, fast=True).grads()
        scale = max(g.abs().max().item() for g in gp.values())
        grad_diff = max((gp[k] - gf[k]).abs().max().item() for k in gp) / scale
        stats = {k: summary(v) for k, v in times.items()}
        base = names[0]
        p = stats[base]
        rec.update({"config": name, **c, "dtype": "fp32", "loss": "pixel L1 + 0.01 ASM L1", "baseline": base,
                    "allocator": {n: ("retain" if n in before else "system") for n in stats} if cpu else None,
                    "grad_max_rel_diff": grad_diff, "repeats": args.repeats, "warmup": args.warmup})
        for k, st in stats.items():
            rec[k] = {"seconds": st}
        if "plain" in stats and "fast" in stats:
            rec["speedup_min"] = stats["plain"]["min"] / stats["fast"]["min"]
            rec["speedup_median"] = stats["plain"]["median"] / stats["fast"]["median"]
        if cpu:
            rec["per_step"] = {k: _usage_summary(u, args.warmup, args.repeats) for k, u in usage.items()}
        line = (f"{name:>6} (depth {c['depth']}, dim {c['dim']}, patch {c['patch']}, batch {c['batch']}), "
                f"max |Δgrad|/max|grad| {grad_diff:.1e}; s/step (min, median) and {base} / variant:")
        for k, st in stats.items():
            rec[f"speedup_min_{k}"] = p["min"] / st["min"]
            line += (f"\n        {k:>13} {st['min']:7.3f} s  {st['median']:7.3f} s  "
                     f"{p['min'] / st['min']:.2f}× (medians {p['median'] / st['median']:.2f}×)")
            if cpu:
                u = rec["per_step"][k]
                line += f"   {u['minor_faults']:.0f} page faults, {u['system_s']:.2f} s system time per step"
        if args.compile:
            rec["first_step_incl_compile_s"] = compile_s
            line += f"\n        (fast+compile: first step incl. compiling {compile_s:.0f} s)"
        print(line, flush=True)
        write_result("train_step", rec)


if __name__ == "__main__":
    main()
