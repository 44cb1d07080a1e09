"""Publish refuses any absolute path of this machine, in any field of any file it writes, and lists the fields."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peftkit.adapters.path_leaks import find_absolute_paths
from peftkit.cli import main
from tests.faults.helpers import one_paragraph

PATHS = [
    "/srv/corpora/reviews.csv",
    "/opt/x",
    "~/data/train.csv",
    "C:\\Users\\ann\\data.csv",
    "file:///mnt/d/x",
]
NOT_PATHS = [
    "https://huggingface.co/org/name/blob/main/README.md",
    "s3://bucket/key/file",
    "../plots/loss.png",
    "plots/loss.png",
    "org/name",
    "positive/negative and 1/2",
    "<br/> </a>",
]


@pytest.mark.parametrize("text", PATHS)
def test_absolute_paths_are_found_by_field(tmp_path, text):
    (tmp_path / "recipe.resolved.yaml").write_text(json.dumps({"data": {"notes": [f"from {text}"]}}))
    (tmp_path / "meta.json").write_text(json.dumps({"source": text}))
    (tmp_path / "README.md").write_text(
        f"---\ndescription: {json.dumps(text)}\n---\n# Card\n\nTrained on {text}.\n"
    )
    shown = text[:80]
    assert find_absolute_paths(tmp_path) == [
        f"README.md: front matter description: {shown}",
        f"README.md: line 6: {shown}",
        f"meta.json: source: {shown}",
        f"recipe.resolved.yaml: data.notes[0]: {shown}",
    ]


def test_urls_and_relative_paths_are_not_paths(tmp_path):
    (tmp_path / "README.md").write_text("\n".join(NOT_PATHS) + "\n")
    (tmp_path / "x.json").write_text(json.dumps(NOT_PATHS))
    assert find_absolute_paths(tmp_path) == []


@pytest.fixture
def run_copy(reference_run, tmp_path):
    return shutil.copytree(reference_run, tmp_path / "run")


def test_publish_lists_every_field_with_a_path(run_copy, tmp_path, tiny_card, capsys):
    recipe = run_copy / "recipe.resolved.yaml"
    recipe.write_text("description: reviews from /srv/corpora/reviews.csv\n" + recipe.read_text())
    card = Path(shutil.copy(tiny_card, tmp_path / "card.md"))
    shutil.copy(tiny_card.with_name("tiny.csv"), tmp_path / "tiny.csv")
    card.write_text(
        card.read_text().replace("Synthetic sentences", "Copied from ~/scratch/reviews; synthetic")
    )
    meta = json.loads((run_copy / "adapter" / "peftkit_adapter.json").read_text())
    meta["data_card"] = str(card)
    (run_copy / "adapter" / "peftkit_adapter.json").write_text(json.dumps(meta))
    code = main(["publish", str(run_copy), "--to", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    message = one_paragraph(err)
    assert "published files would contain absolute paths of this machine" in message
    assert "recipe.resolved.yaml: description: /srv/corpora/reviews.csv" in message
    assert (
        "README.md: line " in message and "data_card.md: line " in message and "~/scratch/reviews" in message
    )
    assert "Nothing was written" in message
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_publish_with_urls_in_the_recipe_succeeds(run_copy, tmp_path, capsys):
    recipe = run_copy / "recipe.resolved.yaml"
    recipe.write_text("description: see https://example.org/a/b and ../notes\n" + recipe.read_text())
    code = main(["publish", str(run_copy), "--to", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert "https://example.org/a/b" in (tmp_path / "out" / "recipe.resolved.yaml").read_text()
