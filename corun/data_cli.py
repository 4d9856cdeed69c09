"""`corun data ...` subcommands (mini dataset builder, dataset checker)."""
from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `corun data` and its subcommands on the top-level CLI."""
    p = subparsers.add_parser("data", help="build the embedded mini dataset or check a dataset folder")
    p.set_defaults(func=lambda args: p.print_help() or 0)
