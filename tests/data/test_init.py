"""`peftkit init`: a card and a recipe for a user's own file that check, validate and train as written, labels in
a stable order, and one-paragraph errors for files it cannot use."""

from __future__ import annotations

import json
import os
import random

import pandas as pd
import pytest
import yaml

from peftkit.cli import main
from peftkit.data.cards import load_card
from peftkit.data.report import verify_card
from peftkit.recipe import load_recipe
from tests.helpers import make_texts


def _frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rows = make_texts(n, seed=seed)
    return pd.DataFrame(
        {"id": range(n), "review": [t for t, _ in rows], "sentiment": [lab for _, lab in rows]}
    )


def _init(tmp_path, data_file, *extra, model=None) -> int:
    argv = [
        "init",
        str(data_file),
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--out",
        str(tmp_path),
    ]
    return main([*argv, *(["--model", str(model)] if model else []), *extra])


def test_init_writes_a_card_that_checks_and_a_recipe_that_validates(tmp_path, tiny_bert, capsys, monkeypatch):
    data = tmp_path / "data" / "My Reviews.csv"
    data.parent.mkdir()
    _frame().to_csv(data, index=False)
    out = tmp_path / "project"
    monkeypatch.chdir(tmp_path)
    assert (
        _init(out, data, model=os.path.relpath(tiny_bert)) == 0
    )  # a model path given from the current folder
    printed = capsys.readouterr().out
    card_path, recipe_path = out / "my_reviews.md", out / "my_reviews.yaml"
    assert f"  peftkit train {recipe_path}\n" in printed
    assert "labels in id order: neg, pos" in printed

    card, problems = verify_card(card_path)
    assert problems == []  # counts, checksum, size category and the HF keys are all right as written
    assert card.labels == ["neg", "pos"] and card.text_column == "review"
    assert card.source.file == "../data/My Reviews.csv"  # relative to the card
    assert sum(card.counts.values()) == 120
    assert "## Where it comes from" in card.prose and "## Known limits" in card.prose

    recipe = load_recipe(recipe_path)
    assert recipe.data.card == str(card_path)  # `data.card: my_reviews.md`, read from the recipe's folder
    # ... is written relative to the recipe's folder, where the recipe reads it from
    assert yaml.safe_load(recipe_path.read_text())["model"]["source"] == os.path.relpath(tiny_bert, out)
    assert recipe.model.source == str(tiny_bert)
    assert recipe.train.keep_best and recipe.train.early_stopping.patience == 3
    assert recipe.train.output_dir == "runs/my_reviews"
    assert recipe.data.max_length == 64  # the tiny model's position limit, below the usual 128


def test_labels_are_proposed_in_a_stable_order(tmp_path):
    rows = [(f"text {i}", str(label)) for i, label in enumerate([10, 2, 1] * 20)]
    ids = []
    for seed in (0, 1):
        shuffled = random.Random(seed).sample(rows, len(rows))
        data = tmp_path / f"d{seed}.jsonl"
        data.write_text(
            "".join(json.dumps({"review": t, "sentiment": int(lab)}) + "\n" for t, lab in shuffled)
        )
        assert _init(tmp_path, data, "--name", f"d{seed}") == 0
        card = load_card(tmp_path / f"d{seed}.md")
        ids.append(card.labels)
    assert ids == [["1", "2", "10"], ["1", "2", "10"]]  # numbers in numeric order, whatever the row order


def test_parquet_with_missing_labels_and_a_rare_label(tmp_path, capsys):
    frame = _frame(60)
    frame.loc[[3, 7], "sentiment"] = None
    frame.loc[11, "sentiment"] = "mixed"
    frame.to_parquet(tmp_path / "r.parquet")
    assert _init(tmp_path, tmp_path / "r.parquet") == 0
    printed = capsys.readouterr().out
    card = load_card(tmp_path / "r.md")
    assert card.labels == ["mixed", "neg", "pos"] and card.exclude_labels == [""]
    assert not card.split.stratify
    assert "label(s) 'mixed' have fewer than 3 examples: the split is not stratified" in printed
    assert "rows without a label are left out" in printed
    assert verify_card(tmp_path / "r.md")[1] == []


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["--text-column", "reviw", "--label-column", "sentiment"],
            [
                "init: --text-column 'reviw' is not a column of r.csv (columns found: id, review, sentiment).",
                "Did you mean 'review'?",
            ],
        ),
        (
            ["--text-column", "review", "--label-column", "sentimnet"],
            ["--label-column 'sentimnet' is not a column", "Did you mean 'sentiment'?"],
        ),
        (
            ["--text-column", "review", "--label-column", "id"],
            ["--label-column 'id' of r.csv has 120 different values in 120 rows", "not labels"],
        ),
        (
            ["--text-column", "sentiment", "--label-column", "sentiment"],
            ["--text-column and --label-column are both 'sentiment'"],
        ),
    ],
)
def test_bad_columns(tmp_path, capsys, args, words):
    _frame().to_csv(tmp_path / "r.csv", index=False)
    assert main(["init", str(tmp_path / "r.csv"), "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "r.yaml").exists()


def test_bad_files(tmp_path, capsys):
    assert _init(tmp_path, tmp_path / "missing.csv") == 2
    assert "init: data file" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("a,b\n")
    assert _init(tmp_path, tmp_path / "notes.txt") == 2
    assert "cannot tell the format of 'notes.txt'" in capsys.readouterr().err
    (tmp_path / "broken.jsonl").write_text('{"review": "a", "sentiment": "pos"}\n{not json\n')
    assert _init(tmp_path, tmp_path / "broken.jsonl") == 2
    assert "init: could not read" in capsys.readouterr().err
    pd.DataFrame({"review": ["a", "b", "c"], "sentiment": ["pos"] * 3}).to_csv(
        tmp_path / "one.csv", index=False
    )
    assert _init(tmp_path, tmp_path / "one.csv") == 2
    assert "has only 'pos': a classifier needs at least two labels" in capsys.readouterr().err


def test_existing_files_are_not_replaced_without_overwrite(tmp_path, capsys):
    _frame().to_csv(tmp_path / "r.csv", index=False)
    (tmp_path / "r.md").write_text("my edited card\n")
    assert _init(tmp_path, tmp_path / "r.csv") == 2
    assert "r.md already exists. Pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "r.md").read_text() == "my edited card\n"
    assert _init(tmp_path, tmp_path / "r.csv", "--overwrite") == 0
    assert load_card(tmp_path / "r.md").labels == ["neg", "pos"]


def test_a_recipe_that_does_not_validate_leaves_nothing(tmp_path, capsys):
    _frame().to_csv(tmp_path / "r.csv", index=False)
    assert _init(tmp_path, tmp_path / "r.csv", "--method", "loha_typo") == 2
    assert "init: the recipe made for" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
