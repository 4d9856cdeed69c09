"""``corun study make`` and ``corun study score``: the command line of :mod:`corun.study` (Table 2)."""
from __future__ import annotations

import argparse
import sys

from ..study import MODES, StudyError, make_study, parse_method_dirs, score_studies


def _cmd_make(args: argparse.Namespace) -> int:
    try:
        make_study(parse_method_dirs(args.methods), args.output, mode=args.mode, seed=args.seed,
                   max_images=args.max_images, name=args.name, reference=args.reference, max_side=args.max_side,
                   scale=args.scale, embed=args.embed, overwrite=args.overwrite,
                   log=lambda m: print(m, file=sys.stderr))
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    try:
        scored = score_studies(args.votes, args.study or (), args.output, ci=args.ci, n_boot=args.n_boot)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(scored.markdown, end="")
    for f in scored.files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    """``corun study make`` and ``corun study score``."""
    p = sub.add_parser("study", help="Table 2: a blind user study page, and its votes scored",
                       description="A blind, randomised user study of dehazing results (the paper's Table 2): "
                                   "`make` writes a self-contained HTML page, `score` turns exported votes into "
                                   "Table 2.")
    ssub = p.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    m = ssub.add_parser("make", help="write the study page (index.html + images/) from result folders",
                        description="Match the methods' results by file stem and write a self-contained study "
                                    "page (open it from file://; no server).")
    m.add_argument("methods", nargs="+", metavar="METHOD=DIR", help="a method's name and its folder of results")
    m.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for index.html, images/ and the key")
    m.add_argument("--mode", choices=MODES, default="rate",
                   help="rate: score each result 1..scale (default; the paper reports scores); rank: order "
                        "the results; pairwise: choose the better of two")
    m.add_argument("--seed", type=int, default=0, help="seed of the presentation order and the blind codes")
    m.add_argument("--max-images", type=int, default=None, metavar="N", help="a random sample of N photos")
    m.add_argument("--name", default=None, help="the study's name, e.g. RTTS (default: the output folder's name)")
    m.add_argument("--reference", default=None, metavar="DIR",
                   help="the hazy inputs, shown above each photo's results (not rated)")
    m.add_argument("--max-side", type=int, default=1024, metavar="PX",
                   help="downscale images whose longer side is larger (default 1024; 0: never)")
    m.add_argument("--scale", type=int, default=10, help="rate mode: scores 1..SCALE (2..10, default 10)")
    m.add_argument("--embed", action="store_true", help="put the images inside index.html (one file to send)")
    m.add_argument("--overwrite", action="store_true", help="replace a study already in the output folder")
    m.set_defaults(func=_cmd_make)
    s = ssub.add_parser("score", help="exported votes → Table 2 (Markdown, CSV, plot)",
                        description="Score exported votes: per method the mean over raters with a 95 %% "
                                    "confidence interval, and the number of raters and votes.")
    s.add_argument("votes", nargs="+", metavar="VOTES.json", help="votes files exported from the study page")
    s.add_argument("--study", action="append", metavar="DIR",
                   help="the study folder (its study_key.json names the methods and refuses other studies' "
                        "votes); repeat for several studies (e.g. RTTS and Fattal)")
    s.add_argument("-o", "--output", default=None, metavar="TABLE2.md",
                   help="write the Markdown here, and .csv and .png beside it")
    s.add_argument("--ci", choices=["bootstrap", "t"], default="bootstrap",
                   help="bootstrap over raters (default) or Student t-interval")
    s.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples (default 10000)")
    s.set_defaults(func=_cmd_score)
