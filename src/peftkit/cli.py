"""`peftkit` command line: thin subcommands over the library. Heavy imports happen inside each command,
so `peftkit --help` answers without importing torch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peftkit.errors import PeftkitError


def project_root() -> Path:
    """The checkout that holds recipes/ and data_cards/ (src layout: three levels above this file)."""
    return Path(__file__).resolve().parents[2]


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="peftkit", description="Parameter-efficient adaptation of BERT- and GPT-style "
                                "models: recipe → small adapter → eval / predict.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a recipe into a run folder")
    t.add_argument("recipe", help="recipe YAML file")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe fields, e.g. train.epochs=2")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    v = sub.add_parser("validate", help="check a recipe, its data card and model source without loading a model")
    v.add_argument("recipe")
    v.add_argument("overrides", nargs="*", metavar="key=value")

    e = sub.add_parser("eval", help="evaluate a run or adapter on a data card's split or a CSV/JSONL file")
    e.add_argument("adapter", help="run folder or adapter folder")
    e.add_argument("--data", help="data card name/path, or a .csv/.jsonl file with text and label columns")
    e.add_argument("--split", default="test", help="split of the data card (default: test)")
    e.add_argument("--json", action="store_true", help="print metrics as JSON")

    pr = sub.add_parser("predict", help="labels and probabilities for texts")
    pr.add_argument("adapter", help="run folder or adapter folder")
    pr.add_argument("texts", nargs="*", help="texts to classify")
    pr.add_argument("--file", help="a text file (one text per line) or JSONL with a 'text' field")
    pr.add_argument("--json", action="store_true", help="one JSON object per line")

    sub.add_parser("ls", help="list shipped recipes and data cards")

    b = sub.add_parser("bench", help="compare methods (and the plain Trainer pipeline) on one recipe: bench.md/json")
    b.add_argument("recipe", help="recipe YAML file (its method's settings are used for that method)")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe fields, e.g. train.epochs=1")
    b.add_argument("--methods", default="lora,dora,ia3,prefix_tuning,houlsby,full",
                   help="comma-separated methods; `full` is full fine-tuning (default: %(default)s)")
    b.add_argument("--budget", type=int, help="training examples per row (default: the recipe's)")
    b.add_argument("--peer", action="store_true", help="add transformers Trainer + peft rows (pad-to-128, dynamic)")
    b.add_argument("--output", help="folder for bench.md and bench.json (default: bench/<recipe name>)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. User errors print one paragraph, no traceback, exit 2."""
    parser = _build_parser()
    # Overrides may come after flags (`train r.yaml --overwrite train.epochs=2`): collect stray key=value words.
    args, extra = parser.parse_known_args(argv)
    stray = [w for w in extra if w.startswith("-") or "=" not in w or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if not args.command:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args) or 0
    except PeftkitError as exc:
        print(f"peftkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("peftkit: interrupted", file=sys.stderr)
        return 130


def _load(recipe: str, overrides: list[str]):
    from peftkit.recipe import load_recipe

    return load_recipe(recipe, overrides)


def cmd_train(args) -> int:
    recipe = _load(args.recipe, args.overrides)
    from peftkit.train import train

    out = train(recipe, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress)
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics.get("test") or metrics.get("validation") or {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
    print(f"run folder: {out}\n{shown}")
    return 0


def cmd_validate(args) -> int:
    recipe = _load(args.recipe, args.overrides)
    from peftkit.validate import validate_recipe

    for line in validate_recipe(recipe):
        print(line)
    print(f"{args.recipe}: OK")
    return 0


def cmd_eval(args) -> int:
    from peftkit.predict import evaluate_adapter

    metrics = evaluate_adapter(args.adapter, data=args.data, split=args.split)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    for key in ("accuracy", "macro_f1", "loss", "perplexity"):
        if key in metrics:
            print(f"{key:>10}: {metrics[key]:.4f}")
    for label, s in metrics.get("per_class", {}).items():
        print(f"{label:>10}: precision {s['precision']:.3f} recall {s['recall']:.3f} f1 {s['f1']:.3f} "
              f"(n={s['support']})")
    return 0


def cmd_predict(args) -> int:
    from peftkit.predict import predict_texts, read_texts

    texts = list(args.texts) + (read_texts(args.file) if args.file else [])
    if not texts:
        raise PeftkitError("predict: no input. Give texts as arguments or --file F (one text per line or JSONL).")
    for text, row in zip(texts, predict_texts(args.adapter, texts), strict=True):
        if args.json:
            print(json.dumps({"text": text, **row}))
        else:
            print(f"{row['label']}\t{row['probabilities'][row['label']]:.3f}\t{text}")
    return 0


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


def cmd_bench(args) -> int:
    from peftkit.bench import run_bench

    if args.budget is not None and args.budget < 1:
        raise PeftkitError(f"--budget: expected a positive number of training examples, found {args.budget}.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = run_bench(args.recipe, methods=methods, budget=args.budget, peer=args.peer, output=args.output,
                    overrides=args.overrides)
    print((out / "bench.md").read_text())
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


COMMANDS = {"bench": cmd_bench, "train": cmd_train, "validate": cmd_validate, "eval": cmd_eval, "predict": cmd_predict, "ls": cmd_ls}
