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


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation)
    return text.replace("typing.", "").replace("peftkit.recipe.schema.", "").replace("NoneType", "None")


def recipe_reference_markdown() -> str:
    """The recipe reference as Markdown tables (one per section), generated from the schema's docstrings."""
    from pydantic import BaseModel

    lines = []
    for section, field in Recipe.model_fields.items():
        spec = field.annotation
        spec = next(
            (a for a in getattr(spec, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)),
            spec,
        )
        if not (isinstance(spec, type) and issubclass(spec, BaseModel)):
            lines += [
                f"**`{section}`** ({_type_name(field.annotation)}, default `{field.default!r}`): "
                f"{field.description or ''}",
                "",
            ]
            continue
        lines += [
            f"**`{section}`** — {(field.description or spec.__doc__ or '').strip()}",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        lines += _rows(section, spec)
        lines.append("")
    return "\n".join(lines)


def _rows(prefix: str, spec) -> list[str]:
    """Table rows for the fields of section `spec`, and for those of a section nested in it
    (`train.early_stopping.patience`)."""
    rows = []
    for name, sub in spec.model_fields.items():
        default = "required" if sub.is_required() else f"`{sub.default!r}`"
        desc = " ".join((sub.description or "").split()).replace("|", "\\|")
        rows.append(
            f"| `{prefix}.{name}` | {_type_name(sub.annotation).replace('|', '∣')} | {default} | {desc} |"
        )
        nested = _section_model(sub.annotation)
        if nested is not None:
            rows += _rows(f"{prefix}.{name}", nested)
    return rows


def _section_model(annotation):
    """The pydantic model inside `annotation` (`X` or `X | None`), or None."""
    from pydantic import BaseModel

    options = (annotation, *getattr(annotation, "__args__", ()))
    return next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
