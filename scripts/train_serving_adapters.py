"""Train N small MiniLM LoRA adapters (one seed each) for the serving benchmark, in one process.

    .venv/bin/python scripts/train_serving_adapters.py 32 runs/serve-adapters

Each adapter: the quickstart recipe (MiniLM-L6 + LoRA r=8 on Rotten Tomatoes) with 200 training examples and
100 evaluation examples, seed i. An adapter folder that already exists is kept (re-runs only add what is missing).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from peftkit.recipe import load_recipe
from peftkit.training.recipe import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "minilm-lora-rotten_tomatoes.yaml"


def main(count: int, root: Path) -> None:
    for i in range(count):
        out = root / f"a{i:02d}"
        if (out / "adapter" / "adapter_config.json").is_file():
            continue
        started = time.perf_counter()
        overrides = [
            "data.max_train_examples=200",
            "data.max_eval_examples=100",
            "data.max_test_examples=100",
            f"train.seed={i}",
            f"train.output_dir={out}",
            "train.save_every=null",
            "train.report_to=none",
        ]
        train(load_recipe(RECIPE, overrides), overwrite=True, progress=False)
        print(f"{out}: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
