"""`peftkit --help` stays fast: it must not import torch, transformers or peft."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys, runpy; sys.argv = ['peftkit', '--help']\n"
        "try:\n    runpy.run_module('peftkit', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "predict" in out
    assert "HEAVY []" in out, out


def test_every_subcommand_and_argument_has_help():
    import argparse

    from peftkit.cli import build_parser, commands

    parser = build_parser()
    names = commands()
    assert {"train", "validate", "predict", "eval", "merge", "publish"} <= set(names)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {action.dest: action.help for action in sub._choices_actions}
    for name in names:
        assert listed.get(name), f"`peftkit {name}` has no help line"
    missing = [
        f"peftkit {command} {action.dest}"
        for command, subparser in _subcommands(parser)
        for action in subparser._actions
        if not isinstance(action, argparse._HelpAction | argparse._SubParsersAction) and not action.help
    ]
    assert missing == [], f"arguments without help text: {missing}"


def _subcommands(parser, prefix=""):
    """(command words, parser) for every subcommand, nested ones (`data check`) included."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield f"{prefix}{name}", subparser
                yield from _subcommands(subparser, f"{prefix}{name} ")


def test_version_flag(capsys):
    import pytest

    from peftkit import __version__
    from peftkit.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"peftkit {__version__}"
