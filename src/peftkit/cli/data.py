"""Data cards, shipped recipes and the recipe schema: `init`, `data check|show`, `ls`, `cp`, `schema`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from peftkit.errors import PeftkitError


def register(sub) -> None:
    """Add this group's subcommands to the `peftkit` parser."""
    i = sub.add_parser(
        "init", help="write a data card and a recipe for your own labelled CSV / JSONL / Parquet file"
    )
    i.add_argument("data_file", metavar="DATA_FILE", help="the labelled data: .csv, .jsonl or .parquet")
    i.add_argument("--text-column", required=True, metavar="C", help="the column that holds the texts")
    i.add_argument("--label-column", required=True, metavar="C", help="the column that holds the labels")
    i.add_argument(
        "--model", default=None, metavar="SOURCE", help="base model (a model.source; default: MiniLM-L6)"
    )
    i.add_argument("--method", default="lora", metavar="NAME", help="PEFT method (default: lora)")
    i.add_argument("--out", default=".", metavar="DIR", help="folder for the card and recipe (default: .)")
    i.add_argument("--name", metavar="NAME", help="card and recipe name (default: from DATA_FILE)")
    i.add_argument("--overwrite", action="store_true", help="replace a card or recipe of the same name")
    i.set_defaults(handler=cmd_init)

    d = sub.add_parser("data", help="check a data card against its data, or describe the data")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    dc = dsub.add_parser(
        "check", help="verify source, checksum, counts, labels and columns; exit 1 on mismatch"
    )
    dc.add_argument("cards", nargs="*", metavar="CARD", help="card names or .md paths (default: every card)")
    ds = dsub.add_parser("show", help="sizes, label distribution, text-length percentiles")
    ds.add_argument("card", metavar="CARD", help="a card name (in data_cards/) or a .md path")
    ds.add_argument("--model", metavar="SOURCE", help="also give lengths in tokens of this model's tokenizer")
    ds.add_argument("--json", action="store_true", help="print as JSON")
    d.set_defaults(handler=cmd_data)

    ls = sub.add_parser("ls", help="list shipped recipes and data cards")
    ls.set_defaults(handler=cmd_ls)

    cp = sub.add_parser("cp", help="copy a shipped recipe (and with --card its data card) to edit")
    cp.add_argument("name", metavar="NAME", help="a shipped recipe's name (see `peftkit ls`)")
    cp.add_argument("dest", metavar="DEST", help="a .yaml file name, or a folder to copy into")
    cp.add_argument("--card", action="store_true", help="copy its data card too, and point the copy at it")
    cp.add_argument("--overwrite", action="store_true", help="replace existing files")
    cp.set_defaults(handler=cmd_cp)

    sc = sub.add_parser("schema", help="print the recipe JSON Schema (or the Markdown reference)")
    sc.add_argument("--markdown", action="store_true", help="the recipe reference as Markdown tables")
    sc.set_defaults(handler=cmd_schema)


def cmd_data(args) -> int:
    from peftkit.data import report

    if args.data_command == "show":
        info = report.describe_card(args.card, model=args.model)
        print(json.dumps(info, indent=2) if args.json else report.format_description(info))
        return 0
    from peftkit.data.cards import list_cards

    failed, broken = 0, 0
    for name in args.cards or [str(p) for p in list_cards()]:
        try:
            card, problems = report.verify_card(name)
        except PeftkitError as exc:  # a card that does not parse: say so, and still check the others
            broken += 1
            print(f"peftkit: error: {exc}", file=sys.stderr)
            continue
        if problems:
            failed += 1
            print(f"{card.path}: {len(problems)} problem(s)")
            for line in problems:
                print(f"  - {line}")
        else:
            assert card.counts is not None  # check_card reports a card without counts as a problem
            print(
                f"{card.path}: OK ({sum(card.counts.values()):,} examples, {card.checksum or 'no checksum'})"
            )
    # 2: a card could not be read at all (like any bad input); 1: cards that read but disagree with their data.
    return 2 if broken else 1 if failed else 0


def cmd_init(args) -> int:
    from peftkit.data import init

    name = args.name or init.card_name(args.data_file)
    out = Path(args.out)
    init.check_free(out / f"{name}.md", out / f"{name}.yaml", overwrite=args.overwrite)
    draft = init.draft_card(
        args.data_file, text_column=args.text_column, label_column=args.label_column, name=name
    )
    out.mkdir(parents=True, exist_ok=True)
    model, method = args.model or init.DEFAULT_MODEL, args.method
    card_path, recipe_path = init.write_project(
        draft, out, model=model, method=method, overwrite=args.overwrite
    )
    try:
        _validate(recipe_path)
    except PeftkitError as exc:  # leave nothing behind that does not validate
        card_path.unlink(missing_ok=True)
        recipe_path.unlink(missing_ok=True)
        raise PeftkitError(f"init: the recipe made for {args.data_file} does not validate: {exc}") from None
    counts = ", ".join(f"{k} {v:,}" for k, v in draft.counts.items())
    print(f"data card: {card_path} ({counts}; labels in id order: {', '.join(draft.labels)})")
    for note in draft.notes:
        print(f"  note: {note}")
    print(f"recipe:    {recipe_path} ({method} on {model}; validated)")
    print("Fill in the card's prose (where the data comes from, its license, its limits), then train:")
    print(f"  peftkit train {recipe_path}")
    return 0


def _validate(recipe_path: Path) -> None:
    from peftkit.quiet import quiet_libraries
    from peftkit.recipe import load_recipe
    from peftkit.training.preflight import validate_recipe

    # What the validation proves is remembered (`training.preflight_memo`): `peftkit validate` is then quick.
    with quiet_libraries(transformers=False):
        validate_recipe(load_recipe(recipe_path, check_method=False), recipe_file=str(recipe_path))


def cmd_cp(args) -> int:
    from peftkit.recipe.shipped import copy_recipe

    written = copy_recipe(args.name, args.dest, with_card=args.card, overwrite=args.overwrite)
    for path in written:
        print(f"wrote {path}")
    print(f"Edit it, then: peftkit validate {written[0]} && peftkit train {written[0]}")
    return 0


def cmd_ls(args) -> int:
    from peftkit.data.cards import list_cards
    from peftkit.recipe.shipped import list_recipes

    recipes = list_recipes([Path("recipes")])
    print("recipes:")
    for p in recipes:
        first = next((line[1:].strip() for line in p.read_text().splitlines() if line.startswith("#")), "")
        print(f"  {p.stem:40s} {first}")
    print("data cards:")
    for p in list_cards():
        print(f"  {p.stem}")
    return 0


def cmd_schema(args) -> int:
    from peftkit.recipe.jsonschema import recipe_json_schema, recipe_reference_markdown

    print(recipe_reference_markdown() if args.markdown else json.dumps(recipe_json_schema(), indent=2))
    return 0
