"""The README's "Train on your own data" example, run as written (with a tiny model): init writes a card and a
recipe, train makes an adapter from them with no hand edits, predict uses it."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

from peftkit.cli import main
from tests.helpers import make_texts

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    return text[text.index("<!-- own-data:start -->") : text.index("<!-- own-data:end -->")]


def _block(section: str, language: str) -> list[str]:
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1).strip().splitlines()


def test_readme_own_data_example_runs_end_to_end(tmp_path, tiny_bert, monkeypatch, capsys):
    section = _section()
    commands = [shlex.split(line) for line in _block(section, "bash")]
    assert [c[:2] for c in commands] == [["peftkit", "init"], ["peftkit", "train"], ["peftkit", "predict"]]
    monkeypatch.chdir(tmp_path)  # a blank folder with one CSV in it
    init = commands[0]
    text_column = init[init.index("--text-column") + 1]
    label_column = init[init.index("--label-column") + 1]
    with open(init[2], "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", text_column, label_column])
        writer.writerows((i, text, label) for i, (text, label) in enumerate(make_texts(300)))

    assert main([*init[1:], "--model", str(tiny_bert)]) == 0  # the tiny model instead of MiniLM
    printed = capsys.readouterr().out
    for line in _block(section, "text"):
        assert line in printed
    assert f"  peftkit {' '.join(commands[1][1:])}\n" in printed  # it names the next command

    assert main([*commands[1][1:], "--no-progress"]) == 0
    run = tmp_path / "runs" / "reviews"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9 and metrics["best"]["kept"]
    assert capsys.readouterr().out.splitlines()[-4] == "run folder: runs/reviews"

    assert main(commands[2][1:]) == 0
    label, probability, text = capsys.readouterr().out.strip().split("\t")
    assert label == "pos" and float(probability) > 0.5 and text == commands[2][-1]
