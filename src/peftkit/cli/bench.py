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
        "--tuned",
        metavar="DIR",
        help="run each method at the settings `peftkit tune` found for it (the best.json files under DIR, "
        "e.g. tune/), so that methods are compared at their best",
    )
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
    http = sb.add_argument_group(
        "HTTP load (--http): `peftkit serve` under locust vs one adapter vs the peer"
    )
    http.add_argument(
        "--http", action="store_true", help="load-test real servers instead (see docs/serving.md)"
    )
    http.add_argument(
        "--adapter-dir",
        help="use every run/adapter folder directly inside DIR as an adapter (named by folder)",
    )
    http.add_argument("--counts", default="1,8,32", help="adapter counts to serve (default: %(default)s)")
    http.add_argument("--users", type=int, default=16, help="locust users (default 16)")
    http.add_argument("--seconds", type=int, default=30, help="load time per setup (default 30)")
    http.add_argument("--texts-per-request", type=int, default=1, help="texts per request (default 1)")
    http.add_argument("--no-peer", action="store_true", help="skip the hand-written peer app")
    http.add_argument("--threads", type=int, help="torch threads in each server (default: one per core)")
    http.add_argument("--soak", type=int, metavar="SECONDS", help="soak instead: open-loop load for SECONDS")
    http.add_argument("--rate", type=float, default=20.0, help="soak requests/s in all (default 20)")
    http.add_argument(
        "--swap-every", type=float, default=30.0, help="soak hot load/unload period, s (default 30)"
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
        tuned=args.tuned,
    )
    print((out / "bench.md").read_text())
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


def cmd_methods(args) -> int:
    from peftkit.bench.method_sizes import format_rows, method_rows

    paths = [Path(p) for p in args.recipes] or sorted((project_root() / "recipes").glob("minilm-*.yaml"))
    print(format_rows(method_rows(paths, args.model)))
    return 0


def cmd_serve_bench(args) -> int:
    from peftkit.bench.serving import run_serve_bench

    if args.http or args.soak:
        return _http_bench(args)

    run_serve_bench(
        args.named,
        n_texts=args.texts,
        compare_qlora=args.compare_qlora,
        overrides=args.overrides,
        seeds=args.seeds,
    )
    return 0


def _http_bench(args) -> int:
    from peftkit.bench.http_serving import run_http_bench, run_soak
    from peftkit.inference.adapter_set import parse_adapter_specs

    pairs = parse_adapter_specs(args.named)
    if args.adapter_dir:
        root = Path(args.adapter_dir)
        pairs += [
            (p.name, str(p))
            for p in sorted(root.iterdir())
            if (p / "adapter" / "adapter_config.json").is_file()
        ]
    if not pairs:
        raise PeftkitError(
            "serve-bench --http: no adapters. Give --adapter NAME=PATH (repeatable) or --adapter-dir DIR holding "
            "run folders (scripts/train_serving_adapters.py makes them)."
        )
    try:
        counts = [int(c) for c in args.counts.split(",")]
    except ValueError:
        raise PeftkitError(
            f"--counts: expected comma-separated adapter counts like 1,8,32, found '{args.counts}'."
        ) from None
    if args.soak:
        result = run_soak(
            pairs[: max(counts)], seconds=args.soak, rate=args.rate, users=args.users, swap_every=args.swap_every,
            texts_per_request=args.texts_per_request, threads=args.threads,
        )  # fmt: skip
        return 0 if result["failures"] == result["lost"] == result["extra"] == 0 else 1
    run_http_bench(
        pairs, counts=counts, users=args.users, seconds=args.seconds, texts_per_request=args.texts_per_request,
        peer=not args.no_peer, threads=args.threads,
    )  # fmt: skip
    return 0
