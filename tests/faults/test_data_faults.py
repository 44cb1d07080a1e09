"""Bad data and bad arguments with very long lines: the message stays one short paragraph that names the line,
and reading such a file takes seconds (the time is not asserted; the message size is)."""

from __future__ import annotations

import json

import pytest

from peftkit.cli import main
from tests.faults.helpers import one_paragraph

LONG = "w" * 2_000_000


def _card(tmp_path, tiny_card, data_name: str, data: str):
    (tmp_path / data_name).write_text(data)
    card = tmp_path / "long.md"
    card.write_text(tiny_card.read_text().replace("file: tiny.csv", f"file: {data_name}"))
    return card


def _rows(n=40):
    return [("a good film", "pos") if i % 2 else ("a bad film", "neg") for i in range(n)]


@pytest.mark.parametrize("case", ["csv header", "csv label", "jsonl line", "jsonl label"])
def test_long_lines_in_a_data_file(tmp_path, tiny_card, make_recipe, capsys, case):
    rows = _rows()
    if case.startswith("csv"):
        lines = ["text,label", *(f"{t},{lab}" for t, lab in rows)]
        if case == "csv header":
            lines[0] = LONG
            words = ["has no such column", "… (2,000,000 characters)"]
        else:
            lines[11] = f"fine,{LONG}"
            words = ["has labels the card does not list", "(the first on line 12)"]
        card = _card(tmp_path, tiny_card, "long.csv", "\n".join(lines) + "\n")
    else:
        lines = [json.dumps({"text": t, "label": lab}) for t, lab in rows]
        if case == "jsonl line":
            lines[10] = '{"text": "' + LONG
            words = ["could not read", "(line 11: not valid JSON: Unterminated string", "fix or remove it"]
        else:
            lines[10] = json.dumps({"text": "fine", "label": LONG})
            words = ["has labels the card does not list", "(the first on line 11)"]
        card = _card(tmp_path, tiny_card, "long.jsonl", "\n".join(lines) + "\n")
    path = make_recipe(tmp_path / "run")
    path.write_text(path.read_text().replace(str(tiny_card), str(card)))
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    message = one_paragraph(err)
    assert len(message) < 700, len(message)
    for w in words:
        assert w in message, (w, message)


@pytest.mark.parametrize(
    "override, words",
    [(f"train.{LONG}=1", "unknown key 'train.www"), (f"train.batch_size={LONG}", "train.batch_size expects")],
    ids=["long key", "long value"],
)
def test_long_overrides(make_recipe, tmp_path, capsys, override, words):
    code = main(["validate", str(make_recipe(tmp_path / "run")), override])
    err = capsys.readouterr().err
    assert code == 2
    message = one_paragraph(err)
    assert words in message and len(message) < 1000, message[:300]
