"""How well does the offline depth prior order pixels by depth? Spearman rank correlation per scene.

For every scene, the estimate of each method (``corun.depth``: "prior", "ramp", or "hf:..." when a model is
available) is compared with reference disparity (larger = nearer, like inverse depth) over the pixels where
the reference is known:

* the 4 Middlebury scenes of ``shared/data/clean_disparity`` (true disparity; 0 = unknown, excluded);
* the 3 rectified outdoor pairs of ``shared/data/stereo_outdoor``: disparity computed here with OpenCV
  semi-global matching at half resolution, kept only where the left and right disparity maps agree within
  one pixel (left–right consistency) — everything else (occlusions, untextured sky, mismatches) is excluded.

Prints a markdown table and appends one JSON line to ``benchmarks/results/depth_prior.jsonl``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/depth_prior_eval.py [--shared ../shared] [--methods prior ramp]

Needs opencv-python-headless for the stereo pairs (``pip install 'corun[eval]'``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, env_record, write_result  # noqa: E402

import torch  # noqa: E402

from corun.depth import make_estimator, rank_correlation  # noqa: E402

MIDDLEBURY = ("books", "cones", "dolls", "moebius")
STEREO = ("a", "b", "c")
SGBM_SCALE = 0.5          # matching resolution (fraction of the stored pair's size)
SGBM_DISPARITIES = 128    # search range 0..127 px at that resolution (covers the 3 pairs' 3–112 px)
SGBM_BLOCK = 5
LR_TOLERANCE = 1.0        # px: left and right disparity must agree this well


def _rgb(path: Path, scale: float = 1.0) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if scale != 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        return np.asarray(im)


def middlebury_scene(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float RGB, true disparity, valid mask = disparity > 0)."""
    img = _rgb(folder / f"{name}.png").astype(np.float32) / 255.0
    with Image.open(folder / f"{name}_disp.png") as im:
        disp = np.asarray(im, dtype=np.float32)
    disp = disp[..., 0] if disp.ndim == 3 else disp
    return img, disp, disp > 0


def _sgbm(left: np.ndarray, right: np.ndarray, n_disp: int) -> np.ndarray:
    """Left-view disparity in px (float; < 0 where SGBM found none). Both views are padded on the left by
    the search range so the left border is searched too."""
    import cv2

    b = SGBM_BLOCK
    matcher = cv2.StereoSGBM_create(minDisparity=0, numDisparities=n_disp, blockSize=b, P1=8 * 3 * b * b,
                                    P2=32 * 3 * b * b, disp12MaxDiff=-1, uniquenessRatio=10,
                                    speckleWindowSize=100, speckleRange=2, mode=cv2.STEREO_SGBM_MODE_SGBM)
    pad = ((0, 0), (n_disp, 0), (0, 0))
    lp, rp = np.pad(left, pad, mode="edge"), np.pad(right, pad, mode="edge")
    return matcher.compute(lp, rp).astype(np.float32)[:, n_disp:] / 16.0


def stereo_disparity(left: np.ndarray, right: np.ndarray, n_disp: int = SGBM_DISPARITIES,
                     tol: float = LR_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """SGBM disparity of the left view and its confident pixels: matched in both directions and
    left–right consistent (|d_L(x) − d_R(x − d_L(x))| ≤ tol). The right view's disparity is SGBM on the
    mirrored pair (mirrored right as the left view)."""
    dl = _sgbm(left, right, n_disp)
    dr = _sgbm(right[:, ::-1].copy(), left[:, ::-1].copy(), n_disp)[:, ::-1]
    h, w = dl.shape
    xr = np.round(np.arange(w)[None, :] - dl).astype(np.int64)
    inside = (xr >= 0) & (xr < w)
    back = dr[np.arange(h)[:, None], xr.clip(0, w - 1)]
    ok = (dl >= 0) & inside & (back >= 0) & (np.abs(dl - back) <= tol)
    return dl, ok


def stereo_scene(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left image float RGB at full size, SGBM disparity at SGBM_SCALE, confident mask)."""
    left_path = folder / f"flickr1024_{name}_left.png"
    left = _rgb(left_path, SGBM_SCALE)
    right = _rgb(folder / f"flickr1024_{name}_right.png", SGBM_SCALE)
    disp, ok = stereo_disparity(left, right)
    return _rgb(left_path).astype(np.float32) / 255.0, disp, ok


def _at(est: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if est.shape == shape:
        return est
    t = torch.from_numpy(np.ascontiguousarray(est))[None, None]
    return torch.nn.functional.interpolate(t, size=shape, mode="area")[0, 0].numpy()


def evaluate(shared: Path, methods: list[str]) -> list[dict]:
    """One row per scene: {set, scene, valid, <method>: Spearman ρ, <method>_s: seconds}."""
    estimators = {m: make_estimator(m) for m in methods}
    scenes = [("middlebury", n, lambda n=n: middlebury_scene(shared / "data" / "clean_disparity", n))
              for n in MIDDLEBURY]
    scenes += [("stereo_sgbm", n, lambda n=n: stereo_scene(shared / "data" / "stereo_outdoor", n)) for n in STEREO]
    rows = []
    for set_name, name, load in scenes:
        img, disp, valid = load()
        row = {"set": set_name, "scene": name, "valid": round(float(valid.mean()), 3)}
        for m, est in estimators.items():
            t0 = time.perf_counter()
            d = est(img)
            row[f"{m}_s"] = round(time.perf_counter() - t0, 4)
            row[m] = round(rank_correlation(_at(d, disp.shape), disp, valid), 4)
        rows.append(row)
    return rows


def _mean(rows: list[dict], key: str, set_name: str | None = None) -> float:
    vals = [r[key] for r in rows if set_name is None or r["set"] == set_name]
    return float(np.mean(vals))


def markdown(rows: list[dict], methods: list[str]) -> str:
    lines = ["| set | scene | pixels with reference | " + " | ".join(f"ρ {m}" for m in methods) + " |",
             "|---|---|---:|" + "---:|" * len(methods)]
    for r in rows:
        lines.append(f"| {r['set']} | {r['scene']} | {100 * r['valid']:.0f}% | "
                     + " | ".join(f"{r[m]:.3f}" for m in methods) + " |")
    for s in ("middlebury", "stereo_sgbm", None):
        label = f"mean {s}" if s else "**mean, all 7**"
        lines.append(f"| {label} | | | " + " | ".join(f"{_mean(rows, m, s):.3f}" for m in methods) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("CORUN_SHARED", ROOT.parent / "shared")))
    p.add_argument("--methods", nargs="+", default=["prior", "ramp"])
    args = p.parse_args(argv)
    if not (args.shared / "data" / "clean_disparity").is_dir():
        raise SystemExit(f"test material not found at {args.shared} (give --shared or set CORUN_SHARED)")
    rows = evaluate(args.shared, args.methods)
    print(markdown(rows, args.methods))
    record = {**env_record("depth_prior", torch.device("cpu")), "methods": args.methods, "scenes": rows,
              "mean": {m: round(_mean(rows, m), 4) for m in args.methods},
              "mean_middlebury": {m: round(_mean(rows, m, "middlebury"), 4) for m in args.methods},
              "mean_stereo_sgbm": {m: round(_mean(rows, m, "stereo_sgbm"), 4) for m in args.methods}}
    print(f"\nappended to {write_result('depth_prior', record)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
