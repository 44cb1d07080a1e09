"""Using adapters: `eval`, `predict`, `generate`, `merge`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from peftkit.cli import add_verbose
from peftkit.errors import PeftkitError
from peftkit.quiet import quiet_libraries


def register(sub) -> None:
    """Add this group's subcommands to the `peftkit` parser."""
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
    add_verbose(e)
    e.set_defaults(handler=cmd_eval)

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
    add_verbose(pr)
    pr.set_defaults(handler=cmd_predict)

    g = sub.add_parser("generate", help="sample a continuation of a prompt from a causal-LM adapter")
    g.add_argument("adapter", help="run folder or adapter folder (task causal_lm)")
    g.add_argument("prompt", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default: 50)")
    g.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default: 0.8)"
    )
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    add_verbose(g)
    g.set_defaults(handler=cmd_generate)

    m = sub.add_parser("merge", help="merge a mergeable adapter into a full-precision copy of its base")
    m.add_argument("adapter", help="run folder or adapter folder")
    m.add_argument("--out", required=True, help="folder for the merged model (+ parity_report.json)")
    m.add_argument("--samples", type=int, default=64, help="sample inputs for the parity report (default 64)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_verbose(m)
    m.set_defaults(handler=cmd_merge)


def cmd_eval(args) -> int:
    from peftkit.inference.predict import evaluate_adapter

    with quiet_libraries(args.verbose):
        metrics = evaluate_adapter(args.adapter, data=args.data, split=args.split, progress=True)
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
    with quiet_libraries(args.verbose):
        rows = predict_texts(args.adapter, texts)
    _print_predictions(texts, rows, as_json=args.json)
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
    with quiet_libraries(args.verbose):
        adapters = AdapterSet()
        for name, path in pairs:
            adapters.add(name, path)
        predictions = adapters.route(rows)
    _print_predictions([text for _, text in rows], predictions, as_json=args.json)
    return 0


def cmd_generate(args) -> int:
    from peftkit.inference.generate import generate_text

    with quiet_libraries(args.verbose):
        text = generate_text(
            args.adapter,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
        )
    print(args.prompt + text)
    return 0


def cmd_merge(args) -> int:
    from peftkit.inference.merge import merge_adapter

    with quiet_libraries(args.verbose):
        report = merge_adapter(args.adapter, args.out, n_samples=args.samples, overwrite=args.overwrite)
    print(json.dumps(report, indent=2))
    return 0
