"""``corun train --config FILE [--resume] [KEY=VALUE ...]`` and ``python -m corun.train``: the command line
of :func:`corun.train.train` (exit codes: 0 done, 2 config error, 3 diverged, 128 + N stopped by signal N)."""
from __future__ import annotations

import argparse
import json
import sys

import torch.distributed as dist

from ..config import ConfigError, load_config
from ..train.runs import train
from ..train.settings import TrainConfig
from ..train.setup import dist_env
from ..train.state import NonFiniteLossError


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", required=True, metavar="FILE", help="YAML config (configs/*_pretrain.yaml)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in train.out_dir (start fresh if none)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. train.total_steps=100 train.out_dir=runs/x")
    p.set_defaults(func=_cmd_train)
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        summary = train(cfg, resume=args.resume)
    except (ConfigError, NonFiniteLossError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if dist_env()[0] == 0:
        print(json.dumps(summary), flush=True)
    return summary["exit_code"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``corun train`` on the top-level CLI's subparsers."""
    p = sub.add_parser("train", help="pretrain CORUN (or any restorer) on synthetic haze, or fine-tune it with "
                                     "Colabator (torchrun for several GPUs)",
                       description="Train on online-synthesised haze (and real photos with Colabator); "
                                   "see corun/train/.")
    return _configure(p)


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m corun.train",
                                                 description="Pretrain CORUN on synthetic haze"))
    args = parser.parse_args(argv)
    return args.func(args)
