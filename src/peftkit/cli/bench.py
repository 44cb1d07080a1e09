"""Benchmarks and tables: `bench`, `methods`, `serve-bench`."""

from __future__ import annotations

import argparse
from pathlib import Path

from peftkit.cli import project_root
from peftkit.errors import PeftkitError


def register(sub) -> None:
    """Add this group's subcommands to the `peftkit` parser."""
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
    b.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where every row trains: cuda adds peak GPU memory per row (bf16 by default); cpu on a GPU machine "
        "is a dry run of the same rows (default: %(default)s, the GPU when one is visible)",
    )
    b.add_argument(
        "--unquantized-row",
        action="store_true",
        help="for a recipe with a quantization block: add the same method on the unquantized base (the memory "
        "reference for QLoRA)",
    )
    b.set_defaults(handler=cmd_bench)

    m = sub.add_parser("methods", help="trainable parameters and adapter size per shipped recipe's method")
    m.add_argument("recipes", nargs="*", help="recipe files (default: the shipped recipes/minilm-*.yaml)")
    m.add_argument("--model", help="base model source for every row (default: each recipe's own model)")
    m.set_defaults(handler=cmd_methods)

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
    sb.set_defaults(handler=cmd_serve_bench)


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
        device=args.device,
        unquantized_row=args.unquantized_row,
    )
    print((out / "bench.md").read_text())
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


def cmd_methods(args) -> int:
    from peftkit.methods.report import format_rows, method_rows

    paths = [Path(p) for p in args.recipes] or sorted((project_root() / "recipes").glob("minilm-*.yaml"))
    print(format_rows(method_rows(paths, args.model)))
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
