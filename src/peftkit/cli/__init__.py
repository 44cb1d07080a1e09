"""`peftkit` command line: argument parsing and dispatch only.

Each module of this package adds one group of subcommands (`register`) whose handlers call the library. Heavy
imports happen inside the handlers, so `peftkit --help` answers without importing torch. A new subcommand is a
`register` addition in its group's module (or a new module listed in `GROUPS`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from peftkit.errors import PeftkitError

# Subcommand groups, in the order `peftkit --help` lists them.
GROUPS = ("training", "tune", "inference", "serve", "adapters", "data", "bench")


def project_root() -> Path:
    """The checkout that holds recipes/ and data_cards/ (src layout: three levels above this package)."""
    return Path(__file__).resolve().parents[3]


def add_verbose(parser: argparse.ArgumentParser) -> None:
    """`--verbose` for a subcommand that loads models (see `peftkit.quiet`)."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the libraries' own messages (transformers' load report, warnings); otherwise they stay off "
        "the console (train keeps them in the run's messages.log)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `peftkit` parser with every group's subcommands; each subcommand sets its `handler`."""
    from peftkit import __version__

    parser = argparse.ArgumentParser(
        prog="peftkit",
        description="Parameter-efficient adaptation of BERT- and GPT-style models: recipe → small adapter → "
        "eval / predict / serve.",
    )
    parser.add_argument("--version", action="version", version=f"peftkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"peftkit.cli.{group}").register(sub)
    return parser


def commands() -> list[str]:
    """Every subcommand name, in `--help` order."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. User errors print one paragraph, no traceback, exit 2."""
    parser = build_parser()
    # Overrides may come after flags (`train r.yaml --overwrite train.epochs=2`): collect stray key=value words.
    args, extra = parser.parse_known_args(argv)
    stray = [w for w in extra if w.startswith("-") or "=" not in w or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if not args.command:
        parser.print_help()
        return 0
    try:
        return args.handler(args) or 0
    except PeftkitError as exc:
        print(f"peftkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("peftkit: interrupted", file=sys.stderr)
        return 130
