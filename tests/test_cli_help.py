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


def test_every_subcommand_has_help():
    from peftkit.cli import COMMANDS, _build_parser

    parser = _build_parser()
    for name in COMMANDS:
        assert name in parser.format_help()
