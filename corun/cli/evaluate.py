"""`corun evaluate`: image-quality metrics over folders of results, written as CSV tables.

    corun evaluate results/corun results/colabator --metrics fade,brisque,nima -o eval/
    corun evaluate out/ --reference data/test/clean --metrics psnr,ssim -o eval/
    corun evaluate out/ --hazy photos/ --metrics fade,brisque,structure -o eval/   # S against the inputs

Writes ``OUT/per_image.csv`` (``folder``, ``image``, one column per metric, ``error``) and
``OUT/summary.csv`` (one row per folder: ``folder``, ``n_images``, ``n_failed``, metric means, ``notes``).
A metric that cannot run here (weights missing offline) reads ``n/a`` in the summary, with the reason
in ``notes`` and on stderr. Scores are cached in ``OUT/.metric_cache`` so re-runs are instant.
Exit status: 0 all scored, 1 some files or folders failed (listed on stderr) or a table could not be written,
2 bad arguments (including an output folder that cannot be written, checked before any scoring).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _metric_list(text: str) -> list[str]:
    from ..metrics import METRICS

    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(METRICS)
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)} or all")
    return list(dict.fromkeys(names))


def _weights_item(text: str) -> tuple[str, Path]:
    from ..metrics import METRICS

    name, sep, path = text.partition("=")
    name = name.strip().lower()
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    if name not in METRICS:
        raise argparse.ArgumentTypeError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    if METRICS[name].weight_file is None:
        raise argparse.ArgumentTypeError(f"{name} needs no weights file")
    if not Path(path).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"{name}: weights file {path} does not exist")
    return name, Path(path).expanduser()


def _print_summary(summary, metrics: list[str], na: dict[str, str]) -> None:
    from ..metrics import direction_label

    header = ["folder", "n"] + [direction_label(m) for m in metrics]
    rows = [header]
    for _, r in summary.iterrows():
        cells = [str(r["folder"]), str(r["n_images"])]
        cells += ["n/a" if m in na else ("-" if r[m] != r[m] else f"{r[m]:.4f}") for m in metrics]
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..metrics import (
        MetricError,
        evaluate_folder,
        metric_columns,
        resolve_metric_device,
        summarize,
    )

    try:
        resolve_metric_device(args.device)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.reference and not Path(args.reference).is_dir():
        print(f"error: {args.reference}: reference folder does not exist", file=sys.stderr)
        return 2
    if args.hazy and not Path(args.hazy).is_dir():
        print(f"error: {args.hazy}: hazy input folder does not exist", file=sys.stderr)
        return 2
    out = Path(args.output)
    from ..batch import OutputDirError, check_output_dir

    try:  # before scoring anything: a bad -o used to crash only after the whole folder was scored
        check_output_dir(out, [])
    except OutputDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else out / ".metric_cache"
    weights = dict(args.weights or [])
    per_image, summaries, na, rc = [], [], {}, 0
    for folder in args.dirs:
        try:
            df = evaluate_folder(folder, metrics=args.metrics, reference=args.reference, weights=weights,
                                 cache_dir=cache_dir, device=args.device, progress=not args.quiet,
                                 batch_size=args.batch_size, workers=args.workers or None, hazy=args.hazy)
        except MetricError as exc:
            print(f"error: {exc}", file=sys.stderr)
            rc = 1
            continue
        for image, message in df.attrs["failed"].items():
            print(f"error: {folder}: {image}: {message}", file=sys.stderr)
            rc = 1
        if df.attrs["unmatched_references"]:
            names = df.attrs["unmatched_references"]
            print(f"note: {len(names)} reference image(s) without a partner in {folder}: "
                  + ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""), file=sys.stderr)
        if df.attrs.get("downscaled"):
            from ..metrics import METRIC_MAX_PIXELS

            big = df.attrs["downscaled"]
            print(f"note: {folder}: {len(big)} image(s) above {METRIC_MAX_PIXELS / 1e6:g} MP scored downscaled to fit "
                  f"(e.g. {next(iter(big))}: {next(iter(big.values()))}; see corun/metrics.py)", file=sys.stderr)
        na.update(df.attrs["na_reasons"])
        summaries.append(summarize(df).assign(folder=str(folder)))
        per_image.append(df.assign(folder=str(folder))[["folder", *df.columns]])
    for name, reason in na.items():
        print(f"n/a: {name}: {reason}", file=sys.stderr)
    if not per_image:
        return rc or 1
    table = pd.concat(per_image, ignore_index=True)
    summary = pd.concat(summaries, ignore_index=True)
    metrics = metric_columns(table)
    for name in metrics:
        if name in na:
            summary[name] = summary[name].astype(object).where(summary[name].notna(), "n/a")
    from ..utils import atomic_write

    _print_summary(summary, metrics, na)
    for name, frame in (("per_image.csv", table), ("summary.csv", summary)):
        try:
            atomic_write(out / name, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
        except OSError as exc:
            print(f"error: cannot write {out / name}: {exc.strerror or exc} (the scores above are cached"
                  f"{'' if cache_dir else ' only with a cache'}; free space and re-run)", file=sys.stderr)
            return 1
    print(f"wrote {out / 'per_image.csv'} and {out / 'summary.csv'}", file=sys.stderr)
    return rc


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `corun evaluate` on the top-level CLI."""
    from ..metrics import DEFAULT_METRICS, METRICS

    p = subparsers.add_parser(
        "evaluate", help="image-quality metrics (FADE, BRISQUE, NIMA, ... PSNR/SSIM) over folders",
        description="Score every image in each DIR; writes OUT/per_image.csv and OUT/summary.csv. "
                    "Lower is better: " + ", ".join(n for n, s in METRICS.items() if s.lower_better)
                    + "; higher is better: " + ", ".join(n for n, s in METRICS.items() if not s.lower_better)
                    + ". Metrics whose weights are not available offline are reported n/a with the reason.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="folders of images (one summary row each)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for the CSV tables")
    p.add_argument("--metrics", type=_metric_list, default=list(DEFAULT_METRICS), metavar="LIST",
                   help=f"comma-separated, from {','.join(METRICS)} or 'all' "
                        f"(default: {','.join(DEFAULT_METRICS)})")
    p.add_argument("--hazy", metavar="DIR",
                   help="the hazy inputs the images were made from (same file stems), for --metrics structure")
    p.add_argument("--reference", metavar="DIR",
                   help="clean images for psnr/ssim, paired with each DIR's images by file stem")
    p.add_argument("--weights", type=_weights_item, action="append", metavar="NAME=PATH",
                   help="weights file for a metric, e.g. brisque=brisque_svm_weights.pth (repeatable); "
                        "otherwise looked up in $CORUN_METRIC_WEIGHTS_DIR and pyiqa's cache")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when available, else CPU")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images per batch for NIMA/MUSIQ (default 8); other metrics go one by one")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="threads for reading and FADE (default: up to 4)")
    p.add_argument("--cache-dir", metavar="DIR", help="score cache (default: OUT_DIR/.metric_cache)")
    p.add_argument("--no-cache", action="store_true", help="recompute every score, keep no cache")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)
