"""What a study leaves for its user, in the study folder: the best recipe, a table, plots.

- `best.yaml`: the recipe with the best trial's settings (its own data size, not the tune budget, and its own run
  folder), which `peftkit train` runs as it is; `best.json`: the same settings as data (for `peftkit bench
  --tuned`), with the score and the baseline's.
- `trials.md` / `trials.csv`: every trial, its settings, state and validation score.
- `plots/learning_rate.png`: the score against the learning rate (pruned trials at their last validation);
  `plots/importance.png`: how much each setting explains the score (Optuna's fANOVA evaluator).
Everything is read back from the storage, so any process of a shared study can write it.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from peftkit.recipe import load_recipe, recipe_to_yaml
from peftkit.tune.space import as_override

LR_KEY = "train.learning_rate"


def write_report(
    study, out: Path, *, recipe_path: str, overrides: list[str], metric: str, budget: int | None
) -> dict:
    """Write best.yaml / best.json (when a trial completed), trials.md / .csv and plots; return the summary.

    `recipe_path` + `overrides`: the recipe as this process reads it (on another machine of a shared study, the
    path may differ from the one the study was started with)."""
    from optuna.trial import TrialState

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary = {"study": study.study_name, "metric": metric, "budget": budget, "trials": len(trials)}
    summary["direction"] = study.direction.name.lower()
    summary["states"] = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    baseline = next((t for t in complete if t.user_attrs.get("role") == "recipe"), None)
    summary["baseline"] = {"trial": baseline.number, "value": baseline.value} if baseline else None
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots = []
    if complete:
        best = study.best_trial
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params}
        tuned = load_recipe(recipe_path, [*overrides, *(as_override(k, v) for k, v in best.params.items())])
        atomic_write_text(out / "best.yaml", best_recipe_yaml(tuned, study.study_name, best, summary))
        atomic_write_json(out / "best.json", _best_json(tuned, recipe_path, best, summary))
        if LR_KEY in best.params:
            plots.append(_plot_learning_rate(trials, metric, out / "plots" / "learning_rate.png"))
    importances = _importances(study, complete)
    summary["importance"] = importances
    if importances:
        plots.append(_plot_importance(importances, metric, out / "plots" / "importance.png"))
    atomic_write_text(out / "trials.md", render_markdown(trials, summary, plots))
    frame = study.trials_dataframe()
    atomic_write_text(out / "trials.csv", frame.to_csv(index=False) if len(frame) else "")
    return summary


def best_recipe_yaml(recipe, study_name: str, best, summary: dict) -> str:
    """`recipe` (with the best trial's settings) as YAML that `peftkit train` runs as it is, its own run folder and
    a header saying where it comes from."""
    recipe = recipe.model_copy(deep=True)
    recipe.train.output_dir = f"runs/{study_name}-best"
    recipe.description = (recipe.description + " (tuned)").strip()
    baseline = summary["baseline"]
    against = f"; the recipe's own settings: {baseline['value']:.4f}" if baseline else ""
    budget = f"a {summary['budget']:,}-example budget" if summary["budget"] else "the recipe's data"
    head = [
        f"# peftkit tune: the best of study '{study_name}' ({summary['trials']} trials): trial {best.number},",
        f"# {summary['metric']} {best.value:.4f} on validation at {budget}{against}.",
        f"# Tuned: {', '.join(f'{k}={_show(v)}' for k, v in best.params.items())}.",
        "# Train it on the recipe's full data: peftkit train PATH/TO/THIS/best.yaml",
    ]
    return "\n".join(head) + "\n" + recipe_to_yaml(recipe)


def _best_json(recipe, recipe_path: str, best, summary: dict) -> dict:
    return {
        **{k: summary[k] for k in ("study", "metric", "direction", "budget", "baseline")},
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "method": recipe.method.model_dump(mode="json"),
        "train": {k.removeprefix("train."): v for k, v in best.params.items() if k.startswith("train.")},
        "recipe": recipe_path,
    }


def _importances(study, complete) -> dict[str, float]:
    """Each setting's share of the score's variation over complete trials ({} with too few to say)."""
    import optuna

    varied = [
        k for k in (complete[0].params if complete else {}) if len({t.params.get(k) for t in complete}) > 1
    ]
    if len(complete) < 3 or not varied:
        return {}
    try:
        # fANOVA (a random forest, seeded): Optuna's default PED-ANOVA compares the top 10% of trials with the
        # rest, which in a study of tens of trials is one trial and says nothing.
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varied)
    except (RuntimeError, ValueError):  # e.g. every score equal
        return {}
    return {k: float(v) for k, v in found.items()}


def _plot_learning_rate(trials, metric: str, path: Path) -> Path:
    """Score against learning rate: complete trials as dots (the recipe's own ringed), pruned ones as crosses at
    their last validation score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    from optuna.trial import TrialState

    fig, ax = plt.subplots(figsize=(6, 4))
    for state, marker, label in ((TrialState.COMPLETE, "o", "complete"), (TrialState.PRUNED, "x", "pruned")):
        points = [
            (t.params[LR_KEY], _score(t))
            for t in trials
            if t.state == state and LR_KEY in t.params and _score(t)
        ]
        if points:
            ax.scatter(*zip(*points, strict=True), marker=marker, label=label)
    for t in trials:
        if t.user_attrs.get("role") == "recipe" and t.state == TrialState.COMPLETE:
            ax.scatter(
                [t.params[LR_KEY]], [t.value], s=160, facecolors="none", edgecolors="k", label="recipe's own"
            )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on a short range
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"validation {metric}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return path


def _plot_importance(importances: dict[str, float], metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 1 + 0.5 * len(names)))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f"importance for validation {metric} (share)")
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig, path: Path) -> None:
    """PNG bytes, written atomically under a temporary name of this process's own (several processes of a shared
    study may write the report at once)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _score(trial):
    """A trial's value, or (pruned) its last validation score."""
    if trial.value is not None:
        return trial.value
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else None


def render_markdown(trials, summary: dict, plots: list[Path]) -> str:
    """trials.md: what was searched, the best and the baseline, the table, the plots."""
    metric = summary["metric"]
    keys = sorted({k for t in trials for k in t.params})
    lines = [f"# peftkit tune: study {summary['study']}", ""]
    budget = (
        f"{summary['budget']:,} training examples per trial" if summary["budget"] else "the recipe's data"
    )
    lines.append(f"Objective: validation {metric} ({summary['direction']}), {budget}.")
    states = ", ".join(f"{n} {s}" for s, n in summary["states"].items() if n)
    lines += [f"Trials: {summary['trials']} ({states}).", ""]
    if "best" in summary:
        best, base = summary["best"], summary["baseline"]
        lines.append(
            f"**Best: trial {best['trial']}, {metric} {best['value']:.4f}**"
            + (f" (the recipe's own settings, trial {base['trial']}: {base['value']:.4f})." if base else ".")
        )
        lines += ["", "Train it on the full data: `peftkit train best.yaml` (from this folder's path).", ""]
    lines += [
        "| trial | role | state | " + " | ".join(keys) + f" | {metric} | validations |",
        "|---:|---|---|" + "---:|" * len(keys) + "---:|---:|",
    ]
    best_number = summary.get("best", {}).get("trial")
    for t in trials:
        score = _score(t)
        cells = [
            f"**{t.number}**" if t.number == best_number else str(t.number),
            t.user_attrs.get("role", "tpe")
            + (f" (retry of {t.user_attrs['retry_of']})" if "retry_of" in t.user_attrs else ""),
            t.state.name.lower(),
            *(_show(t.params[k]) if k in t.params else "" for k in keys),
            f"{score:.4f}" if score is not None else "",
            str(len(t.intermediate_values)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.get("importance"):
        lines += [
            "",
            "Importance: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importance"].items()) + ".",
        ]
    lines += ["", *(f"![{p.stem}](plots/{p.name})" for p in plots), ""]
    return "\n".join(lines)


def _show(value) -> str:
    return (
        f"{value:.3g}"
        if isinstance(value, float)
        else json.dumps(value)
        if not isinstance(value, str)
        else value
    )
