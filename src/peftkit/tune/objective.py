"""One trial: the recipe with the trial's settings, trained on the tune budget, scored on the validation split.

The test split is never evaluated. Every trial keeps the recipe's seed, so trials differ only by their settings
(same initial adapter, same data order). The validation metric is reported to Optuna at each in-loop evaluation
(a fixed number per trial, at the same fractions of the budget whatever the batch size), and the pruner may stop
the trial there: `TrialPruned` raised from the training callback ends the run.
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from peftkit.recipe import Recipe, load_recipe
from peftkit.training.loop import TrainCallback
from peftkit.tune.space import Dimension, as_override, suggest

# In-loop validations per trial are EVALUATIONS - 1: the last point is the final evaluation.
EVALUATIONS = 4


@dataclass
class TrialSetup:
    """What every trial of a study shares."""

    recipe_path: str
    overrides: list[str]
    space: dict[str, Dimension]
    metric: str
    budget: int | None
    train_size: int
    """Examples in the card's training split (before the budget)."""
    trials_dir: Path


class PruneOnValidation(TrainCallback):
    """Reports each in-loop validation score to the trial (step = the evaluation's number) and raises
    `optuna.TrialPruned` when the study's pruner says the trial is behind."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric, self.evaluations = trial, metric, 0

    def on_evaluate(self, step: int, metrics: dict) -> None:
        import optuna

        self.evaluations += 1
        value = metrics[self.metric]
        self.trial.report(value, self.evaluations)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at", self.evaluations)
            pruned = optuna.TrialPruned(
                f"{self.metric} {value:.4f} at validation {self.evaluations} (step {step})"
            )
            pruned.quiet = True  # type: ignore[attr-defined]  # the study reports it; no "run stopped" note
            raise pruned


def trial_recipe(setup: TrialSetup, params: dict, run_dir: Path) -> Recipe:
    """The recipe a trial trains: the base recipe with the trial's settings, the tune budget, its own run folder,
    EVALUATIONS - 1 in-loop validations, no checkpoints and no tensorboard."""
    recipe = load_recipe(
        setup.recipe_path, [*setup.overrides, *(as_override(k, v) for k, v in params.items())]
    )
    if setup.budget:
        recipe.data.max_train_examples = setup.budget
    if setup.metric not in recipe.eval.metrics and setup.metric not in ("loss", "perplexity"):
        recipe.eval.metrics = [*recipe.eval.metrics, setup.metric]  # computed only when listed
    tc = recipe.train
    examples = min(setup.train_size, recipe.data.max_train_examples or setup.train_size)
    steps = tc.max_steps or max(
        1, math.ceil(math.ceil(examples / (tc.batch_size * tc.grad_accum_steps)) * tc.epochs)
    )
    tc.eval_every = max(1, math.ceil(steps / EVALUATIONS))
    tc.output_dir = str(run_dir)
    tc.save_every = None
    tc.report_to = "none"
    return recipe


def run_trial(trial, setup: TrialSetup) -> float:
    """Train one trial and return its validation score (Optuna's objective)."""
    from peftkit.training.recipe import train

    params = suggest(trial, setup.space)
    run_dir = setup.trials_dir / f"trial-{trial.number:04d}"
    attrs = {"host": socket.gethostname(), "pid": os.getpid(), "run_dir": str(run_dir)}
    if "role" not in trial.user_attrs:  # queued trials bring theirs (recipe, random, retry)
        attrs["role"] = "tpe"
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    recipe = trial_recipe(setup, params, run_dir)
    trial.set_user_attr("seed", recipe.train.seed)
    try:
        out = train(
            recipe,
            overwrite=True,
            progress=False,
            callbacks=[PruneOnValidation(trial, setup.metric)],
            evaluate_test=False,
        )
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)  # a rerun of the study runs these settings again
        raise
    metrics = json.loads((out / "metrics.json").read_text())
    validation = metrics["validation"]
    for key, value in validation.items():
        if isinstance(value, float):
            trial.set_user_attr(f"validation.{key}", value)
    trial.set_user_attr("train_seconds", metrics["train"]["seconds"])
    return validation[setup.metric]
