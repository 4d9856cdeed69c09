"""No-reference metric throughput over a folder (images/s): FADE (pyfade) and BRISQUE (pyiqa).

    python benchmarks/bench_metrics.py                        # CPU, 2 threads, 16 images of 320×240
    python benchmarks/bench_metrics.py --images 32 --size 640x480

Writes ``--images`` synthetic photo-like PNGs (smooth colour fields with haze and noise) to a temporary
folder, then scores them

plain:     one file after another: ``corun.metrics.score_fade(path)`` and pyiqa's BRISQUE on the decoded
           image, one image per call, no threads;
optimised: ``corun.metrics.evaluate_folder`` (what ``corun evaluate`` runs): hashing, decoding and FADE
           on a thread pool, BRISQUE on the scoring device;
cached:    ``evaluate_folder`` again with its score cache warm (a re-run over the same folder).

BRISQUE needs pyiqa's ``brisque_svm_weights.pth``: taken from ``--brisque-weights`` or
/work/shared/weights/pyiqa/, else from the places ``corun.metrics.find_weights`` looks; without it BRISQUE
is skipped with a message. One JSON line per metric goes to benchmarks/results/metrics.jsonl.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import env_record, header, setup, summary, write_result

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from corun import metrics as M  # noqa: E402
from corun.imageio import read_image  # noqa: E402

SHARED_BRISQUE = Path("/work/shared/weights/pyiqa/brisque_svm_weights.pth")


def make_images(folder: Path, n: int, w: int, h: int) -> list[Path]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    paths = []
    for i in range(n):
        f = rng.uniform(1, 6, size=(3, 2))
        ph = rng.uniform(0, 2 * np.pi, size=3)
        scene = np.stack([0.5 + 0.4 * np.sin(f[c, 0] * 2 * np.pi * xx + f[c, 1] * 2 * np.pi * yy + ph[c])
                          for c in range(3)], -1)
        t = np.clip(0.3 + 0.7 * yy, 0, 1)[..., None] * rng.uniform(0.4, 1.0)
        img = scene * t + rng.uniform(0.7, 1.0) * (1 - t) + rng.normal(0, 0.02, size=scene.shape)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def brisque_weights(given: str | None) -> Path | None:
    if given:
        return Path(given)
    if SHARED_BRISQUE.is_file():
        return SHARED_BRISQUE
    path, _ = M.find_weights("brisque")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", default="320x240", help="WxH of the generated images")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="evaluate_folder's threads (default: its own)")
    ap.add_argument("--brisque-weights", default=None)
    args = ap.parse_args()

    dev = setup(args.device, args.threads)
    w, h = map(int, args.size.lower().split("x"))
    rec0 = env_record("metrics", dev)
    print(header(rec0))
    wpath = brisque_weights(args.brisque_weights)
    names = ["fade"]
    if wpath is not None and wpath.is_file():
        names.append("brisque")
    else:
        print("BRISQUE skipped: no brisque_svm_weights.pth (pass --brisque-weights PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = make_images(folder, args.images, w, h)
        brisque = M.build_pyiqa_metric("brisque", wpath, dev) if "brisque" in names else None

        def plain(name: str) -> list[float]:
            if name == "fade":
                return [M.score_fade(p) for p in paths]
            return [M.score_pyiqa(brisque, [read_image(p)[0]])[0] for p in paths]

        def optimised(name: str, cache_dir=None):
            df = M.evaluate_folder(folder, [name], weights={"brisque": wpath} if wpath else None,
                                   cache_dir=cache_dir, device=str(dev), progress=False,
                                   workers=args.workers)
            return df[name].tolist()

        for name in names:
            rec = dict(rec0)
            ref = plain(name)
            got = optimised(name)
            diff = float(np.nanmax(np.abs(np.asarray(ref) - np.asarray(got))))
            times = {"plain": [], "optimised": []}
            for _ in range(args.repeats):
                for key, fn in (("plain", plain), ("optimised", optimised)):
                    t0 = time.perf_counter()
                    fn(name)
                    times[key].append(time.perf_counter() - t0)
            cache = Path(tmp) / f"cache_{name}"
            optimised(name, cache)  # fills the cache
            t0 = time.perf_counter()
            optimised(name, cache)
            cached = time.perf_counter() - t0
            p, o = summary(times["plain"]), summary(times["optimised"])
            n = len(paths)
            rec.update({"metric": name, "images": n, "image_size": [w, h],
                        "plain": {"mode": "sequential, one image per call", "seconds": p,
                                  "images_per_s": n / p["min"]},
                        "optimised": {"mode": "evaluate_folder", "seconds": o, "images_per_s": n / o["min"]},
                        "cached": {"mode": "evaluate_folder, warm score cache", "seconds": cached,
                                   "images_per_s": n / cached},
                        "speedup_min": p["min"] / o["min"], "max_abs_score_diff": diff,
                        "repeats": args.repeats})
            print(f"{name:>8}: plain {n / p['min']:7.2f} images/s   evaluate_folder {n / o['min']:7.2f} images/s"
                  f"   ratio {p['min'] / o['min']:.2f}×   cached re-run {n / cached:8.1f} images/s   "
                  f"max |Δscore| {diff:.1e}", flush=True)
            write_result("metrics", rec)


if __name__ == "__main__":
    main()
