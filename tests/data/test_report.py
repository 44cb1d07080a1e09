"""`peftkit data check` / `data show`: every shipped card matches its data, and every kind of mismatch is named."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import yaml

from peftkit.cli import main
from peftkit.data.cards import list_cards
from peftkit.data.report import describe_card, size_category, verify_card

COUNTS = {"train": 70, "validation": 10, "test": 20}
HF = {
    "license": "mit",
    "language": ["en"],
    "task_categories": ["text-classification"],
    "pretty_name": "Tiny",
    "size_categories": ["n<1K"],
}


def data_rows() -> list[dict]:
    out = [{"text": f"pos review number {i}", "sentiment": "pos"} for i in range(60)]
    return out + [{"text": f"neg {i}", "sentiment": "neg"} for i in range(40)]


def write(folder, rows=None, hf=None, prose="# Tiny\n\nSynthetic reviews.\n", **block) -> str:
    """A data file and a card for it; front matter keys in `hf`, peftkit keys as keywords (None drops one)."""
    pd.DataFrame(rows or data_rows()).to_csv(folder / "reviews.csv", index=False)
    peftkit = {
        "task": "classification",
        "source": {"file": "reviews.csv"},
        "text_column": "text",
        "label_column": "sentiment",
        "labels": ["pos", "neg"],
        "counts": COUNTS,
    }
    peftkit.update(block)
    if "checksum" not in block:
        peftkit["checksum"] = "sha256:" + "0" * 64  # replaced below by the real one
    peftkit = {k: v for k, v in peftkit.items() if v is not None}
    front = {k: v for k, v in {**HF, **(hf or {})}.items() if v is not None}
    path = folder / "tiny.md"
    path.write_text(f"---\n{yaml.safe_dump({**front, 'peftkit': peftkit})}---\n{prose}")
    if "checksum" not in block:
        real = "sha256:" + hashlib.sha256((folder / "reviews.csv").read_bytes()).hexdigest()
        path.write_text(path.read_text().replace("sha256:" + "0" * 64, real))
    return str(path)


def check(capsys, card) -> tuple[int, str]:
    code = main(["data", "check", card])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("card", list_cards(), ids=lambda p: p.stem)
def test_every_shipped_card_matches_its_data(card):
    """CI: each card in data_cards/ parses as an HF dataset card and matches its data exactly."""
    from huggingface_hub import DatasetCard

    assert DatasetCard.load(card).data.to_dict()["peftkit"]
    assert verify_card(card)[1] == []


def test_check_ok(tmp_path, capsys):
    code, out = check(capsys, write(tmp_path))
    assert code == 0
    assert out.startswith(f"{tmp_path / 'tiny.md'}: OK (100 examples, sha256:")


def test_check_data_changed(tmp_path, capsys):
    card = write(tmp_path)
    with open(tmp_path / "reviews.csv", "a") as fh:
        fh.write("pos review added later,pos\n")
    code, out = check(capsys, card)
    assert code == 1
    assert "2 problem(s)" in out
    assert "checksum: the card says sha256:" in out and "(the data changed)" in out
    assert "counts.test: the card says 20, the data has 21." in out  # 101 rows: 20 % rounds up


def test_check_changed_data_with_new_label_reports_both(tmp_path, capsys):
    card = write(tmp_path)
    with open(tmp_path / "reviews.csv", "a") as fh:
        fh.write("so-so review,meh\n")
    code, out = check(capsys, card)
    assert code == 1
    assert "(the data changed)" in out
    assert "has labels the card does not list: 'meh' (1 rows)" in out


def test_check_counts_wrong(tmp_path, capsys):
    code, out = check(capsys, write(tmp_path, counts={"train": 70, "validation": 12, "test": 18}))
    assert code == 1
    assert "counts.validation: the card says 12, the data has 10." in out
    assert "counts.test: the card says 18, the data has 20." in out
    assert "counts.train" not in out


def test_check_no_counts_no_checksum_says_what_to_add(tmp_path, capsys):
    code, out = check(capsys, write(tmp_path, counts=None, checksum=None))
    assert code == 1
    assert "add `counts: {train: 70, validation: 10, test: 20}`" in out
    assert "add `checksum: sha256:" in out


def test_check_label_listed_but_absent(tmp_path, capsys):
    code, out = check(capsys, write(tmp_path, labels=["pos", "neg", "mixed"]))
    assert code == 1
    assert "Label 'mixed' is listed in `labels` but has no examples in the data." in out


def test_check_label_in_data_but_not_listed(tmp_path, capsys):
    rows = [*data_rows(), {"text": "unsure", "sentiment": "mixed"}]
    code, out = check(capsys, write(tmp_path, rows=rows))
    assert code == 1
    assert "has labels the card does not list: 'mixed' (1 rows)" in out
    assert "`peftkit.exclude_labels`" in out


def test_check_column_missing(tmp_path, capsys):
    code, out = check(capsys, write(tmp_path, text_column="review"))
    assert code == 1
    assert "`peftkit.text_column` is 'review'" in out and "columns found: text, sentiment" in out


def test_check_source_missing(tmp_path, capsys):
    card = write(tmp_path)
    (tmp_path / "reviews.csv").unlink()
    code, out = check(capsys, card)
    assert code == 1 and "reviews.csv does not exist" in out


@pytest.mark.parametrize("key", ["license", "language", "task_categories", "pretty_name", "size_categories"])
def test_check_missing_hf_field(tmp_path, capsys, key):
    code, out = check(capsys, write(tmp_path, hf={key: None}))
    assert code == 1
    assert f"`{key}` is missing from the front matter (a Hugging Face dataset-card key); add it." in out


def test_check_missing_peftkit_field_is_an_error(tmp_path, capsys):
    code, out = check(capsys, write(tmp_path, text_column=None))
    assert code == 2
    assert "`peftkit.text_column` is missing" in out and "Traceback" not in out


def test_check_no_prose(tmp_path, capsys):
    code, out = check(capsys, write(tmp_path, prose=""))
    assert code == 1 and "the card has no prose" in out


def test_check_wrong_size_category(tmp_path, capsys):
    code, out = check(capsys, write(tmp_path, hf={"size_categories": ["1K<n<10K"]}))
    assert code == 1
    assert (
        "size_categories: the card says ['1K<n<10K'], but the data has 100 examples, so it should be [n<1K]."
        in out
    )


def test_size_category_buckets():
    assert [size_category(n) for n in (0, 999, 1000, 12_808, 100_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "100K<n<1M",
    ]


def test_show_sizes_labels_and_lengths(tmp_path, capsys, tiny_bert):
    rows = [{"text": "good film", "sentiment": "pos"}] * 60 + [
        {"text": "a dull boring plot", "sentiment": "neg"}
    ] * 40
    card = write(tmp_path, rows=rows, checksum=None)
    info = describe_card(card, model=str(tiny_bert))
    assert info["sizes"] == COUNTS and info["total"] == 100
    assert {s: sum(c.values()) for s, c in info["labels"].items()} == COUNTS
    assert sum(c["pos"] for c in info["labels"].values()) == 60
    chars, words, tokens = (info["lengths"][k] for k in ("characters", "words", "tokens"))
    assert (chars["p0"], chars["p100"], chars["mean"]) == (9, 18, pytest.approx(0.6 * 9 + 0.4 * 18, abs=0.05))
    assert (words["p0"], words["p100"]) == (2, 4)
    assert (tokens["p0"], tokens["p100"]) == (4, 6)  # words + [CLS] and [SEP]
    assert main(["data", "show", card]) == 0
    out = capsys.readouterr().out
    assert "tiny (classification): 100 examples" in out
    assert "share" in out and "60.0%" in out and "40.0%" in out
    assert main(["data", "show", card, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sizes"] == COUNTS


def test_check_several_cards_goes_on_after_a_broken_one(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    broken, good = write(tmp_path / "a", text_column=None), write(tmp_path / "b")
    assert main(["data", "check", broken, good]) == 2
    captured = capsys.readouterr()
    assert "`peftkit.text_column` is missing" in captured.err
    assert f"{good}: OK" in captured.out
