"""Files shipped inside installed Python packages (model weights, data), found without importing the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(name: str) -> Path | None:
    """The folder of installed top-level package `name`, or None. find_spec locates it without running its code."""
    if "." in name:
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent
