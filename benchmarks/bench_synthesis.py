"""Online haze synthesis throughput (images/s): one image per call against one batched call.

    python benchmarks/bench_synthesis.py                       # CPU, 2 threads: 288² ×2 and 64² ×8
    python benchmarks/bench_synthesis.py --device cuda --cases 288x16

Runs :class:`corun.synthesis.HazeSynthesizer` (the paper's RIDCP-style synthesis: transmission from
depth, darkening, noise, ASM, JPEG) on random clean images and inverse depths already on the device,
the way ``corun train`` calls it each step. plain: the batch synthesised image by image (B calls);
batched: one call on the whole (B,3,H,W) batch, on the training device. Alternating runs, the minimum of
``--repeats``. The JPEG round trip (Pillow, on the CPU, per image) is part of both. One JSON line per case
goes to benchmarks/results/synthesis.jsonl.
"""
from __future__ import annotations

import argparse

from common import env_record, header, setup, summary, synchronizer, time_interleaved, write_result

import torch  # noqa: E402

from corun.synthesis import HazeSynthesizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    ap.add_argument("--cases", nargs="+", default=["288x2", "64x8"],
                    help="SIZExBATCH: 288x2 is the paper's training batch, 64x8 the smoke config's")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--calls", type=int, default=5, help="synthesis calls per timed run")
    args = ap.parse_args()

    dev = setup(args.device, args.threads)
    sync = synchronizer(dev)
    for case in args.cases:
        size, batch = map(int, case.lower().split("x"))
        rec = env_record("synthesis", dev)
        if case == args.cases[0]:
            print(header(rec))
        g = torch.Generator().manual_seed(0)
        clean = torch.rand(batch, 3, size, size, generator=g).to(dev)
        depth = torch.rand(batch, 1, size, size, generator=g).to(dev)
        synth = HazeSynthesizer(seed=0)

        def one_by_one():
            for _ in range(args.calls):
                for i in range(batch):
                    synth(clean[i:i + 1], depth[i:i + 1])

        def batched():
            for _ in range(args.calls):
                synth(clean, depth)

        times = time_interleaved({"plain": one_by_one, "batched": batched}, args.repeats, args.warmup, sync)
        n = args.calls * batch
        p, b = summary(times["plain"]), summary(times["batched"])
        ips_p, ips_b = n / p["min"], n / b["min"]
        rec.update({"size": size, "batch": batch, "images_per_run": n,
                    "plain": {"mode": "one image per call", "seconds": p, "images_per_s": ips_p},
                    "batched": {"mode": "one call per batch", "seconds": b, "images_per_s": ips_b},
                    "speedup_min": ips_b / ips_p, "repeats": args.repeats})
        print(f"{size:>4}² ×{batch}: one by one {ips_p:8.1f} images/s   batched {ips_b:8.1f} images/s   "
              f"ratio {ips_b / ips_p:.2f}×", flush=True)
        write_result("synthesis", rec)


if __name__ == "__main__":
    main()
