"""Where the paths in a recipe are read from.

A path written in the recipe file is relative to the file's folder: `data.card: my_data.md` next to the recipe,
`model.source: ./models/bert`, `method.init_from`, `distributed.accelerate_config`, and `eval.metrics` entries
that are local `evaluate` modules. A path given as a command-line override (`data.card=x.md`) is relative to the
current folder, as any shell argument is. Both become absolute when the recipe loads, so the resolved recipe that
a run folder keeps means the same from anywhere. Not paths in this sense: card names (`rotten_tomatoes`, looked
up in `data_cards/`), `package:` and hub model ids. `train.output_dir` and `model.cache_dir` stay relative to the
current folder: a run writes where you run it.
"""

from __future__ import annotations

import os
from pathlib import Path

from peftkit.recipe.schema import Recipe


def resolve_recipe_paths(recipe: Recipe, recipe_dir: Path, overridden: set[tuple]) -> None:
    """Make the recipe's local paths absolute in place: from `recipe_dir`, or from the current folder for the
    keys in `overridden` (key paths such as ('data', 'card') set on the command line)."""

    def base(*key: str) -> Path:
        return Path.cwd() if key in overridden or key[:1] in overridden else recipe_dir

    card = recipe.data.card
    if card.endswith(".md") or "/" in card or "\\" in card:
        recipe.data.card = _absolute(card, base("data", "card"))
    recipe.model.source = _model_source(recipe.model.source, base("model", "source"))
    if recipe.method.init_from:
        recipe.method.init_from = _absolute(recipe.method.init_from, base("method", "init_from"))
    if recipe.distributed.accelerate_config:
        where = base("distributed", "accelerate_config")
        recipe.distributed.accelerate_config = _absolute(recipe.distributed.accelerate_config, where)
    where = base("eval", "metrics")
    recipe.eval.metrics = [_absolute(m, where) if (where / m).exists() else m for m in recipe.eval.metrics]


def _absolute(path: str, base: Path) -> str:
    expanded = Path(path).expanduser()
    return expanded.as_posix() if expanded.is_absolute() else os.path.normpath(base.resolve() / expanded)


def _model_source(spec: str, base: Path) -> str:
    """A local folder or .gguf file made absolute; `package:`, `hub:` and hub ids (`org/name`) unchanged."""
    text = spec.strip()
    if text.startswith(("package:", "hub:")):
        return spec
    prefix, path = ("path:", text[5:]) if text.startswith("path:") else ("", text)
    local = prefix or path.startswith((".", "/", "~")) or path.endswith(".gguf") or (base / path).exists()
    return prefix + _absolute(path, base) if local else spec
