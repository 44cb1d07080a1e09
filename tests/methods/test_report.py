"""`peftkit methods`: the README's parameter / adapter-size table, from real saved adapters."""

from __future__ import annotations

from pathlib import Path

from peftkit.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_methods_table_on_tiny_bert(tiny_bert, capsys):
    capsys.readouterr()
    paths = [
        RECIPES / "minilm-pfeiffer-rotten_tomatoes.yaml",
        RECIPES / "minilm-prompt_tuning-rotten_tomatoes.yaml",
    ]
    assert main(["methods", *map(str, paths), "--model", str(tiny_bert)]) == 0
    out = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
        for line in out.splitlines()[2:]
    }
    # hidden 32, reduction 16 → bottleneck 2: 2 layers × (2·32·2 + 2 + 32) + head 32·2 + 2
    assert rows["pfeiffer"][2] == "390" and rows["pfeiffer"][5] == "no"
    assert rows["prompt_tuning"][2] == f"{20 * 32 + 66:,}"
    assert rows["pfeiffer"][4].endswith("KiB")
