"""The recipes shipped with peftkit (`recipes/*.yaml`): list them, find one by name, copy one to edit.

`peftkit cp NAME DEST` copies a shipped recipe, as `tune cp` does in torchtune: the copy is a plain file the
user owns. With `--card`, the data card it trains on is copied beside it and the copy's `data.card` points at it
(recipe paths are read from the recipe's folder, so the pair can move together).
"""

from __future__ import annotations

import re
from pathlib import Path

from peftkit.errors import PeftkitError, did_you_mean

# recipe/shipped.py sits at <root>/src/peftkit/recipe/, so parents[3] is the project root of a source checkout.
SHIPPED_DIR = Path(__file__).resolve().parents[3] / "recipes"
_CARD_LINE = re.compile(r"^([ \t]+card:[ \t]*)(\S.*?)([ \t]*(?:#.*)?)$", re.MULTILINE)


def list_recipes(extra_dirs=()) -> list[Path]:
    """Recipes in `extra_dirs` and the shipped folder, sorted by name; an earlier folder wins a name clash."""
    found: dict[str, Path] = {}
    for folder in [*map(Path, extra_dirs), SHIPPED_DIR]:
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            found.setdefault(path.stem, path.resolve())
    return [found[name] for name in sorted(found)]


def find_shipped(name: str) -> Path:
    """A shipped recipe by name (`minilm-lora-rotten_tomatoes`, with or without `.yaml`)."""
    stem = Path(name).name.removesuffix(".yaml")
    recipes = {p.stem: p for p in list_recipes()}
    if stem in recipes:
        return recipes[stem]
    raise PeftkitError(
        f"cp: no shipped recipe named '{name}'.{did_you_mean(stem, recipes)} `peftkit ls` lists them: "
        f"{', '.join(recipes) or 'none found (this install has no recipes/ folder)'}."
    )


def copy_recipe(
    name: str, dest: str | Path, *, with_card: bool = False, overwrite: bool = False
) -> list[Path]:
    """Copy shipped recipe `name` to `dest` (a file, or a folder to copy into); with `with_card`, its data card
    too, into the same folder, with the copied recipe's `data.card` pointing at it. Returns the files written."""
    from peftkit.data.cards import find_card
    from peftkit.fileio import atomic_write_text
    from peftkit.recipe.load import load_recipe

    source = find_shipped(name)
    dest = Path(dest)
    target = dest / source.name if dest.is_dir() or str(dest).endswith(("/", "\\")) else dest
    if target.suffix not in (".yaml", ".yml"):
        raise PeftkitError(
            f"cp: '{dest}' is neither a folder nor a .yaml file name. Give a folder to copy into, or a file "
            f"name ending in .yaml."
        )
    text = source.read_text(encoding="utf-8")
    written = [target]
    card_target = None
    if with_card:
        card_path = find_card(load_recipe(source).data.card)
        card_target = target.parent / card_path.name
        written.append(card_target)
        text = _point_at_card(text, card_target.name, source)
    taken = [str(p) for p in written if p.exists()]
    if taken and not overwrite:
        raise PeftkitError(
            f"cp: {' and '.join(taken)} already exist(s). Pass --overwrite to replace, or choose DEST."
        )
    if card_target is not None:
        atomic_write_text(card_target, card_path.read_text(encoding="utf-8"))
    atomic_write_text(target, text)
    return written


def _point_at_card(text: str, card_file: str, source: Path) -> str:
    """The recipe text with its `data.card:` value replaced by `card_file` (comments and layout kept)."""
    new, count = _CARD_LINE.subn(lambda m: f"{m.group(1)}{card_file}{m.group(3)}", text, count=1)
    if count != 1:
        raise PeftkitError(f"cp --card: no `card:` line found in {source}; copy the card by hand.")
    return new
