"""One CORUN training step (forward + loss + backward + AdamW step): plain path against the fast path.

    python benchmarks/bench_train_step.py                    # CPU, 2 threads: the smoke and paper configs
    python benchmarks/bench_train_step.py --configs smoke    # only the smoke size
    python benchmarks/bench_train_step.py --compile          # also torch.compile'd fast path (slow to build)

configs:  smoke  depth 2, dim 8,  patch 64,  batch 8  (configs/smoke_pretrain.yaml)
          paper  depth 4, dim 30, patch 288, batch 2  (the paper's pretraining, configs/paper_pretrain.yaml)

plain: ``corun.model.fast_path(False)`` (upstream's arithmetic as written, fp32 eager); fast: the default
path that ``corun train`` uses (Gram-matrix attention, channels-last, no concatenations). Both start from
the same weights and see the same batch; the loss is the pretraining objective without its perceptual
term (pixel L1 + ASM reconstruction L1; VGG is not CORUN). The gradients of the two paths are compared
after the first step (largest absolute difference relative to the largest gradient). The paths are timed
alternately, minimum of ``--repeats`` steps. One JSON line per config goes to
benchmarks/results/train_step.jsonl.
"""
from __future__ import annotations

import argparse
import copy
import time

from common import env_record, header, setup, summary, synchronizer, time_interleaved, write_result

import torch  # noqa: E402

from corun import CORUN  # noqa: E402
from corun.losses import CORUNLoss, LossConfig  # noqa: E402
from corun.model import fast_path  # noqa: E402

CONFIGS = {
    "smoke": dict(depth=2, dim=8, patch=64, batch=8),
    "paper": dict(depth=4, dim=30, patch=288, batch=2),
}


class Step:
    """A model, its AdamW and a fixed batch; ``step()`` runs one optimisation step on the chosen path."""

    def __init__(self, model: CORUN, x, y, fast: bool, compiled: bool = False):
        self.model, self.x, self.y, self.fast = model, x, y, fast
        self.net = torch.compile(model) if compiled else model
        self.criterion = CORUNLoss(LossConfig(perceptual_weight=0.0)).to(x.device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def grads(self) -> dict:
        self.opt.zero_grad(set_to_none=True)
        with fast_path(self.fast):
            loss, _ = self.criterion(self.net(self.x), self.y, self.x)
        loss.backward()
        return {n: p.grad.detach().clone() for n, p in self.model.named_parameters()}

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with fast_path(self.fast):
            loss, _ = self.criterion(self.net(self.x), self.y, self.x)
        loss.backward()
        self.opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    ap.add_argument("--configs", nargs="+", default=["smoke", "paper"], choices=sorted(CONFIGS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile(model) on the fast path; its build time is reported")
    ap.add_argument("--verbose", action="store_true", help="print every timed run")
    args = ap.parse_args()

    dev = setup(args.device, args.threads)
    sync = synchronizer(dev)
    for name in args.configs:
        c = CONFIGS[name]
        rec = env_record("train_step", dev)
        if name == args.configs[0]:
            print(header(rec))
        torch.manual_seed(0)
        model = CORUN(depth=c["depth"], dim=c["dim"]).to(dev)
        x = torch.rand(c["batch"], 3, c["patch"], c["patch"], device=dev)
        y = torch.rand_like(x)
        plain = Step(copy.deepcopy(model), x, y, fast=False)
        fast = Step(copy.deepcopy(model), x, y, fast=True)
        gp, gf = plain.grads(), fast.grads()
        scale = max(g.abs().max().item() for g in gp.values())
        grad_diff = max((gp[k] - gf[k]).abs().max().item() for k in gp) / scale
        fns = {"plain": plain.step, "fast": fast.step}
        compile_s = None
        if args.compile:
            comp = Step(copy.deepcopy(model), x, y, fast=True, compiled=True)
            t0 = time.perf_counter()
            comp.step()
            sync()
            compile_s = time.perf_counter() - t0
            fns["fast+compile"] = comp.step
        times = time_interleaved(fns, args.repeats, args.warmup, sync, args.verbose)
        p, f = summary(times["plain"]), summary(times["fast"])
        rec.update({"config": name, **c, "dtype": "fp32", "loss": "pixel L1 + 0.01 ASM L1",
                    "plain": {"seconds": p}, "fast": {"seconds": f},
                    "speedup_min": p["min"] / f["min"], "speedup_median": p["median"] / f["median"],
                    "grad_max_rel_diff": grad_diff, "repeats": args.repeats})
        line = (f"{name:>6} (depth {c['depth']}, dim {c['dim']}, patch {c['patch']}, batch {c['batch']}): "
                f"plain {p['min']:.3f} s/step   fast {f['min']:.3f} s/step   ratio {rec['speedup_min']:.2f}× "
                f"(medians {rec['speedup_median']:.2f}×)   max |Δgrad|/max|grad| {grad_diff:.1e}")
        if args.compile:
            k = summary(times["fast+compile"])
            rec["fast_compiled"] = {"seconds": k, "first_step_incl_compile_s": compile_s}
            rec["speedup_compiled_min"] = p["min"] / k["min"]
            line += (f"\n        fast+torch.compile {k['min']:.3f} s/step (ratio {rec['speedup_compiled_min']:.2f}×; "
                     f"first step incl. compiling {compile_s:.0f} s)")
        print(line, flush=True)
        write_result("train_step", rec)


if __name__ == "__main__":
    main()
