"""The ``corun`` command line: ``corun dehaze``, ``data``, ``train``, ``export``, ``evaluate``, ``detect-eval``,
``study``, ``reproduce``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import __version__


def _cmd_export(args: argparse.Namespace) -> int:
    """A training checkpoint (or run folder) → inference weights as safetensors (fp16 by default)."""
    import torch

    from ..checkpoint import CheckpointError, load_model, save_safetensors
    from ..checkpoint import latest_checkpoint

    src = Path(args.checkpoint)
    try:
        if src.is_dir():
            src = latest_checkpoint(src)
            if src is None:
                raise FileNotFoundError(f"{args.checkpoint}: no checkpoints/step_*.pth in this run folder")
        elif not src.is_file():
            raise FileNotFoundError(f"{src}: no such checkpoint file or run folder")
        model = load_model(src, prefer=args.prefer)
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists (--overwrite replaces it)", file=sys.stderr)
        return 2
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    save_safetensors(out, model, dtype=dtype)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({args.dtype}, {n / 1e6:.2f} M parameters, {out.stat().st_size / 2**20:.1f} MiB) from "
          f"{src} ({args.prefer})")
    return 0


def _positive_multiple_of_8(text: str) -> int:
    value = int(text)
    if value < 16 or value % 8:
        raise argparse.ArgumentTypeError(f"tile size must be a multiple of 8 and >= 16, got {value}")
    return value


def _overlap(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"overlap must be 0 or more pixels, got {value}")
    return value


def _margin(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"margin must be 0 or more pixels, got {value}")
    return value


def _cmd_dehaze(args: argparse.Namespace) -> int:
    import torch

    from ..batch import OutputDirError, check_output_dir, dehaze_files
    from ..checkpoint import CheckpointError, load_model
    from ..utils import resolve_device
    from ..weights import default_weights_path, no_weights_message

    torch.set_num_threads(args.threads) if args.threads else None
    if args.tile and args.overlap >= args.tile:
        print(f"error: --overlap {args.overlap} must be smaller than --tile {args.tile}", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    weights = args.weights or default_weights_path()
    if weights is None:
        print(f"error: {no_weights_message()}", file=sys.stderr)
        return 2
    try:
        check_output_dir(args.output, args.inputs)  # before loading the weights: a bad -o costs nothing
    except OutputDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        model = load_model(weights, map_location=device)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"corun dehaze: weights {weights} (depth {model.depth}), device {device}", file=sys.stderr)
    try:
        report = dehaze_files(args.inputs, args.output, model, device=device,
                              tile=args.tile if args.tile else "auto", overlap=args.overlap,
                              precision=args.precision, margin=args.margin,
                              save_transmission=args.save_transmission, save_stages=args.save_stages,
                              overwrite=args.overwrite, progress=not args.quiet,
                              log=lambda m: print(m, file=sys.stderr))
    except OutputDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from ..reproduce import reproduce

    return reproduce(profile=args.profile, outdir=args.output, config=args.config, force=args.force,
                     real_hazy=args.real_hazy, real_hazy_lists=args.real_hazy_list,
                     real_hazy_annotations=args.real_hazy_annotations, real_hazy_class_maps=args.real_hazy_class_map,
                     metric_weights=args.weights, detector=args.detector, detector_weights=args.detector_weights)


def _add_dehaze(sub) -> None:
    """``corun dehaze``."""
    p = sub.add_parser("dehaze", help="dehaze photos (files or folders) into PNGs",
                       description="Dehaze images; outputs keep each input's name and size as PNG.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    p.add_argument("--weights", metavar="PATH",
                   help="weights file (the authors' CORUN.pth, a corun checkpoint or .safetensors); "
                        "default: the project's default weights")
    p.add_argument("--save-transmission", action="store_true",
                   help="also write the final transmission estimate to OUTDIR/transmission/")
    p.add_argument("--save-stages", action="store_true",
                   help="also write every stage output J_k to OUTDIR/stages/")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: auto)")
    p.add_argument("--tile", type=_positive_multiple_of_8, default=None, metavar="SIZE",
                   help="process in overlapping SIZE×SIZE tiles (default: whole image up to 4 MP, "
                        "else 1024)")
    p.add_argument("--overlap", type=_overlap, default=64,
                   help="tile overlap in pixels, 0 or more and below --tile (default 64)")
    p.add_argument("--margin", type=_margin, default=0, metavar="PIXELS",
                   help="mirror the image outwards by PIXELS on every side before the network and crop "
                        "the result back; 32 (corun.inference.BORDER_MARGIN) removes the bright frame the "
                        "default weights leave along borders (default 0: upstream's inference)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute outputs that already exist (default: skip them, so runs resume)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast on CUDA; on a CPU with AVX-512 BF16 / AMX the native bf16 path "
                        "(corun.fast_bf16), elsewhere emulated (default fp32)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_dehaze)


def _add_export(sub) -> None:
    """``corun export``."""
    p = sub.add_parser("export", help="checkpoint → inference weights (.safetensors, fp16 by default)",
                       description="Write a checkpoint's weights (the EMA by default) as safetensors, the "
                                   "format of weights/corun_default.safetensors.")
    p.add_argument("checkpoint", help="a checkpoint file, or a run folder (its latest checkpoint)")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--dtype", choices=["fp16", "fp32", "bf16"], default="fp16")
    p.add_argument("--prefer", choices=["params_ema", "params"], default="params_ema",
                   help="which weights of a training checkpoint (default: the EMA, as upstream)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_export)


def _add_reproduce(sub) -> None:
    """``corun reproduce``."""
    p = sub.add_parser("reproduce", help="regenerate results and figures (smoke: on built-in data)")
    p.add_argument("--profile", default="smoke", choices=["smoke", "paper"],
                   help="smoke: built-in data, CPU; paper: the paper's datasets (see --config)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="paper profile: dataset paths (default configs/reproduce_paper.yaml; env vars override); "
                        "both profiles: its real_hazy:, metric_weights: and detection: entries")
    p.add_argument("--force", action="store_true", help="rerun every step, even unchanged ones")
    p.add_argument("-o", "--output", default="results", help="results folder (default: results)")
    p.add_argument("--real-hazy", action="append", default=[], metavar="NAME=DIR[@SPLIT]",
                   help="a folder of real hazy photos: one more Table 1 block (results/<profile>/metrics_NAME.csv); "
                        "@SPLIT: only the photos a split file names (repeatable; also real_hazy: in the config)")
    p.add_argument("--real-hazy-list", action="append", default=[], metavar="NAME=FILE",
                   help="the split file of real hazy set NAME (one photo name or stem a line)")
    p.add_argument("--real-hazy-annotations", action="append", default=[], metavar="NAME=DIR",
                   help="Pascal-VOC annotations of real hazy set NAME: Table 3 (detection AP) on it")
    p.add_argument("--real-hazy-class-map", action="append", default=[], metavar="NAME=MAP",
                   help="class map of NAME's annotations onto RTTS's classes: a preset (rtts, dawn), "
                        "pairs truck=car,... or a YAML file")
    p.add_argument("--weights", action="append", default=[], metavar="METRIC=FILE",
                   help="a metric's weights file, e.g. brisque=brisque_svm_weights.pth (repeatable)")
    p.add_argument("--detector", default=None, help="Table 3's torchvision COCO detector (default fasterrcnn_resnet50_fpn)")
    p.add_argument("--detector-weights", default=None, metavar="FILE",
                   help="a local COCO state dict for the detector (default: torchvision's cache; never downloaded)")
    p.set_defaults(func=_cmd_reproduce)


def build_parser() -> argparse.ArgumentParser:
    """The ``corun`` command: one sub-command per task, each registered by its own function or module."""
    from . import data, detect, evaluate, realeval, study, train

    parser = argparse.ArgumentParser(prog="corun", description="CORUN + Colabator real-world dehazing")
    parser.add_argument("--version", action="version", version=f"corun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_dehaze(sub)
    _add_export(sub)
    for module in (data, train, evaluate, realeval, detect, study):
        module.add_parser(sub)
    _add_reproduce(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)

