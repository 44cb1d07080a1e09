"""The docs cannot drift from the code: the recipe reference is the one the schema generates, and the README names
every command and the two set-up commands."""

from __future__ import annotations

from pathlib import Path

from peftkit.recipe.jsonschema import recipe_reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "recipe-reference.md"


def test_recipe_reference_is_current():
    text = REFERENCE.read_text()
    start = text.index("<!-- recipe-reference:start -->\n") + len("<!-- recipe-reference:start -->\n")
    end = text.index("<!-- recipe-reference:end -->")
    assert text[start:end] == recipe_reference_markdown(), (
        "run `peftkit schema --markdown` and paste it into docs/recipe-reference.md"
    )


def test_readme_commands_exist():
    from peftkit.cli import commands

    text = README.read_text()
    for name in commands():
        assert f"peftkit {name}" in text, name
    assert (
        "bash scripts/install.sh && .venv/bin/peftkit train recipes/minilm-lora-rotten_tomatoes.yaml" in text
    )
    assert "bash scripts/install.sh --dev && .venv/bin/python -m pytest" in text


def test_links_in_the_docs_name_files_that_exist():
    import re

    for doc in [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"
