"""Real-haze comparisons: dehaze a set of real hazy photos with several methods and score them with
no-reference metrics *and* the structure score S (issue 16: the default weights on real fog).

    from corun.realeval import compare_on_real_haze
    per_image = compare_on_real_haze("../shared/data/dawn_fog/images", "out/dawn_test",
                                     {"DCP": "dcp", "pretrain": "runs/default_pretrain",
                                      "Colabator": "runs/default_colabator"},
                                     names=read_name_list("../shared/data/dawn_fog/test.txt"))

Each method's outputs go to ``out/<method>/`` (PNG, the input's name and native size; existing outputs are
kept, so an interrupted comparison resumes); the hazy inputs of the set are linked into ``out/hazy/``.
Methods: ``"hazy"`` (the input itself), ``"dcp"`` (He et al. 2009 with the guided filter,
:func:`corun.physics.dcp_dehaze`), or a checkpoint / run folder / weights file for CORUN (its EMA weights).
FADE and BRISQUE reward invented texture, so S (:func:`corun.metrics.structure_score`: 1 = no new
structure) is reported beside them; look at the images too (:func:`side_by_side_figure`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .imageio import collect_images

DEFAULT_REAL_METRICS = ("fade", "brisque", "structure")


def link_subset(src_dir: str | os.PathLike, names: Sequence[str] | None, dst: str | os.PathLike) -> list[Path]:
    """Symlink the listed photos (names or stems; all photos when ``names`` is None) of ``src_dir`` into
    ``dst`` and return the links; a listed name with no file is an error naming it."""
    src_dir, dst = Path(src_dir), Path(dst)
    files = collect_images([src_dir]).files
    if names is not None:
        by_key = {**{f.stem: f for f in files}, **{f.name: f for f in files}}
        missing = [n for n in names if n not in by_key]
        if missing:
            raise FileNotFoundError(f"{src_dir}: {len(missing)} listed photo(s) not found, e.g. {missing[:3]}")
        files = [by_key[n] for n in names]
    dst.mkdir(parents=True, exist_ok=True)
    links = []
    for f in files:
        link = dst / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
        links.append(link)
    return links


def resolve_weights(spec: str | os.PathLike) -> Path:
    """A run folder → its latest checkpoint; a file as is."""
    p = Path(spec)
    if p.is_dir():
        from .train import latest_checkpoint

        ck = latest_checkpoint(p)
        if ck is None:
            raise FileNotFoundError(f"{p}: no checkpoints/step_*.pth")
        return ck
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such weights file or run folder")
    return p


def dehaze_method(method: str | os.PathLike, inputs: Sequence[Path], out_dir: Path, progress: bool = False) -> Path:
    """Write ``method``'s results for ``inputs`` into ``out_dir`` (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if str(method) == "hazy":
        return inputs[0].parent
    if str(method) == "dcp":
        from .tables import dehaze_dcp

        dehaze_dcp(list(inputs), out_dir)
        return out_dir
    from .batch import dehaze_files
    from .checkpoint import load_model

    model = load_model(resolve_weights(method))
    report = dehaze_files(list(inputs), out_dir, model, progress=progress, log=lambda m: None)
    if report.failed:
        raise RuntimeError(f"{method}: {len(report.failed)} photo(s) failed, e.g. {report.failed[0]}")
    return out_dir


def compare_on_real_haze(hazy_dir: str | os.PathLike, out: str | os.PathLike,
                         methods: Mapping[str, str | os.PathLike], names: Sequence[str] | None = None,
                         metrics: Sequence[str] = DEFAULT_REAL_METRICS,
                         weights: Mapping[str, str | os.PathLike] | None = None, progress: bool = False):
    """Per-image scores (pandas: ``method``, ``image``, one column per metric, ``error``) of each method on
    the real hazy photos ``names`` of ``hazy_dir``; outputs and a score cache under ``out``."""
    import pandas as pd

    from .metrics import evaluate_folder

    out = Path(out)
    inputs = link_subset(hazy_dir, names, out / "hazy")
    frames = []
    for label, method in methods.items():
        folder = dehaze_method(method, inputs, out / _safe(label), progress=progress)
        df = evaluate_folder(folder, metrics=list(metrics), hazy=out / "hazy", weights=weights,
                             cache_dir=out / ".metric_cache", progress=progress)
        keep = {p.stem for p in inputs}
        df = df[df["image"].map(lambda n: Path(n).stem in keep)]
        frames.append(df.assign(method=label)[["method", *df.columns]])
    return pd.concat(frames, ignore_index=True)


def summary_table(per_image, metrics: Sequence[str] = DEFAULT_REAL_METRICS):
    """Mean per method (and the minimum of S), in the methods' order."""
    import pandas as pd

    rows = []
    for method, part in per_image.groupby("method", sort=False):
        row = {"method": method, "n": int(part[list(metrics)].notna().all(axis=1).sum())}
        for m in metrics:
            row[m] = float(part[m].mean())
        if "structure" in metrics:
            row["structure_min"] = float(part["structure"].min())
        rows.append(row)
    return pd.DataFrame(rows)


def side_by_side_figure(out: str | os.PathLike, methods: Sequence[str], photos: Sequence[str],
                        max_side: int = 480):
    """A matplotlib figure: one row per photo, one column per method (``hazy`` first), from ``out``."""
    import matplotlib.pyplot as plt
    from PIL import Image

    out = Path(out)
    fig, axes = plt.subplots(len(photos), len(methods), figsize=(3.2 * len(methods), 2.1 * len(photos)),
                             squeeze=False)
    for r, stem in enumerate(photos):
        for c, method in enumerate(methods):
            folder = out / ("hazy" if method == "hazy" else _safe(method))
            found = [p for p in folder.iterdir() if p.stem == stem]
            ax = axes[r][c]
            ax.axis("off")
            if r == 0:
                ax.set_title(method, fontsize=9)
            if found:
                im = Image.open(found[0]).convert("RGB")
                im.thumbnail((max_side, max_side))
                ax.imshow(np.asarray(im))
    fig.tight_layout()
    return fig


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m corun.realeval --hazy DIR [--names FILE] --method NAME=SPEC ... -o OUT``: writes
    ``OUT/per_image.csv`` and ``OUT/summary.csv`` and prints the summary."""
    import argparse

    from .data import read_name_list

    p = argparse.ArgumentParser(prog="python -m corun.realeval", description=main.__doc__)
    p.add_argument("--hazy", required=True, help="folder of real hazy photos")
    p.add_argument("--names", help="split file: only these photos (one name or stem per line)")
    p.add_argument("--method", action="append", required=True, metavar="NAME=SPEC",
                   help="hazy | dcp | a checkpoint, run folder or weights file (repeatable)")
    p.add_argument("--metrics", default=",".join(DEFAULT_REAL_METRICS))
    p.add_argument("--weights", action="append", default=[], metavar="METRIC=PATH")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    methods = dict(m.split("=", 1) for m in args.method)
    weights = dict(w.split("=", 1) for w in args.weights)
    names = read_name_list(args.names) if args.names else None
    per_image = compare_on_real_haze(args.hazy, args.output, methods, names=names,
                                     metrics=args.metrics.split(","), weights=weights, progress=True)
    out = Path(args.output)
    per_image.to_csv(out / "per_image.csv", index=False)
    summary = summary_table(per_image, args.metrics.split(","))
    summary.to_csv(out / "summary.csv", index=False)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
