"""Builders shared by tests: tiny labelled texts, data cards and recipes (plain functions, no fixtures)."""

from __future__ import annotations

import contextlib
import random
import textwrap
import time
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


SENTENCES = [
    "the film was good and the story was superb",
    "the plot is dull and the actors are weak",
    "a movie that is quite witty and very sharp",
    "the script was messy and the story was flat",
]


def write_lm_card(folder, n: int = 160):
    """A causal-LM card over a CSV with one text column: the four sentences above, over and over."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = ["text"] + [rng.choice(SENTENCES) for _ in range(n)]
    (folder / "lm.csv").write_text("\n".join(lines) + "\n")
    card = folder / "lm.md"
    card.write_text(
        textwrap.dedent("""\
        ---
        license: cc0-1.0
        language: [en]
        task_categories: [text-generation]
        pretty_name: Tiny repetitive corpus
        peftkit:
          task: causal_lm
          source: {file: lm.csv}
          text_column: text
          split: {seed: 0, test: 0.2, validation: 0.2, stratify: false}
        ---
        # Tiny corpus
        """)
    )
    return card


@contextlib.contextmanager
def running_server(app):
    """Serve an ASGI `app` with uvicorn on 127.0.0.1 (an ephemeral port) in a thread; yield its base URL."""
    import threading

    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
