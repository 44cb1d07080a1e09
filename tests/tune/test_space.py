"""The search space: defaults per method family, the space file, and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftkit.errors import PeftkitError
from peftkit.recipe import load_recipe
from peftkit.tune.space import as_override, baseline_params, build_space, default_space

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
LORA = str(RECIPES / "minilm-lora-rotten_tomatoes.yaml")


def space_for(name: str) -> dict:
    return default_space(load_recipe(RECIPES / f"minilm-{name}-rotten_tomatoes.yaml"))


def test_lora_space_is_learning_rate_rank_and_alpha_around_the_recipe():
    space = space_for("lora")
    assert list(space) == ["train.learning_rate", "method.r", "method.lora_alpha"]
    lr = space["train.learning_rate"]
    assert (lr.low, lr.high, lr.log) == (pytest.approx(1e-4), pytest.approx(1e-2), True)  # recipe: 1e-3
    assert space["method.r"].choices == (4, 8, 16, 32)
    assert space["method.lora_alpha"].choices == (8, 16, 32, 64)
    assert space["method.r"].describe() == "one of 4, 8, 16, 32"
    assert lr.describe() == "log-uniform 0.0001 … 0.01"


def test_each_method_family_gets_its_own_settings():
    prefix = space_for("prefix_tuning")
    assert list(prefix) == ["train.learning_rate", "method.num_virtual_tokens"]
    assert 20 in prefix["method.num_virtual_tokens"].choices  # the recipe's own value is always a choice
    assert prefix["train.learning_rate"].high == pytest.approx(0.3)  # recipe: 3e-2
    assert list(space_for("houlsby")) == ["train.learning_rate", "method.reduction_factor"]
    assert list(space_for("ia3")) == ["train.learning_rate"]


def test_the_recipes_own_settings_are_the_baseline():
    recipe = load_recipe(LORA)
    assert baseline_params(recipe, default_space(recipe)) == {
        "train.learning_rate": 1e-3,
        "method.r": 8,
        "method.lora_alpha": 16,
    }


def test_a_space_file_adds_changes_and_removes_dimensions(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "method.r: [8, 16]\nmethod.lora_alpha: null\ntrain.class_weights: [none, balanced]\n"
        "train.warmup_ratio: {low: 0.0, high: 0.2}\n"
    )
    space = build_space(LORA, [], str(path))
    assert list(space) == ["train.learning_rate", "method.r", "train.class_weights", "train.warmup_ratio"]
    assert space["method.r"].choices == (8, 16)
    assert space["train.warmup_ratio"].describe() == "uniform 0 … 0.2"


def test_overrides_carry_values_with_their_types():
    recipe = load_recipe(LORA, [as_override("train.learning_rate", 1e-05), as_override("method.r", 16)])
    assert recipe.train.learning_rate == 1e-05 and recipe.method.settings()["r"] == 16
    recipe = load_recipe(LORA, [as_override("train.class_weights", "balanced")])
    assert recipe.train.class_weights == "balanced"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- 1\n- 2\n", "expected a mapping of recipe fields to values"),
        (
            "learning_rate: [0.1]\n",
            "learning_rate: name a recipe field with its section, e.g. train.learning_rate",
        ),
        ("data.max_train_examples: [100, 200]\n", "tune sets this itself (--budget)"),
        (
            "train.learning_rate: {low: 0.1, high: 0.01}\n",
            "a range is {low: NUMBER, high: NUMBER, log: true|false}",
        ),
        ("train.learning_rate: {low: 0, high: 0.01, log: true}\n", "and low > 0 when log"),
        (
            "method.target_modules: [[query], [value]]\n",
            "a list of choices must hold one or more numbers, words",
        ),
        ("method.r: 8\n", "method.r: expected a list of choices, a range {low, high, log}, or null"),
        (
            "train.learnin_rate: [0.1]\n",
            "train.learnin_rate = 0.1 does not make a valid recipe from",
        ),
        ("method.rank: [4]\n", "'lora' has no setting 'rank'"),
        ("train.learning_rate: null\nmethod.r: null\nmethod.lora_alpha: null\n", "the search space is empty"),
    ],
)
def test_space_file_errors_name_the_file_the_key_and_the_fix(tmp_path, text, words):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(PeftkitError) as err:
        build_space(LORA, [], str(path))
    assert words in str(err.value)
    assert "--space" in str(err.value)


def test_a_missing_space_file_is_named(tmp_path):
    with pytest.raises(PeftkitError, match="--space: file '.*nope.yaml' not found"):
        build_space(LORA, [], str(tmp_path / "nope.yaml"))
