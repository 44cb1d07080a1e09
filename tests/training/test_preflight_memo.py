"""`peftkit validate` remembers the slow checks that passed: a second run on the same files and versions skips
them (and says so), a change to what a check reads runs it again, a failure is never remembered."""

from __future__ import annotations

import sys

import pytest

from peftkit.cli import main
from tests.helpers import make_texts, write_card, write_recipe

EARLIER = "(as checked before: nothing it depends on changed)"


@pytest.fixture
def memo(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "preflight"


def _validate(recipe, capsys, *extra) -> tuple[int, str, str]:
    code = main(["validate", str(recipe), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_second_validate_skips_what_passed(tmp_path, tiny_bert, memo, capsys, monkeypatch):
    card = write_card(tmp_path / "data", make_texts(100))
    recipe = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=card, out=tmp_path / "run")
    code, out, _ = _validate(recipe, capsys)
    assert code == 0 and EARLIER not in out
    assert len(list(memo.glob("*.json"))) == 2  # the data group and the model group

    # Nothing changed: neither group runs again; the heavy libraries are not even imported.
    for name in ("torch", "peft", "sklearn"):
        monkeypatch.setitem(sys.modules, name, None)  # importing them now would fail
    code, out, _ = _validate(recipe, capsys)
    assert code == 0
    assert f"train 60, validation 20, test 20 {EARLIER}" in out and f"method: lora {EARLIER}" in out
    monkeypatch.undo()
    monkeypatch.setenv("PEFTKIT_CACHE", str(memo.parent))

    # --recheck runs everything again.
    code, out, _ = _validate(recipe, capsys, "--recheck")
    assert code == 0 and EARLIER not in out

    # A method setting changed: the model group runs again, the data group is still known.
    code, out, _ = _validate(recipe, capsys, "method.r=4")
    assert code == 0 and f"train 60, validation 20, test 20 {EARLIER}" in out and "method: lora\n" in out


def test_failures_are_not_remembered_and_changed_data_is_caught(tmp_path, tiny_bert, memo, capsys):
    card = write_card(
        tmp_path / "data", make_texts(100), extra="  counts: {train: 60, validation: 20, test: 20}\n"
    )
    recipe = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=card, out=tmp_path / "run")
    for _ in range(2):  # the same failure, explained both times
        code, _, err = _validate(recipe, capsys, "method.target_modules=[querry]")
        assert code == 2 and "'querry' matches no module" in err and "Did you mean 'query'?" in err
    assert _validate(recipe, capsys)[0] == 0
    with open(tmp_path / "data" / "tiny.csv", "a") as fh:  # more rows: other counts
        fh.write("a good film,pos\nthe awful plot,neg\n")
    code, _, err = _validate(recipe, capsys)
    assert code == 2
    assert "has no checksum yet, and its counts (validation 20, test 20) are not what the data gives" in err
