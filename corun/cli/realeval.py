"""``corun realeval``: the command line of :func:`corun.realeval.compare_on_real_haze` (methods on real hazy
photos side by side: FADE, BRISQUE, S per image and their means; the model card's tables)."""
from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_realeval(args: argparse.Namespace) -> int:
    from ..data import read_name_list
    from ..realeval import compare_on_real_haze, summary_table

    if args.margin < 0:
        raise SystemExit(f"corun realeval: error: --margin must be 0 or more pixels, got {args.margin}")
    methods = dict(m.split("=", 1) for m in args.method)
    weights = dict(w.split("=", 1) for w in args.weights)
    names = read_name_list(args.names) if args.names else None
    metrics = args.metrics.split(",")
    per_image = compare_on_real_haze(args.hazy, args.output, methods, names=names, metrics=metrics,
                                     weights=weights, progress=True, margin=args.margin)
    out = Path(args.output)
    per_image.to_csv(out / "per_image.csv", index=False)
    summary = summary_table(per_image, metrics)
    summary.to_csv(out / "summary.csv", index=False)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """``corun realeval --hazy DIR [--names FILE] --method NAME=SPEC ... -o OUT``: writes ``OUT/per_image.csv``
    and ``OUT/summary.csv`` and prints the summary."""
    from ..realeval import DEFAULT_REAL_METRICS

    p = sub.add_parser("realeval", help="compare methods on real hazy photos (FADE, BRISQUE, S; per image and mean)",
                       description="Dehaze real hazy photos with each method and score them without references: "
                                   "OUT/per_image.csv, OUT/summary.csv and OUT/<method>/ (the outputs).")
    p.add_argument("--hazy", required=True, help="folder of real hazy photos")
    p.add_argument("--names", help="split file: only these photos (one name or stem per line)")
    p.add_argument("--method", action="append", required=True, metavar="NAME=SPEC",
                   help="hazy | dcp | a checkpoint, run folder or weights file (repeatable)")
    p.add_argument("--metrics", default=",".join(DEFAULT_REAL_METRICS))
    p.add_argument("--weights", action="append", default=[], metavar="METRIC=PATH")
    p.add_argument("--margin", type=int, default=0, metavar="PIXELS",
                   help="as corun dehaze --margin, for every CORUN method (default 0)")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_cmd_realeval)
    return p
