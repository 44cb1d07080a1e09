"""Data cards, shipped recipes and the recipe schema: `data check|show`, `ls`, `schema`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from peftkit.cli import project_root
from peftkit.errors import PeftkitError


def register(sub) -> None:
    """Add this group's subcommands to the `peftkit` parser."""
    d = sub.add_parser("data", help="check a data card against its data, or describe the data")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    dc = dsub.add_parser(
        "check", help="verify source, checksum, counts, labels and columns; exit 1 on mismatch"
    )
    dc.add_argument("cards", nargs="*", metavar="CARD", help="card names or .md paths (default: every card)")
    ds = dsub.add_parser("show", help="sizes, label distribution, text-length percentiles")
    ds.add_argument("card", metavar="CARD")
    ds.add_argument("--model", metavar="SOURCE", help="also give lengths in tokens of this model's tokenizer")
    ds.add_argument("--json", action="store_true", help="print as JSON")
    d.set_defaults(handler=cmd_data)

    ls = sub.add_parser("ls", help="list shipped recipes and data cards")
    ls.set_defaults(handler=cmd_ls)

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
            print(
                f"{card.path}: OK ({sum(card.counts.values()):,} examples, {card.checksum or 'no checksum'})"
            )
    # 2: a card could not be read at all (like any bad input); 1: cards that read but disagree with their data.
    return 2 if broken else 1 if failed else 0


def cmd_ls(args) -> int:
    from peftkit.data.cards import list_cards

    root = project_root()
    recipe_dirs = [Path("recipes"), root / "recipes"]
    recipes = sorted({p.resolve() for d in recipe_dirs if d.is_dir() for p in d.glob("*.yaml")})
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
