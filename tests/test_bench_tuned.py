"""`peftkit bench --tuned DIR`: each method at the settings a `peftkit tune` study found for it."""

from __future__ import annotations

import json

import pytest

from peftkit.bench.methods import count_params, run_bench
from peftkit.bench.tuned import read_tuned
from peftkit.errors import PeftkitError
from peftkit.recipe import load_recipe
from tests.helpers import write_recipe


def best_json(folder, study: str, method: dict, lr: float, budget: int = 80) -> None:
    """What `peftkit tune` writes as best.json (only the fields bench reads)."""
    folder.mkdir(parents=True)
    params = {"train.learning_rate": lr, **{f"method.{k}": v for k, v in method.items() if k != "name"}}
    (folder / "best.json").write_text(
        json.dumps(
            {
                "study": study,
                "metric": "macro_f1",
                "direction": "maximize",
                "budget": budget,
                "trial": 3,
                "value": 0.8,
                "params": params,
                "method": method,
                "train": {"learning_rate": lr},
            }
        )
    )


def test_bench_runs_tuned_methods_at_their_tuned_settings(tmp_path, tiny_bert, tiny_card):
    recipe = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run")
    best_json(tmp_path / "tune" / "tiny-lora", "tiny-lora", {"name": "lora", "r": 2, "lora_alpha": 4}, 0.02)
    out = run_bench(
        str(recipe),
        methods=["lora", "ia3"],
        budget=40,
        output=tmp_path / "bench",
        progress=False,
        matmul_size=256,
        tuned=tmp_path / "tune",
    )
    result = json.loads((out / "bench.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["lora (tuned)", "ia3"]
    assert rows["lora (tuned)"]["status"] == "ok" and rows["lora (tuned)"]["learning_rate"] == 0.02
    # rank 2, not the recipe's default rank 8: fewer trainable parameters
    default = count_params(load_recipe(recipe), "lora")
    assert rows["lora (tuned)"]["trainable_params"] < default["trainable_params"]
    note = (
        "- lora: study tiny-lora (trial 3, validation macro_f1 0.8000): train.learning_rate=0.02, method.r=2"
    )
    markdown = (out / "bench.md").read_text()
    assert note in markdown and "tuned at a budget of 80 examples, benched at 40" in markdown


def test_tuned_folder_errors(tmp_path):
    with pytest.raises(
        PeftkitError, match="--tuned: no best.json under .* Run `peftkit tune RECIPE --trials N`"
    ):
        read_tuned(tmp_path)
    best_json(tmp_path / "a", "a", {"name": "lora"}, 0.01)
    best_json(tmp_path / "b", "b", {"name": "lora"}, 0.02)
    with pytest.raises(
        PeftkitError, match="--tuned: two studies tuned lora: .*a/best.json and .*b/best.json"
    ):
        read_tuned(tmp_path)
    (tmp_path / "b" / "best.json").write_text("{not json")
    with pytest.raises(PeftkitError, match="b/best.json is not a `peftkit tune` result"):
        read_tuned(tmp_path)
