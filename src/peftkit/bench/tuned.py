"""`peftkit bench --tuned DIR`: each method at the settings `peftkit tune` found for it, so a comparison of methods
is not a comparison of how well their defaults happen to suit the data.

DIR holds study folders (`tune/` by default); each `best.json` there names its method and the best trial's
settings. A benched method with tuned settings takes that study's whole method section and its tuned training
fields (learning rate, …); model, data and budget stay the bench's, the same for every row.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.errors import PeftkitError


def read_tuned(folder: str | Path) -> dict[str, dict]:
    """Method name → its `best.json` (with `path`), for every study under `folder`."""
    folder = Path(folder)
    found: dict[str, dict] = {}
    for path in sorted(folder.rglob("best.json")):
        try:
            best = json.loads(path.read_text())
            method = best["method"]["name"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PeftkitError(
                f"--tuned: {path} is not a `peftkit tune` result ({type(err).__name__}: {err}). Remove it, or "
                f"rerun the tune that wrote it."
            ) from None
        if method in found:
            raise PeftkitError(
                f"--tuned: two studies tuned {method}: {found[method]['path']} and {path}. Keep one of them in "
                f"{folder}, or point --tuned at a folder with one study per method."
            )
        found[method] = {**best, "path": str(path)}
    if not found:
        raise PeftkitError(
            f"--tuned: no best.json under '{folder}'. Run `peftkit tune RECIPE --trials N` for the methods to "
            f"compare (their study folders go to tune/ by default), then pass that folder."
        )
    return found


def apply_tuned(recipe, tuned: dict):
    """`recipe` (a copy) with the study's method section and tuned training fields."""
    from peftkit.recipe.schema import MethodSpec

    r = recipe.model_copy(deep=True)
    r.method = MethodSpec(**tuned["method"])
    for key, value in tuned.get("train", {}).items():
        setattr(r.train, key, value)
    return r


def tuned_note(method: str, tuned: dict, budget: int | None) -> str:
    """One line for bench.md: where a method's settings come from (and a budget that differs from the bench's)."""
    params = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuned["params"].items()
    )
    line = (
        f"- {method}: study {tuned['study']} (trial {tuned['trial']}, validation {tuned['metric']} "
        f"{tuned['value']:.4f}): {params}"
    )
    if tuned.get("budget") != budget:
        line += (
            f"; tuned at a budget of {tuned.get('budget') or 'all'} examples, benched at {budget or 'all'}"
        )
    return line
