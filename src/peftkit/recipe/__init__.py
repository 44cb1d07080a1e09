"""Recipes: the typed schema (`schema`) and loading YAML with overrides and readable errors (`load`)."""

from peftkit.recipe.load import load_recipe, recipe_to_yaml
from peftkit.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe", "recipe_to_yaml"]
