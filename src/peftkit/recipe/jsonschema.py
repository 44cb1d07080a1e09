"""The recipe's JSON Schema, for editors (YAML language servers) and the docs.

Each field's help text is the docstring written under it in `peftkit.recipe.schema`, so the schema, the
CLI and the docs never disagree.
"""

from __future__ import annotations

from peftkit.recipe.schema import Recipe


def recipe_json_schema() -> dict:
    """The JSON Schema of `Recipe`, with each field's docstring as its `description`."""
    schema = Recipe.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
