"""``corun reproduce``: run the pipeline's steps in order and say where the results are.

The smoke profile needs nothing downloaded:

1. ``notebooks/01_data_prep.ipynb`` (papermill): builds the embedded mini dataset in ``data/mini``, checks
   it, writes ``results/smoke/data_manifest.json`` and figures under ``figures/smoke/``;
2. the DCP baseline on the mini dataset's pseudo-real hazy photos → ``results/smoke/dehazed/dcp/``;
3. CORUN on the same photos → ``results/smoke/dehazed/corun/``, with the project's default weights when
   they exist. Until they do, an *untrained* network runs on a few photos as a pipeline check, and the
   summary says so.

Later steps (pretraining, Colabator, metric tables, figures) join this list as they land.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNTRAINED_CHECK_IMAGES = 3


def run_notebook(notebook: str | Path, out_dir: Path, parameters: dict) -> Path:
    """Execute a notebook (a name in ``notebooks/`` or a path) with papermill into ``out_dir``.

    Runs with the repository as working directory; a failure raises RuntimeError naming the notebook and
    the cell, with the executed copy (which shows the traceback) left in ``out_dir``.
    """
    import papermill as pm

    src = Path(notebook) if Path(notebook).is_absolute() else ROOT / "notebooks" / notebook
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / src.name
    try:
        pm.execute_notebook(str(src), str(target), parameters=parameters, cwd=str(ROOT),
                            kernel_name="python3", progress_bar=False)
    except pm.PapermillExecutionError as exc:
        raise RuntimeError(f"notebook {src.name} failed at cell In [{exc.exec_count}]: {exc.ename}: "
                           f"{exc.evalue} (executed copy: {target})") from None
    return target


def dehaze_dcp(inputs: list[Path], out_dir: Path) -> int:
    """DCP (He et al. 2009) on each input; returns the number written."""
    import numpy as np

    from .imageio import read_image, save_png
    from .inference import image_to_tensor, tensor_to_image
    from .physics import dcp_dehaze

    out_dir.mkdir(parents=True, exist_ok=True)
    for path in inputs:
        arr, _ = read_image(path)
        j, _, _ = dcp_dehaze(image_to_tensor(np.asarray(arr)))
        save_png(tensor_to_image(j), out_dir / f"{path.stem}.png")
    return len(inputs)


def reproduce(profile: str = "smoke", outdir: str | Path = "results") -> int:
    if profile != "smoke":
        print(f"error: profile {profile!r} is not available yet (smoke only)", file=sys.stderr)
        return 2
    import torch

    from .batch import dehaze_files
    from .imageio import collect_images
    from .model import CORUN
    from .weights import default_model, default_weights_path

    results = (ROOT / outdir if not Path(outdir).is_absolute() else Path(outdir)) / profile
    timings: dict[str, float] = {}

    t0 = time.time()
    print("[1/3] notebook 01: data preparation (mini dataset)", flush=True)
    try:
        run_notebook("01_data_prep.ipynb", results / "notebooks",
                     {"profile": profile, "results_dir": str(results)})
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    timings["01_data_prep"] = time.time() - t0
    hazy = collect_images([ROOT / "data" / "mini" / "pseudo_real" / "hazy"]).files

    t0 = time.time()
    print(f"[2/3] DCP baseline on {len(hazy)} pseudo-real photos", flush=True)
    dehaze_dcp(hazy, results / "dehazed" / "dcp")
    timings["dcp"] = time.time() - t0

    t0 = time.time()
    weights = default_weights_path()
    if weights is not None:
        model, inputs, label = default_model(), hazy, f"default weights {weights}"
    else:
        torch.manual_seed(0)
        model, inputs = CORUN(depth=4).eval(), hazy[:UNTRAINED_CHECK_IMAGES]
        label = "UNTRAINED network (no default weights yet): pipeline check only, not a result"
    print(f"[3/3] CORUN on {len(inputs)} photos with {label}", flush=True)
    report = dehaze_files(inputs, results / "dehazed" / "corun", model, overwrite=True)
    timings["corun"] = time.time() - t0

    def shown(p: Path) -> str:
        return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)

    summary = {"profile": profile, "corun_weights": str(weights) if weights else None,
               "corun_note": label, "seconds": {k: round(v, 1) for k, v in timings.items()},
               "outputs": {"data": "data/mini", "manifest": shown(results / "data_manifest.json"),
                           "dcp": shown(results / "dehazed" / "dcp"),
                           "corun": shown(results / "dehazed" / "corun"),
                           "figures": shown(ROOT / "figures" / profile)}}
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\nsmoke reproduction finished")
    for step, sec in timings.items():
        print(f"  {step:<14} {sec:6.1f} s")
    for what, where in summary["outputs"].items():
        print(f"  {what:<14} {where}")
    if weights is None:
        print(f"  note: {label}")
    return 0 if report.ok else 1
