"""`corun detect-eval`: per-class detection AP on RTTS for folders of (dehazed) images (paper Table 3).

    corun detect-eval RTTS/JPEGImages out/rtts --annotations RTTS --names hazy CORUN+Colabator
    corun detect-eval dawn_fog/images --annotations dawn_fog/annotations --split dawn_fog/test.txt \
        --class-map truck=car          # DAWN: its trucks (and the detector's) count as cars
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_CSV = "detection_ap.csv"


def _cmd_detect_eval(args: argparse.Namespace) -> int:
    """Exit status: 0 all evaluated; 1 some image or folder failed (the CSV has the rest); 2 nothing could
    be evaluated: no detector weights (the CSV is written with n/a cells) or unusable arguments."""
    import torch

    from .. import detection as det
    from ..utils import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        names = det.row_names(args.images, args.names)
        device = resolve_device(args.device)
        annotations = det.read_annotations(args.annotations, det.parse_class_map(args.class_map), args.split)
    except (ValueError, RuntimeError) as exc:  # AnnotationError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kwargs = {"min_size": args.min_size} if args.min_size else {}
    try:
        model = det.build_detector(args.detector, args.weights, download=args.download, **kwargs)
    except det.DetectorUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        results = det.unavailable_results(args.images, str(exc), names)
    else:
        source = args.weights or det.cached_weights_path(args.detector)
        print(f"corun detect-eval: {args.detector} ({source}), device {device}", file=sys.stderr)
        print(f"corun detect-eval: class map {annotations.class_map.describe()}", file=sys.stderr)
        results = det.evaluate_folders(dict(zip(names, args.images)), annotations, model=model, device=device,
                                       progress=not args.quiet)
    df = det.results_table(results)
    out = det.write_table_csv(df, args.output)
    print(det.format_table(df).to_string())
    print(f"per-class AP@{det.IOU_THRESHOLD} written to {out}", file=sys.stderr)
    if all(r.reason for r in results):
        return 2
    return 0 if all(r.ok for r in results) and not annotations.errors else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `corun detect-eval` on the top-level CLI."""
    from ..detection import CLASS_MAP_PRESETS, DEFAULT_DETECTOR, DETECTORS

    p = subparsers.add_parser(
        "detect-eval", help="per-class detection AP on RTTS before/after dehazing (paper Table 3)",
        description="Run a COCO detector (torchvision) on each IMAGES_DIR, map its labels to RTTS's "
                    "bicycle, bus, car, motorbike, person, and score it against the Pascal-VOC "
                    "annotations: AP at IoU 0.5 per class and their mean, difficult objects ignored, "
                    "COCO 101-point interpolation (see corun/detection.py). Images are matched to "
                    "NAME.xml by file stem. Writes one CSV row per folder; n/a where there is no value.")
    p.add_argument("images", nargs="+", metavar="IMAGES_DIR",
                   help="folder(s) of images: RTTS/JPEGImages for hazy, or a dehazer's outputs")
    p.add_argument("--annotations", required=True, metavar="DIR",
                   help="RTTS's Annotations/ folder of *.xml, or the RTTS root holding it, or any folder of "
                        "Pascal-VOC XML files (e.g. DAWN's annotations/)")
    p.add_argument("--class-map", default=None, metavar="MAP",
                   help="how other class names (in the XML files and the detector's COCO names) become "
                        "RTTS's five: NAME=CLASS pairs (e.g. truck=car,motorcycle=motorbike), a preset ("
                        + ", ".join(f"{k}: {', '.join(f'{a}={b}' for a, b in v.items()) or 'the default'}"
                                    for k, v in CLASS_MAP_PRESETS.items())
                        + "), or a YAML file of NAME: CLASS. Default: motorcycle=motorbike. Boxes of other "
                          "classes are not evaluated and are counted in the report")
    p.add_argument("--split", default=None, metavar="FILE",
                   help="evaluate only the images this file names, one per line (e.g. DAWN's test.txt)")
    p.add_argument("--names", nargs="+", metavar="NAME",
                   help="row name per IMAGES_DIR (default: the folder names)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTORS, metavar="NAME",
                   help=f"torchvision COCO detector: {', '.join(DETECTORS)} (default {DEFAULT_DETECTOR})")
    p.add_argument("--weights", metavar="PATH",
                   help="local state dict for --detector (COCO's 91 labels) instead of torchvision's "
                        "cached COCO weights")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download the COCO weights when they are not cached "
                        "(default: never touch the network; say what to fetch)")
    p.add_argument("-o", "--output", default=DEFAULT_CSV, metavar="CSV",
                   help=f"per-class AP table (default ./{DEFAULT_CSV})")
    p.add_argument("--min-size", type=int, default=None, metavar="PX",
                   help="detector input short side (default: the detector's own, 800 for the ResNet-50 "
                        "models); smaller is faster and changes the numbers")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_detect_eval)
