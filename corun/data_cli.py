"""`corun data ...` subcommands (mini dataset builder, dataset checker)."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .mini import MAX_TRAIN_RENDERED, MiniConfig

KINDS = ("auto", "clean-depth", "real", "paired")


def _cmd_mini(args: argparse.Namespace) -> int:
    from .mini import build_mini

    try:
        build_mini(args.out, MiniConfig(seed=args.seed, n_train_rendered=args.train_scenes), force=args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def check_folder(path: Path, kind: str) -> dict:
    """Open ``path`` as a dataset of ``kind`` and describe it; raises DatasetError when unusable."""
    import numpy as np

    from . import data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every problem is listed in the report instead
        if kind == "clean-depth":
            ds = data.CleanDepthDataset(path, crop=None, flip=False)
        elif kind == "real":
            ds = data.RealHazyDataset(path, strong=False)
        else:
            ds = data.PairedDataset(path)
    rep = ds.report
    info = {"path": str(path), "kind": kind, "found": rep.found, "usable": rep.usable,
            "skipped": [f"{p}: {r}" for p, r in rep.skipped], "unmatched": rep.unmatched}
    if kind == "clean-depth":
        ranges, holes = [], []
        for _, dp in ds.samples:
            a, valid, dkind = data.read_raw_depth(dp)
            ranges.append((float(a[valid].min()), float(a[valid].max())))
            holes.append(1.0 - float(valid.mean()))
        info["depth_min"] = min(r[0] for r in ranges)
        info["depth_max"] = max(r[1] for r in ranges)
        info["depth_hole_fraction_max"] = max(holes)
        info["depth_files"] = sorted({p.suffix for _, p in ds.samples})
    return info


def _detect(path: Path) -> list[tuple[Path, str]]:
    from .mini import is_mini_dataset

    if is_mini_dataset(path):
        return [(path, "clean-depth"), (path / "test", "paired"), (path / "pseudo_real" / "hazy", "real")]
    if (path / "hazy").is_dir():
        return [(path, "paired")]
    if any((path / d).is_dir() for d in ("rgb_500", "depth_500", "depth")):
        return [(path, "clean-depth")]
    return [(path, "real")]


def _cmd_check(args: argparse.Namespace) -> int:
    from .data import DatasetError

    path = Path(args.dir)
    if not path.is_dir():
        print(f"error: {path}: no such folder", file=sys.stderr)
        return 2
    targets = _detect(path) if args.kind == "auto" else [(path, args.kind)]
    reports, rc = [], 0
    for folder, kind in targets:
        try:
            info = check_folder(folder, kind)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            reports.append({"path": str(folder), "kind": kind, "error": str(exc)})
            rc = 1
            continue
        reports.append(info)
        line = f"{folder} [{kind}]: {info['usable']} usable of {info['found']}"
        if kind == "clean-depth":
            line += (f", depth {','.join(info['depth_files'])} in [{info['depth_min']:.3g}, {info['depth_max']:.3g}]"
                     f", holes up to {100 * info['depth_hole_fraction_max']:.1f}%")
        print(line)
        for s in info["skipped"]:
            print(f"  skipped {s}")
        if info["unmatched"]:
            print(f"  {len(info['unmatched'])} without a partner: {', '.join(info['unmatched'][:10])}"
                  + (" ..." if len(info["unmatched"]) > 10 else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(reports, indent=1))
    return rc


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `corun data` and its subcommands on the top-level CLI."""
    p = subparsers.add_parser("data", help="build the embedded mini dataset or check a dataset folder")
    p.set_defaults(func=lambda args: p.print_help() or 0)
    sub = p.add_subparsers(dest="data_command")

    m = sub.add_parser("mini", help="build the embedded mini dataset (nothing downloaded, seconds)")
    m.add_argument("out", help="output folder (created; an existing non-mini folder is never overwritten)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--train-scenes", type=int, default=MiniConfig.n_train_rendered, metavar="N",
                   help=f"rendered training scenes with exact depth (default {MiniConfig.n_train_rendered}; at "
                        f"most {MAX_TRAIN_RENDERED}); the test and pseudo-real splits do not change")
    m.add_argument("--force", action="store_true", help="rebuild even if an up-to-date mini dataset is there")
    m.set_defaults(func=_cmd_mini)

    c = sub.add_parser("check", help="validate a dataset folder and print what it holds")
    c.add_argument("dir")
    c.add_argument("--kind", choices=KINDS, default="auto",
                   help="clean-depth (RIDCP500 layout), real (hazy photos), paired (hazy/ + clean/); "
                        "auto detects, and checks every part of a mini dataset")
    c.add_argument("--json", help="also write the findings to this JSON file")
    c.set_defaults(func=_cmd_check)

