"""Every shipped recipe validates as written, and trains for two steps with a tiny-model override (torchtune /
litgpt style): the same method block, on the tiny BERT and the tiny data card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftkit.recipe import load_recipe
from peftkit.training.recipe import train

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
PEFT_TYPES = {"houlsby": "BOTTLENECK", "pfeiffer": "BOTTLENECK", "parallel": "BOTTLENECK", "dora": "LORA"}


def test_the_eight_methods_are_shipped():
    names = {p.stem for p in RECIPES}
    for method in (
        "lora",
        "dora",
        "ia3",
        "prompt_tuning",
        "prefix_tuning",
        "houlsby",
        "pfeiffer",
        "parallel",
    ):
        assert f"minilm-{method}-rotten_tomatoes" in names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe(path, tiny_bert, tiny_llama, tiny_card, tmp_path):
    from peftkit.training.preflight import validate_recipe
    from tests.helpers import write_lm_card

    text = path.read_text()
    assert text.startswith("#") and "peftkit train recipes/" + path.name in text, (
        "first lines say how to run it"
    )
    recipe = load_recipe(path)
    assert any("method: " + recipe.method.name in line for line in validate_recipe(recipe))

    out = tmp_path / "run"
    # The same method block on a tiny model of the same family, with tiny data of the same task.
    decoder = "smollm" in recipe.model.source
    model = tiny_llama if decoder else tiny_bert
    card = write_lm_card(tmp_path / "lm") if recipe.model.task == "causal_lm" else tiny_card
    tiny = load_recipe(
        path,
        [
            f"model.source={model}",
            f"data.card={card}",
            "data.max_length=32",
            "train.max_steps=2",
            "train.batch_size=8",
            "train.save_every=1",
            "train.log_every=1",
            "train.report_to=none",
            "data.max_eval_examples=16",
            f"train.output_dir={out}",
        ],
    )
    train(tiny, progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == PEFT_TYPES.get(recipe.method.name, recipe.method.name.upper())
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert (
        0.0 <= test["accuracy"] <= 1.0 if recipe.model.task == "classification" else test["perplexity"] > 1.0
    )
