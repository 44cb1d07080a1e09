"""`peftkit` command line: thin subcommands over the library. Heavy imports happen inside each command,
so `peftkit --help` answers without importing torch."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from peftkit.errors import PeftkitError


def project_root() -> Path:
    """The checkout that holds recipes/ and data_cards/ (src layout: three levels above this file)."""
    return Path(__file__).resolve().parents[2]


def _seed_list(text: str) -> list[int]:
    """`--seeds 42,7,1` → [42, 7, 1]."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a comma-separated list of integers, e.g. 42,7,1"
        ) from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"'{text}' repeats a seed; each seed once, e.g. 42,7,1")
    return seeds


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peftkit",
        description="Parameter-efficient adaptation of BERT- and GPT-style "
        "models: recipe → small adapter → eval / predict.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a recipe into a run folder")
    t.add_argument("recipe", help="recipe YAML file")
    t.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override recipe fields, e.g. train.epochs=2"
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="train with N processes (GPUs, or CPU cores without a "
        "GPU) through `accelerate launch`; strategy from the recipe's distributed section",
    )

    v = sub.add_parser(
        "validate", help="check a recipe, its data card and model source without loading a model"
    )
    v.add_argument("recipe")
    v.add_argument("overrides", nargs="*", metavar="key=value")

    e = sub.add_parser("eval", help="evaluate a run or adapter on a data card's split or a CSV/JSONL file")
    e.add_argument("adapter", help="run folder or adapter folder")
    e.add_argument("--data", help="data card name/path, or a .csv/.jsonl file with text and label columns")
    e.add_argument("--split", default="test", help="split of the data card (default: test)")
    e.add_argument("--json", action="store_true", help="print metrics as JSON")
    e.add_argument(
        "--plots",
        metavar="DIR",
        help="write the confusion-matrix PNG here (default: RUN/plots/ when "
        "given a run folder; none for a bare adapter folder)",
    )

    pr = sub.add_parser("predict", help="labels and probabilities for texts")
    pr.add_argument("adapter", nargs="?", help="run folder or adapter folder (or use --adapter NAME=PATH)")
    pr.add_argument(
        "--adapter",
        dest="named",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="load several adapters on one base; --file is then JSONL whose lines name their 'adapter'",
    )
    pr.add_argument("texts", nargs="*", help="texts to classify")
    pr.add_argument("--file", help="a text file (one text per line) or JSONL with a 'text' field")
    pr.add_argument("--json", action="store_true", help="one JSON object per line")

    m = sub.add_parser("merge", help="merge a mergeable adapter into a full-precision copy of its base")
    m.add_argument("adapter", help="run folder or adapter folder")
    m.add_argument("--out", required=True, help="folder for the merged model (+ parity_report.json)")
    m.add_argument("--samples", type=int, default=64, help="sample inputs for the parity report (default 64)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")

    sb = sub.add_parser(
        "serve-bench",
        help="serving benchmark: swap latency, adapter vs merged vs base latency, "
        "memory for 1..N adapters; optionally QLoRA vs fp32 LoRA training",
    )
    sb.add_argument(
        "--adapter",
        dest="named",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="adapters to load on one base (the first is also merged for the latency comparison)",
    )
    sb.add_argument("--texts", type=int, default=64, help="inputs per latency measurement (default 64)")
    sb.add_argument(
        "--compare-qlora",
        nargs=2,
        metavar=("FP32_RECIPE", "QLORA_RECIPE"),
        help="train both recipes (each in its own process) and compare accuracy, peak RSS, examples/s",
    )
    sb.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="key=value",
        help="overrides for both --compare-qlora recipes (e.g. data.max_train_examples=1000)",
    )
    sb.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        metavar="S1,S2,…",
        help="train the --compare-qlora pair once per seed and report the mean accuracy difference "
        "(default: the recipes' own seed)",
    )
    g = sub.add_parser("generate", help="sample a continuation of a prompt from a causal-LM adapter")
    g.add_argument("adapter", help="run folder or adapter folder (task causal_lm)")
    g.add_argument("prompt", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default: 50)")
    g.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default: 0.8)"
    )
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")

    sub.add_parser("ls", help="list shipped recipes and data cards")

    sc = sub.add_parser("schema", help="print the recipe JSON Schema (or the Markdown reference)")
    sc.add_argument("--markdown", action="store_true", help="the recipe reference as Markdown tables")
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

    pb = sub.add_parser("publish", help="export a run as a self-contained folder, or upload it to the Hub")
    pb.add_argument("run", help="run folder")
    where = pb.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="DIR", help="new folder to write (must not exist)")
    where.add_argument("--hub", metavar="REPO_ID", help="Hugging Face Hub repo to upload to (needs network)")
    pb.add_argument(
        "--base-model",
        metavar="HUB_ID",
        help="the base's Hub id for the card metadata and "
        "adapter_config.json, when the run used a local folder or package (needed for --hub)",
    )
    m = sub.add_parser("methods", help="trainable parameters and adapter size per shipped recipe's method")
    m.add_argument("recipes", nargs="*", help="recipe files (default: the shipped recipes/minilm-*.yaml)")
    m.add_argument("--model", help="base model source for every row (default: each recipe's own model)")
    b = sub.add_parser(
        "bench", help="compare methods (and the plain Trainer pipeline) on one recipe: bench.md/json"
    )
    b.add_argument("recipe", help="recipe YAML file (its method's settings are used for that method)")
    b.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override recipe fields, e.g. train.epochs=1"
    )
    b.add_argument(
        "--methods",
        default="lora,dora,ia3,prefix_tuning,houlsby,full",
        help="comma-separated methods; `full` is full fine-tuning (default: %(default)s)",
    )
    b.add_argument("--budget", type=int, help="training examples per row (default: the recipe's)")
    b.add_argument(
        "--peer", action="store_true", help="add transformers Trainer + peft rows (pad-to-128, dynamic)"
    )
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
    if args.processes is not None:
        from peftkit.training.distributed import launch_training

        flags = [
            f
            for f, on in (
                ("--overwrite", args.overwrite),
                ("--resume", args.resume),
                ("--no-progress", args.no_progress),
            )
            if on
        ]
        return launch_training(
            args.recipe,
            [*args.overrides, *flags],
            args.processes,
            strategy=recipe.distributed.strategy,
            accelerate_config=recipe.distributed.accelerate_config,
            quantized=recipe.quantization is not None,
        )
    from peftkit.training.recipe import train

    out = train(recipe, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary per run, not per process
        return 0
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics.get("test") or metrics.get("validation") or {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
    print(f"run folder: {out}\n{shown}")
    return 0


def cmd_validate(args) -> int:
    recipe = _load(args.recipe, args.overrides)
    from peftkit.training.preflight import validate_recipe

    for line in validate_recipe(recipe):
        print(line)
    print(f"{args.recipe}: OK")
    return 0


def cmd_eval(args) -> int:
    from peftkit.inference.predict import evaluate_adapter

    metrics = evaluate_adapter(args.adapter, data=args.data, split=args.split)
    plots = (
        Path(args.plots)
        if args.plots
        else (Path(args.adapter) / "plots" if (Path(args.adapter) / "adapter").is_dir() else None)
    )
    if plots is not None and "confusion_matrix" in metrics:
        from peftkit.inference.plots import plot_confusion

        name = f"{Path(args.data).stem}-{args.split}" if args.data else args.split
        png = plot_confusion(
            metrics["confusion_matrix"],
            metrics["labels"],
            plots / f"confusion_matrix-{name}.png",
            title=f"Confusion matrix ({name}, n={metrics['n']})",
        )
        print(f"plot: {png}", file=sys.stderr)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    for key in ("accuracy", "macro_f1", "loss", "perplexity"):
        if key in metrics:
            print(f"{key:>10}: {metrics[key]:.4f}")
    for label, s in metrics.get("per_class", {}).items():
        print(
            f"{label:>10}: precision {s['precision']:.3f} recall {s['recall']:.3f} f1 {s['f1']:.3f} "
            f"(n={s['support']})"
        )
    return 0


def cmd_predict(args) -> int:
    from peftkit.inference.predict import predict_texts, read_texts

    if args.named:
        return _predict_routed(args)
    if not args.adapter:
        raise PeftkitError(
            "predict: no adapter. Give a run/adapter folder, or several with --adapter NAME=PATH."
        )
    texts = list(args.texts) + (read_texts(args.file) if args.file else [])
    if not texts:
        raise PeftkitError(
            "predict: no input. Give texts as arguments or --file F (one text per line or JSONL)."
        )
    _print_predictions(texts, predict_texts(args.adapter, texts), as_json=args.json)
    return 0


def _print_predictions(texts, rows, *, as_json: bool) -> None:
    """One line per text: JSON, or tab-separated [adapter] label, probability, text."""
    for text, row in zip(texts, rows, strict=True):
        if as_json:
            print(json.dumps({"text": text, **row}))
        else:
            who = f"{row['adapter']}\t" if "adapter" in row else ""
            print(f"{who}{row['label']}\t{row['probabilities'][row['label']]:.3f}\t{text}")


def _predict_routed(args) -> int:
    from peftkit.inference.adapter_set import AdapterSet, parse_adapter_specs, read_routed

    pairs = parse_adapter_specs(args.named)
    if args.adapter or args.texts or not args.file:
        raise PeftkitError(
            "predict --adapter NAME=PATH: give the inputs as --file F.jsonl whose lines are "
            '{"adapter": NAME, "text": ...} (positional adapter and texts are for one adapter).'
        )
    rows = read_routed(args.file, [n for n, _ in pairs])
    adapters = AdapterSet()
    for name, path in pairs:
        adapters.add(name, path)
    _print_predictions([text for _, text in rows], adapters.route(rows), as_json=args.json)
    return 0


def cmd_merge(args) -> int:
    from peftkit.inference.merge import merge_adapter

    report = merge_adapter(args.adapter, args.out, n_samples=args.samples, overwrite=args.overwrite)
    print(json.dumps(report, indent=2))
    return 0


def cmd_serve_bench(args) -> int:
    from peftkit.bench.serving import run_serve_bench

    run_serve_bench(
        args.named,
        n_texts=args.texts,
        compare_qlora=args.compare_qlora,
        overrides=args.overrides,
        seeds=args.seeds,
    )
    return 0


def cmd_generate(args) -> int:
    from peftkit.inference.generate import generate_text

    text = generate_text(
        args.adapter,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    print(args.prompt + text)
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


def cmd_schema(args) -> int:
    from peftkit.recipe.jsonschema import recipe_json_schema, recipe_reference_markdown

    print(recipe_reference_markdown() if args.markdown else json.dumps(recipe_json_schema(), indent=2))
    return 0


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


def cmd_publish(args) -> int:
    from peftkit.adapters.publish import publish_run, push_to_hub

    if args.hub:
        url = push_to_hub(args.run, args.hub, base_model=args.base_model)
        print(f"uploaded {args.run} to {url}")
    else:
        out = publish_run(args.run, args.to, base_model=args.base_model)
        print(f"published {args.run} to {out}:")
        for p in sorted(out.rglob("*")):
            if p.is_file():
                print(f"  {p.relative_to(out)}")
    return 0


def cmd_methods(args) -> int:
    from peftkit.methods.report import format_rows, method_rows

    paths = [Path(p) for p in args.recipes] or sorted((project_root() / "recipes").glob("minilm-*.yaml"))
    print(format_rows(method_rows(paths, args.model)))
    return 0


def cmd_bench(args) -> int:
    from peftkit.bench.methods import run_bench

    if args.budget is not None and args.budget < 1:
        raise PeftkitError(f"--budget: expected a positive number of training examples, found {args.budget}.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out = run_bench(
        args.recipe,
        methods=methods,
        budget=args.budget,
        peer=args.peer,
        output=args.output,
        overrides=args.overrides,
    )
    print((out / "bench.md").read_text())
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "validate": cmd_validate,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "ls": cmd_ls,
    "schema": cmd_schema,
    "merge": cmd_merge,
    "serve-bench": cmd_serve_bench,
    "data": cmd_data,
    "publish": cmd_publish,
    "generate": cmd_generate,
    "methods": cmd_methods,
    "bench": cmd_bench,
}
