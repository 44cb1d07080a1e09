"""AdaLoRA's rank allocation runs inside peftkit's training loop: the run's length becomes `total_step`, ranks are
pruned to the target budget, and the saved adapter records the final rank pattern."""

from __future__ import annotations

import json

from peftkit.recipe import load_recipe
from peftkit.training.recipe import train
from tests.helpers import write_recipe


def test_adalora_prunes_to_budget_in_training(tiny_bert, tiny_card, tmp_path):
    method = {
        "name": "adalora",
        "init_r": 4,
        "target_r": 2,
        "tinit": 1,
        "tfinal": 2,
        "deltaT": 1,
        "target_modules": ["query", "value"],
    }
    path = write_recipe(
        tmp_path / "r.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp_path / "run",
        method=method,
        train={"max_steps": 6},
    )
    out = train(load_recipe(path), progress=False)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["total_step"] == 6
    pattern = config["rank_pattern"]
    assert pattern, "update_and_allocate never reached the final budget"
    assert len(pattern) == 4  # query and value in 2 layers
    kept = sum(sum(mask) for mask in pattern.values())
    assert kept == 2 * len(pattern), pattern  # the budget: target_r per module on average
    assert any(sum(mask) < 4 for mask in pattern.values())
