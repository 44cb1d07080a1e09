"""Every bad input: a one-paragraph error with the right words, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import pytest

from peftkit.cli import main
from tests.helpers import make_texts, write_card, write_recipe


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.fixture
def setup(tmp_path, tiny_bert, tiny_card):
    out = tmp_path / "run"

    def recipe(text: str | None = None, **kw):
        path = tmp_path / "r.yaml"
        if text is not None:
            path.write_text(text)
            return path
        kw.setdefault("model", tiny_bert)
        kw.setdefault("card", tiny_card)
        return write_recipe(path, out=out, **kw)

    return recipe, out


CASES = [
    # (name, recipe kwargs or raw text, extra argv, words the message must contain)
    (
        "unknown key",
        {"train": {"learnig_rate": 0.1}},
        [],
        ["unknown key 'train.learnig_rate'", "Did you mean 'learning_rate'"],
    ),
    ("misspelled method", {"method": {"name": "lroa"}}, [], ["unknown method 'lroa'", "Did you mean 'lora'"]),
    ("wrong type", {"train": {"batch_size": "sixteen"}}, [], ["train.batch_size", "integer", "sixteen"]),
    (
        "negative learning rate",
        {},
        ["train.learning_rate=-0.001"],
        ["train.learning_rate must be > 0", "-0.001"],
    ),
    ("method setting type", {"method": {"name": "lora", "r": "big"}}, [], ["method.r", "big"]),
    ("yaml syntax", "model:\n  source: [unclosed\n", [], ["r.yaml:", "invalid YAML"]),
    ("model source not found", {"model": "./no/such/model"}, [], ["no such file or folder", "no/such/model"]),
    ("hub id offline", {"model": "someorg/somemodel"}, [], ["offline", "local folder"]),
    ("data card missing", {"card": "no_such_card"}, [], ["no_such_card", "data card"]),
    ("max length", {"data": {"max_length": 4096}}, [], ["data.max_length", "4096", "limit of 64"]),
]


@pytest.mark.parametrize("name,spec,extra,words", CASES, ids=[c[0] for c in CASES])
def test_bad_recipe(setup, capsys, name, spec, extra, words):
    make, out = setup
    path = make(spec) if isinstance(spec, str) else make(**spec)
    code, err = _run(["train", str(path), "--no-progress", *extra], capsys)
    assert code == 2
    assert err.startswith("peftkit: error: ") and "Traceback" not in err
    for w in words:
        assert w.lower() in err.lower(), (w, err)
    assert not out.exists(), "a refused recipe must not write anything"


def test_missing_recipe_file(tmp_path, capsys):
    code, err = _run(["train", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "not found" in err and "nope.yaml" in err


@pytest.mark.parametrize("case", ["label column", "unlisted labels", "empty"])
def test_bad_data(setup, tmp_path, capsys, case):
    make, out = setup
    rows = make_texts(40)
    if case == "label column":
        card = write_card(tmp_path / "d", rows)
        card.write_text(card.read_text().replace("label_column: label", "label_column: sentiment"))
        words = ["sentiment", "label"]
    elif case == "unlisted labels":
        card = write_card(tmp_path / "d", rows + [("so so", "meh")] * 3)
        words = ["meh", "labels"]
    else:
        card = write_card(tmp_path / "d", [])
        words = ["empty"]
    code, err = _run(["train", str(make(card=card)), "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_existing_output_folder(setup, capsys):
    make, out = setup
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, err = _run(["train", str(make()), "--no-progress"], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err and "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_bad_cli_argument(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "r.yaml", "--frobnicate"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --frobnicate" in capsys.readouterr().err


def test_predict_on_missing_adapter(tmp_path, capsys):
    code, err = _run(["predict", str(tmp_path / "none"), "text"], capsys)
    assert code == 2 and "no such folder" in err
