"""Build a skewed copy of a classification data card: keep only a seeded share of one label's examples.

    .venv/bin/python scripts/skewed_split.py                      # docs/data/rotten_tomatoes_skewed.md + CSVs
    .venv/bin/python scripts/skewed_split.py --label fresh --keep 0.1 --out /tmp/skewed

Every split of the source card (its own seeded split) keeps all examples of the other labels and `--keep` of
`--label`'s, chosen with `--seed`, so validation and test are as skewed as train. The CSVs go to OUT/NAME/ and the
card (counts and checksum filled in) to OUT/NAME.md; the same arguments rebuild byte-identical files, so a committed
card proves a rebuilt copy is the data it describes (`peftkit data check OUT/NAME.md`). The texts are not meant to
be committed: the source card's license applies to them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peftkit.data.cards import SPLITS, load_card
from peftkit.data.report import size_category
from peftkit.data.sources import load_splits, source_checksum


def build(card_name: str, label: str, keep: float, seed: int, out: Path, name: str) -> Path:
    """Write the skewed CSVs and their card; return the card's path."""
    import numpy as np

    card = load_card(card_name)
    if label not in card.labels:
        sys.exit(f"--label: '{label}' is not a label of {card.name} ({', '.join(card.labels)})")
    target = card.labels.index(label)
    splits = load_splits(card)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    per_label = {}
    for split in SPLITS:
        frame = splits[split].to_pandas()
        ids = frame["label"].to_numpy()
        rows = np.flatnonzero(ids == target)
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        mask = ids != target
        mask[rng.choice(rows, size=max(1, round(keep * len(rows))), replace=False)] = True
        frame = frame[mask].assign(label=[card.labels[y] for y in ids[mask]])
        frame[["text", "label"]].to_csv(folder / f"{split}.csv", index=False)
        per_label[split] = [int((ids[mask] == i).sum()) for i in range(len(card.labels))]
    path = out / f"{name}.md"
    path.write_text(_card_text(card, label, keep, seed, name, per_label, None), encoding="utf-8")
    checksum = source_checksum(load_card(path))  # the card names the files; hash them as `data check` does
    path.write_text(_card_text(card, label, keep, seed, name, per_label, checksum), encoding="utf-8")
    return path


def _card_text(card, label: str, keep: float, seed: int, name: str, per_label: dict, checksum) -> str:
    counts = {split: sum(n) for split, n in per_label.items()}
    title = f"{card.metadata.get('pretty_name', card.name)}, '{label}' cut to {keep:.0%}"
    command = f"scripts/skewed_split.py --card {card.name} --label {label} --keep {keep:g} --seed {seed}"
    lines = [
        "---",
        f"license: {card.metadata.get('license', 'other')}",
        f"language: [{', '.join(card.metadata.get('language', ['en']))}]",
        "task_categories: [text-classification]",
        f'pretty_name: "{title}"',
        f"size_categories: [{size_category(sum(counts.values()))}]",
        "peftkit:",
        "  task: classification",
        "  source:",
        "    files: {" + ", ".join(f"{s}: {name}/{s}.csv" for s in SPLITS) + "}",
        "  text_column: text",
        "  label_column: label",
        f"  labels: [{', '.join(card.labels)}]",
        "  counts: {" + ", ".join(f"{s}: {counts[s]}" for s in SPLITS) + "}",
        f"  checksum: {checksum or 'null'}",
        "---",
        "",
        f"# {title}",
        "",
        f"A deliberately skewed copy of the `{card.name}` data card, for measuring what imbalanced labels do to a",
        f"classifier (accuracy against macro-F1, with and without `train.class_weights`). Each of {card.name}'s",
        f"own splits keeps every example of the other labels and a seeded {keep:.0%} of its '{label}' examples, so",
        "validation and test are as skewed as train.",
        "",
        "| split | examples | " + " | ".join(card.labels) + " |",
        "|---|---:|" + "---:|" * len(card.labels),
        *(f"| {s} | {counts[s]:,} | " + " | ".join(f"{n:,}" for n in per_label[s]) + " |" for s in SPLITS),
        "",
        "## Where it comes from",
        "",
        f"Built by `{command}` from the `{card.name}` data card: see that card for the source, its license and its",
        "known limits, which all apply here. The texts are not committed: run the command to write them next to",
        "this card; the checksum above proves that the rebuilt files are the ones measured.",
        "",
        "## Known limits",
        "",
        "- A synthetic imbalance: the rare label's examples are a random sample of the original ones, not the",
        "  harder, rarer cases real skewed data tends to have.",
        f"- With so few '{label}' examples, validation and test scores for that label move a lot between seeds.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--card", default="rotten_tomatoes", help="source data card (default: %(default)s)")
    parser.add_argument("--label", default="rotten", help="the label to cut (default: %(default)s)")
    parser.add_argument("--keep", type=float, default=0.05, help="share of its examples kept (default: 0.05)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "data")
    parser.add_argument("--name", help="card name (default: <card>_skewed)")
    args = parser.parse_args(argv)
    if not 0 < args.keep < 1:
        parser.error("--keep must be a fraction between 0 and 1, e.g. 0.05")
    path = build(args.card, args.label, args.keep, args.seed, args.out, args.name or f"{args.card}_skewed")
    print(f"wrote {path} and its CSVs in {path.with_suffix('')}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
