"""Using adapters: `eval`, `predict`, `generate`, `merge`, `export`."""

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
    _adapter_load_options(e)
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
    _adapter_load_options(pr)
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
    _adapter_load_options(g, labels=False)
    g.set_defaults(handler=cmd_generate)

    m = sub.add_parser("merge", help="merge a mergeable adapter into a full-precision copy of its base")
    m.add_argument("adapter", help="run folder or adapter folder")
    m.add_argument("--out", required=True, help="folder for the merged model (+ parity_report.json)")
    m.add_argument("--samples", type=int, default=64, help="sample inputs for the parity report (default 64)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_verbose(m)
    _adapter_load_options(m)
    m.set_defaults(handler=cmd_merge)

    x = sub.add_parser(
        "export", help="export a classification adapter to ONNX (merged, pooling and head in the graph)"
    )
    x.add_argument("adapter", help="run folder or adapter folder")
    x.add_argument("--format", required=True, choices=["onnx"], help="export format (onnx)")
    x.add_argument("--out", required=True, help="folder for model.onnx, the tokenizer and parity_report.json")
    x.add_argument(
        "--samples", type=int, help="test texts in the parity check (default: the whole test split)"
    )
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_verbose(x)
    x.set_defaults(handler=cmd_export)


def _adapter_load_options(parser, *, labels: bool = True) -> None:
    """--unverified / --labels / --base: the explicit way to use an adapter without a fingerprint."""
    parser.add_argument(
        "--unverified",
        action="store_true",
        help="accept an adapter without a fingerprint (a plain PEFT adapter): its base, tokenizer and labels "
        "cannot be checked, and the output says so",
    )
    if labels:
        parser.add_argument(
            "--labels",
            type=lambda text: [name.strip() for name in text.split(",")],
            metavar="A,B,...",
            help="label names in id order: those of an unverified adapter (default LABEL_0, LABEL_1, ...); "
            "for a fingerprinted one, the labels it must have",
        )
    parser.add_argument(
        "--base",
        metavar="SOURCE",
        help="base model source (default: the one the adapter records); a fingerprinted adapter is still "
        "checked against it",
    )


def _load_kwargs(args) -> dict:
    return dict(allow_unverified=args.unverified, labels=getattr(args, "labels", None), base_source=args.base)


def cmd_eval(args) -> int:
    from peftkit.inference.predict import evaluate_adapter

    with quiet_libraries(args.verbose):
        metrics = evaluate_adapter(
            args.adapter, data=args.data, split=args.split, progress=True, **_load_kwargs(args)
        )
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
        rows = predict_texts(args.adapter, texts, **_load_kwargs(args))
    _print_predictions(texts, rows, as_json=args.json)
    return 0


def _print_predictions(texts, rows, *, as_json: bool) -> None:
    """One line per text: JSON, or tab-separated [adapter] label, probability, text."""
    for text, row in zip(texts, rows, strict=True):
        if as_json:
            print(json.dumps({"text": text, **row}))
        else:
            who = f"{row['adapter']}\t" if "adapter" in row else ""
            mark = "\t(unverified)" if row.get("unverified") else ""
            print(f"{who}{row['label']}\t{row['probabilities'][row['label']]:.3f}\t{text}{mark}")


def _predict_routed(args) -> int:
    from peftkit.inference.adapter_set import AdapterSet, parse_adapter_specs, read_routed

    pairs = parse_adapter_specs(args.named)
    if args.adapter or args.texts or not args.file:
        raise PeftkitError(
            "predict --adapter NAME=PATH: give the inputs as --file F.jsonl whose lines are "
            '{"adapter": NAME, "text": ...} (positional adapter and texts are for one adapter).'
        )
    if args.labels or args.base:
        raise PeftkitError(
            "predict --adapter NAME=PATH: --labels and --base describe one adapter; with several, train them with "
            "peftkit (fingerprinted) or predict with each unverified adapter on its own."
        )
    rows = read_routed(args.file, [n for n, _ in pairs])
    with quiet_libraries(args.verbose):
        adapters = AdapterSet()
        for name, path in pairs:
            adapters.add(name, path, allow_unverified=args.unverified)
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
            allow_unverified=args.unverified,
            base_source=args.base,
        )
    print(args.prompt + text)
    return 0


def cmd_merge(args) -> int:
    from peftkit.inference.merge import merge_adapter

    with quiet_libraries(args.verbose):
        report = merge_adapter(
            args.adapter, args.out, n_samples=args.samples, overwrite=args.overwrite, **_load_kwargs(args)
        )
    print(json.dumps(report, indent=2))
    return 0


def cmd_export(args) -> int:
    from peftkit.inference.export import export_onnx

    with quiet_libraries(args.verbose):
        report = export_onnx(args.adapter, args.out, n_samples=args.samples, overwrite=args.overwrite)
    latency = report["latency_ms"]
    print(f"ONNX export: {args.out}/model.onnx ({report['graph']} graph)")
    print(
        f"parity on {report['parity']['n']} test texts: labels agree {report['parity']['agree']}/"
        f"{report['parity']['n']}, max |logit diff| {report['parity']['max_abs_logit_diff']:.2e}"
    )
    print(f"CPU latency, median ms per call ({latency['threads']} threads):")
    print(f"  {'batch':>5}  {'onnxruntime':>11}  {'torch':>9}  speed-up")
    for batch in (1, 64):
        row = latency[f"batch_{batch}"]
        print(
            f"  {batch:>5}  {row['onnxruntime']:>11.2f}  {row['torch']:>9.2f}  {row['torch'] / row['onnxruntime']:.2f}x"
        )
    return 0
