"""`peftkit cp`: a shipped recipe copied to edit, with its data card when asked; `peftkit ls` lists them."""

from __future__ import annotations

from peftkit.cli import main
from peftkit.data.cards import load_card
from peftkit.recipe import load_recipe
from peftkit.recipe.shipped import SHIPPED_DIR

NAME = "minilm-lora-rotten_tomatoes"


def test_cp_copies_a_shipped_recipe(tmp_path, capsys):
    assert main(["cp", NAME, str(tmp_path)]) == 0
    copy = tmp_path / f"{NAME}.yaml"
    assert copy.read_text() == (SHIPPED_DIR / f"{NAME}.yaml").read_text()
    assert f"peftkit train {copy}" in capsys.readouterr().out
    assert main(["cp", NAME, str(tmp_path / "mine.yaml")]) == 0
    assert load_recipe(tmp_path / "mine.yaml") == load_recipe(copy)


def test_cp_with_card_points_the_copy_at_the_copied_card(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["cp", NAME, "edit/mine.yaml", "--card"]) == 0
    card = tmp_path / "edit" / "rotten_tomatoes.md"
    assert load_card(card).labels == ["rotten", "fresh"]
    text = (tmp_path / "edit" / "mine.yaml").read_text()
    assert "  card: rotten_tomatoes.md\n" in text and "# Quickstart" in text  # comments kept
    assert load_recipe(tmp_path / "edit" / "mine.yaml").data.card == str(card)


def test_cp_refusals(tmp_path, capsys):
    assert main(["cp", "minilm-lroa-rotten_tomatoes", str(tmp_path)]) == 2
    assert (
        f"no shipped recipe named 'minilm-lroa-rotten_tomatoes'. Did you mean '{NAME}'?"
        in capsys.readouterr().err
    )
    assert main(["cp", NAME, str(tmp_path)]) == 0
    assert main(["cp", NAME, str(tmp_path)]) == 2
    assert "already exist(s). Pass --overwrite" in capsys.readouterr().err
    assert main(["cp", NAME, str(tmp_path / "notes.txt")]) == 2
    assert "is neither a folder nor a .yaml file name" in capsys.readouterr().err


def test_ls_lists_shipped_recipes(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert f"  {NAME}" in out and "rotten_tomatoes" in out
