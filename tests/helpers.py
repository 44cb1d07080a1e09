"""Builders shared by the tests: tiny labelled texts, data cards and recipes (no network, no models)."""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

POSITIVE = ["good", "great", "fine", "superb", "lovely", "moving", "sharp", "witty"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "messy", "flat", "tired"]
FILLER = [
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "actors",
    "is",
    "was",
    "very",
    "quite",
    "and",
    "story",
    "script",
]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<eos>", *POSITIVE, *NEGATIVE, *FILLER]


def make_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short sentences whose label is told by one sentiment word among fillers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.choices(FILLER, k=rng.randint(2, 9))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_card(folder: Path, rows, *, name: str = "tiny", labels=("neg", "pos"), extra: str = "") -> Path:
    """A CSV of (text, label) rows and a data card for it (split 0.2 test / 0.2 validation, seed 0)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    card = folder / f"{name}.md"
    card.write_text(
        textwrap.dedent(f"""\
        ---
        license: cc0-1.0
        language: [en]
        task_categories: [text-classification]
        pretty_name: Tiny {name}
        peftkit:
          task: classification
          source:
            file: {name}.csv
          text_column: text
          label_column: label
          labels: [{", ".join(labels)}]
          split: {{seed: 0, test: 0.2, validation: 0.2, stratify: true}}
        {extra}---
        # Tiny {name}

        Synthetic sentences made by the tests.
        """)
    )
    return card


def write_recipe(
    path: Path,
    *,
    model: Path | str,
    card: Path | str,
    out: Path,
    method: dict | None = None,
    train: dict | None = None,
    data: dict | None = None,
    **sections,
) -> Path:
    """A recipe YAML for tiny runs (2 epochs, batch 8, no checkpoints, no tensorboard); dicts override defaults."""
    import yaml

    recipe = {
        "model": {"source": str(model)},
        "method": method or {"name": "lora"},
        "data": {"card": str(card), "max_length": 32, **(data or {})},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 0.005,
            "output_dir": str(out),
            "save_every": None,
            "report_to": "none",
            **(train or {}),
        },
        **sections,
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def write_split_card(folder: Path, splits: dict, *, name: str = "split", labels=("neg", "pos")) -> Path:
    """A data card over one CSV per split (`splits`: split name → (text, label) rows), so each split is exactly
    the rows given (no seeded cutting)."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(folder / f"{name}-{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    files = ", ".join(f"{split}: {name}-{split}.csv" for split in splits)
    card = folder / f"{name}.md"
    card.write_text(
        "---\nlicense: cc0-1.0\nlanguage: [en]\ntask_categories: [text-classification]\n"
        f"pretty_name: {name}\npeftkit:\n  task: classification\n  source:\n    files: {{{files}}}\n"
        f"  text_column: text\n  label_column: label\n  labels: [{', '.join(labels)}]\n---\n# {name}\n\n"
        "Synthetic sentences made by the tests.\n"
    )
    return card


def flipped(rows, share: float) -> list[tuple[str, str]]:
    """`rows` with the label of every k-th row swapped (neg ↔ pos), so that about `share` of them are wrong."""
    every = round(1 / share)
    swap = {"neg": "pos", "pos": "neg"}
    return [(text, swap[label] if i % every == 0 else label) for i, (text, label) in enumerate(rows)]
