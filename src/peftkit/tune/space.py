"""The search space: which recipe fields a trial varies, and over what values.

Keys are recipe fields written as in command-line overrides (`train.learning_rate`, `method.r`), so a trial's
parameters are overrides and the best recipe is the recipe with them applied. The default space depends on the
method family: the learning rate, log-uniform over a decade either side of the recipe's own; plus rank and alpha
for LoRA-like methods, the number of virtual tokens for prompt methods, the reduction factor for bottleneck
adapters. A small YAML file (`--space`) adds, replaces or (with `null`) removes dimensions:

    train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
    method.r: [4, 8, 16]
    train.class_weights: [none, balanced]
    method.lora_alpha: null
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from peftkit.errors import PeftkitError
from peftkit.recipe import Recipe, load_recipe

# Method family → (setting, the values tried besides the recipe's own).
_FAMILY_SETTINGS: dict[tuple[str, ...], dict[str, tuple[int, ...]]] = {
    ("lora", "dora", "rslora"): {"r": (4, 8, 16, 32), "lora_alpha": (8, 16, 32, 64)},
    ("loha", "lokr"): {"r": (4, 8, 16, 32), "alpha": (8, 16, 32, 64)},
    ("prefix_tuning", "prompt_tuning", "p_tuning"): {"num_virtual_tokens": (10, 20, 40, 80)},
    ("bottleneck", "houlsby", "pfeiffer", "parallel"): {"reduction_factor": (4, 8, 16, 32, 64)},
}
LR_SPAN = 10.0  # the default learning-rate range: the recipe's rate ÷ / × this
# Fields a trial must not vary: the budget is --budget, and each trial has its own run folder.
_FIXED = {"data.max_train_examples": "--budget", "train.output_dir": "the study's trial folders"}
_RANGE_KEYS = {"low", "high", "log"}


@dataclass(frozen=True)
class Dimension:
    """One recipe field a trial varies: a range (`low`..`high`, `log`-uniform or not; ints when both bounds
    are ints) or a list of `choices`."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple | None = None

    def distribution(self):
        """The Optuna distribution of this dimension."""
        from optuna import distributions

        if self.choices is not None:
            return distributions.CategoricalDistribution(self.choices)
        if isinstance(self.low, int) and isinstance(self.high, int):
            return distributions.IntDistribution(self.low, self.high, log=self.log)
        return distributions.FloatDistribution(self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        if self.low is None or self.high is None:
            raise ValueError(f"dimension {self.key}: neither choices nor a range (low, high)")
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        return f"{'log-uniform' if self.log else 'uniform'} {_show(self.low)} … {_show(self.high)}"

    def overrides(self) -> list:
        """The values that must each make a valid recipe (every choice, both bounds)."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def as_override(key: str, value) -> str:
    """`key=value` with the value as YAML (JSON is YAML), as `load_recipe` reads overrides."""
    return f"{key}={json.dumps(value)}"


def current_value(recipe: Recipe, key: str):
    """The recipe's value of dotted field `key` (a method setting it leaves out: the method's default)."""
    section, _, name = key.partition(".")
    if section == "method":
        settings = recipe.method.settings()
        if name in settings:
            return settings[name]
        from peftkit.methods.registry import FULL, config_fields, get_method

        if recipe.method.name == FULL:
            return None
        field = config_fields(get_method(recipe.method.name)).get(name)
        default = getattr(field, "default", None)
        return default if isinstance(default, (int, float, str, bool)) else None
    value: object = recipe.model_dump(mode="json")
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def default_space(recipe: Recipe) -> dict[str, Dimension]:
    """The learning rate around the recipe's own, plus the method family's main settings."""
    lr = recipe.train.learning_rate
    space = {"train.learning_rate": Dimension("train.learning_rate", lr / LR_SPAN, lr * LR_SPAN, log=True)}
    for names, settings in _FAMILY_SETTINGS.items():
        if recipe.method.name not in names:
            continue
        for name, values in settings.items():
            key = f"method.{name}"
            now = current_value(recipe, key)
            choices = sorted({*values, now} - {None})
            space[key] = Dimension(key, choices=tuple(choices))
    return space


def build_space(
    recipe_path: str, overrides: list[str], space_file: str | None = None
) -> dict[str, Dimension]:
    """The default space for the recipe, changed by `space_file`; every value is checked against the recipe."""
    recipe = load_recipe(recipe_path, overrides)
    space = default_space(recipe)
    if space_file:
        for key, dim in read_space_file(space_file).items():
            if dim is None:
                space.pop(key, None)
            else:
                space[key] = dim
    if not space:
        raise PeftkitError(
            f"--space {space_file}: the search space is empty (every dimension removed). Keep at least one, "
            f"e.g. `train.learning_rate: {{low: 1.0e-4, high: 1.0e-2, log: true}}`."
        )
    where = f"--space {space_file}" if space_file else "the default search space"
    for dim in space.values():
        for value in dim.overrides():
            try:
                load_recipe(recipe_path, [*overrides, as_override(dim.key, value)])
            except PeftkitError as err:
                raise PeftkitError(
                    f"{where}: {dim.key} = {_show(value)} does not make a valid recipe from {recipe_path}: {err}"
                ) from None
    return space


def read_space_file(path: str) -> dict[str, Dimension | None]:
    """Parse a space YAML file: `key: [choices]`, `key: {low, high, log}` or `key: null` (remove)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PeftkitError(
            f"--space: file '{path}' not found. Give the path of a search-space YAML file."
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise PeftkitError(f"--space: cannot read '{path}' as YAML ({err}). Fix the file's syntax.") from None
    if not isinstance(data, dict) or not data:
        raise PeftkitError(
            f"--space {path}: expected a mapping of recipe fields to values, e.g. `method.r: [4, 8, 16]` and "
            f"`train.learning_rate: {{low: 1.0e-4, high: 1.0e-2, log: true}}`; found {_show(data)}."
        )
    return {str(key): _dimension(path, str(key), value) for key, value in data.items()}


def _dimension(path: str, key: str, value) -> Dimension | None:
    fail = f"--space {path}: {key}"
    if "." not in key:
        raise PeftkitError(
            f"{fail}: name a recipe field with its section, e.g. train.learning_rate or method.r."
        )
    if key in _FIXED:
        raise PeftkitError(f"{fail}: tune sets this itself ({_FIXED[key]}); remove it from the space file.")
    if value is None:
        return None
    if isinstance(value, list):
        if not value or not all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
            raise PeftkitError(
                f"{fail}: a list of choices must hold one or more numbers, words or true/false, found "
                f"{_show(value)}."
            )
        return Dimension(key, choices=tuple(value))
    if isinstance(value, dict):
        unknown = set(value) - _RANGE_KEYS
        low, high, log = value.get("low"), value.get("high"), value.get("log", False)
        if (
            unknown
            or not (_number(low) and _number(high))
            or not isinstance(log, bool)
            or not low < high
            or (log and low <= 0)
        ):
            raise PeftkitError(
                f"{fail}: a range is {{low: NUMBER, high: NUMBER, log: true|false}} with low < high (and low > 0 "
                f"when log), found {_show(value)}."
            )
        return Dimension(key, low, high, log=log)
    raise PeftkitError(
        f"{fail}: expected a list of choices, a range {{low, high, log}}, or null to remove it; found "
        f"{_show(value)}."
    )


def suggest(trial, space: dict[str, Dimension]) -> dict:
    """The trial's value for every dimension (Optuna's suggest_* calls), by recipe field."""
    params = {}
    for key, dim in space.items():
        if dim.choices is not None:
            params[key] = trial.suggest_categorical(key, dim.choices)
        elif isinstance(dim.low, int) and isinstance(dim.high, int):
            params[key] = trial.suggest_int(key, dim.low, dim.high, log=dim.log)
        else:
            params[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
    return params


def baseline_params(recipe: Recipe, space: dict[str, Dimension]) -> dict:
    """The recipe's own values of the space's fields (those inside the space): the first trial to run."""
    values = {key: current_value(recipe, key) for key in space}
    return {key: v for key, v in values.items() if v is not None and space[key].contains(v)}


def _number(value: object) -> TypeGuard[int | float]:
    """An int or float, not a bool (YAML's true/false)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, float) else f"{value:g}"
    return text if len(text) <= 200 else text[:197] + "..."
