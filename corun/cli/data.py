"""`corun data ...` subcommands (mini dataset builder, dataset checker, depth for photos without depth)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..mini import MAX_TRAIN_RENDERED, MiniConfig

KINDS = ("auto", "clean-depth", "real", "paired")


def _cmd_mini(args: argparse.Namespace) -> int:
    from ..mini import build_mini

    try:
        build_mini(args.out, MiniConfig(seed=args.seed, n_train_rendered=args.train_scenes), force=args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def detect_layout(path: Path) -> list[tuple[Path, str]]:
    """The datasets in ``path`` as (folder, kind): a mini dataset holds three, a folder with ``hazy/`` is paired,
    one with ``rgb_500``/``depth_500``/``depth`` is clean photos with depth, anything else real hazy photos."""
    from ..mini import is_mini_dataset

    if is_mini_dataset(path):
        return [(path, "clean-depth"), (path / "test", "paired"), (path / "pseudo_real" / "hazy", "real")]
    if (path / "hazy").is_dir():
        return [(path, "paired")]
    if any((path / d).is_dir() for d in ("rgb_500", "depth_500", "depth")):
        return [(path, "clean-depth")]
    return [(path, "real")]


def _cmd_check(args: argparse.Namespace) -> int:
    from ..data import DatasetError, check_folder

    path = Path(args.dir)
    if not path.is_dir():
        print(f"error: {path}: no such folder", file=sys.stderr)
        return 2
    targets = detect_layout(path) if args.kind == "auto" else [(path, args.kind)]
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
        for n in info["notes"][:10]:
            print(f"  note {n}")
        if len(info["notes"]) > 10:
            print(f"  ... and {len(info['notes']) - 10} more notes")
        if info.get("orphan_depth"):
            names = info["orphan_depth"]
            print(f"  {len(names)} depth file(s) without an image: {', '.join(names[:10])}"
                  + (" ..." if len(names) > 10 else ""))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(reports, indent=1))
    return rc


def _write_npy_atomic(path: Path, array) -> None:
    """Write ``array`` to ``path`` via a temporary file in the same folder and os.replace (never half-written)."""
    import os
    import tempfile

    import numpy as np

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cmd_depth(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..data import image_files
    from ..depth import DepthError, make_estimator
    from ..imageio import ImageReadError, read_image

    src, out = Path(args.input), Path(args.out)
    if not src.is_dir():
        print(f"error: {src}: no such folder", file=sys.stderr)
        return 2
    try:
        estimate = make_estimator(args.method)
    except (DepthError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = image_files(src)
    if not images:
        print(f"error: {src}: no image files", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    failed: list[str] = []
    for img in tqdm(images, desc=f"depth ({args.method})", unit="img"):
        dst = out / f"{img.stem}.npy"
        if dst.exists() and not args.overwrite:
            skipped += 1
            continue
        try:
            rgb, _ = read_image(img)
            d = np.asarray(estimate(rgb), dtype=np.float32)
        except (ImageReadError, DepthError, ValueError, OSError) as exc:
            msg = str(exc)
            tqdm.write(f"failed {msg if str(img) in msg else f'{img}: {msg}'}", file=sys.stderr)
            failed.append(img.name)
            continue
        _write_npy_atomic(dst, d)
        written += 1
    print(f"{out}: {written} written, {skipped} already there (skipped), {len(failed)} failed"
          + (f": {', '.join(failed[:10])}" + (" ..." if len(failed) > 10 else "") if failed else ""))
    return 1 if failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `corun data` and its subcommands on the top-level CLI."""
    p = subparsers.add_parser("data", help="build the embedded mini dataset, check a dataset folder, or estimate depth for photos")
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

    d = sub.add_parser("depth", help="write OUT/NAME.npy normalised inverse depth (1 = near) for every photo in IN")
    d.add_argument("input", metavar="IN", help="folder of clean photos")
    d.add_argument("out", metavar="OUT", help="output folder for NAME.npy (float32, the photo's size); then "
                                              "CleanDepthDataset(clean_dir=IN, depth_dir=OUT) reads them")
    d.add_argument("--method", default="prior",
                   help="prior (offline, no weights; default), ramp (vertical baseline) or hf:MODEL "
                        "(transformers depth-estimation model id or local folder, e.g. "
                        "hf:depth-anything/Depth-Anything-V2-Small-hf; needs corun[depth])")
    d.add_argument("--overwrite", action="store_true", help="recompute files that already exist (default: skip)")
    d.set_defaults(func=_cmd_depth)

