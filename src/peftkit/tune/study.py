"""The tune workflow, top to bottom: checks → storage and study → lost trials back in the queue → trials → report.

A study lives in an Optuna storage: `sqlite:///tune/NAME/study.db` by default, any SQLAlchemy database URL
(PostgreSQL, MySQL) or `journal:PATH` (Optuna's file journal, fit for NFS). Every `peftkit tune` process pointed at
the same storage and study name works on the same study: trials are handed out by the storage, and `--trials N`
is the study's total (finished = complete or pruned), so a rerun or a second process only adds what is missing.

The first process creates the study and queues its first trials: the recipe's own settings (the baseline every
other trial is compared with), then a few seeded random points; the TPE sampler takes over after them. A trial
whose process was killed is retried: on this machine at the next start (its process is gone), on a database
storage also elsewhere, once its heartbeat is stale.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from peftkit.errors import PeftkitError
from peftkit.fileio import pid_alive
from peftkit.recipe import Recipe
from peftkit.tune.objective import TrialSetup, run_trial
from peftkit.tune.space import Dimension, baseline_params

HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180  # a trial silent for 3 minutes is taken as lost
PRUNERS = ("median", "halving", "none")
LOWER_IS_BETTER = ("loss", "perplexity")
Direction = Literal["minimize", "maximize"]


def objective_metric(recipe: Recipe, metric: str | None) -> tuple[str, Direction]:
    """(metric, 'maximize' | 'minimize'): `metric`, else the recipe's headline metric (eval.metrics[0])."""
    from peftkit.inference.metrics import BUILTIN

    name = metric or (recipe.eval.metrics[0] if recipe.eval.metrics else "loss")
    allowed = ["loss", "perplexity"] if recipe.model.task == "causal_lm" else [*BUILTIN, "loss"]
    if name not in allowed:
        where = "--metric" if metric else "eval.metrics[0] (the recipe's headline metric)"
        raise PeftkitError(
            f"{where}: tune cannot optimise '{name}' for a {recipe.model.task} recipe. Choose one of "
            f"{', '.join(allowed)}: pass --metric NAME, or put it first in the recipe's eval.metrics."
        )
    return name, "minimize" if name in LOWER_IS_BETTER else "maximize"


def open_storage(url: str):
    """An Optuna storage for `url`: `journal:PATH`, or a database URL (heartbeat on, killed trials retried)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise PeftkitError(
            f"--storage: '{url}' is not a storage URL. Use sqlite:///PATH.db (one machine, or a shared disk), "
            f"journal:PATH (a file on a shared disk, e.g. NFS), or a database URL such as "
            f"postgresql://USER:PASSWORD@HOST/DB."
        )
    sqlite = url.startswith("sqlite:///")
    if sqlite:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(
            url,
            # SQLite locks the whole file per write: wait for another process's write rather than fail.
            engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
    except ImportError as err:
        raise PeftkitError(
            f"--storage: '{_hide_password(url)}' needs a database driver that is not installed ({err}). Install it "
            f"(e.g. pip install psycopg2-binary for PostgreSQL, pymysql for MySQL)."
        ) from None
    except Exception as err:  # SQLAlchemy: bad URL, unreachable server, refused login
        raise PeftkitError(
            f"--storage: cannot open '{_hide_password(url)}': {type(err).__name__}: {str(err)[:300]}. Check the "
            f"URL, that the database server is reachable and that the user may create tables."
        ) from None


def open_study(storage, name: str, direction: Direction, meta: dict):
    """(study, created): the study `name` in `storage`, created if missing. An existing study must have been
    started with the same `meta` (metric, budget, method, space): trials of different searches do not mix."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
    else:
        for key, value in meta.items():
            study.set_user_attr(key, value)
        return study, True
    stored = study.user_attrs
    differ = [key for key, value in meta.items() if key in stored and stored[key] != value]
    if differ:
        said = "; ".join(f"{k}: study {stored[k]!r}, now {meta[k]!r}" for k in differ)
        raise PeftkitError(
            f"--study: study '{name}' already exists in this storage with other settings ({said})"[:1500]
            + ". Resume it with the same recipe, --budget, --metric and --space, or start a new search with "
            "--study NEW_NAME."
        )
    return study, False


def queue_first_trials(study, recipe: Recipe, space: dict[str, Dimension], n_random: int, seed: int) -> None:
    """The recipe's own settings first (the baseline), then `n_random` seeded random points."""
    import optuna

    study.enqueue_trial(baseline_params(recipe, space), user_attrs={"role": "recipe"})
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    distributions = {key: dim.distribution() for key, dim in space.items()}
    for _ in range(n_random):
        study.enqueue_trial(scratch.ask(distributions).params, user_attrs={"role": "random"})


def requeue_lost_trials(study) -> list[int]:
    """Queue again the settings of trials this machine lost: running under a process that no longer exists
    (killed), or failed by an interrupt. Returns their numbers. Each lost trial is retried once."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    lost = []
    for t in trials:
        attrs = t.user_attrs
        if t.number in retried or attrs.get("host") != host:
            continue
        pid = attrs.get("pid")  # unknown (killed before it was recorded): left to the heartbeat
        killed = t.state == TrialState.RUNNING and isinstance(pid, int) and not pid_alive(pid)
        if killed:
            study.tell(t.number, state=TrialState.FAIL)
        if killed or (t.state == TrialState.FAIL and attrs.get("interrupted")):
            study.enqueue_trial(t.params, user_attrs={"role": attrs.get("role", "tpe"), "retry_of": t.number})
            lost.append(t.number)
    return lost


def run_tune(
    recipe_path: str,
    *,
    overrides: list[str],
    trials: int,
    budget: int | None,
    space: dict[str, Dimension],
    metric: str | None,
    output: Path,
    storage_url: str,
    study_name: str,
    pruner: str = "median",
    say: Callable[[str], None] = print,
):
    """Run the study to `trials` finished trials (this process's share) and return it."""
    import optuna
    from optuna.trial import TrialState

    from peftkit.recipe import load_recipe
    from peftkit.training.preflight import preflight

    recipe = load_recipe(recipe_path, overrides)
    metric, direction = objective_metric(recipe, metric)
    checked = preflight(recipe, training=False)  # a bad card or model is refused before the study exists
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    meta = {
        "metric": metric,
        "budget": budget,
        "method": recipe.method.name,
        "space": {key: dim.describe() for key, dim in space.items()},
        "overrides": list(overrides),
    }
    output.mkdir(parents=True, exist_ok=True)
    with _file_lock(output / ".study.lock"):  # one process at a time creates tables, the study, its queue
        storage = open_storage(storage_url)
        study, created = open_study(storage, study_name, direction, meta)
        if created:
            queue_first_trials(study, recipe, space, n_random_trials(trials), recipe.train.seed)
        lost = requeue_lost_trials(study)
    if lost:
        say(f"retrying trial(s) {', '.join(map(str, lost))}: their process stopped before they finished")
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    study.sampler = optuna.samplers.TPESampler(
        seed=recipe.train.seed + len(study.get_trials(deepcopy=False)),
        n_startup_trials=n_random_trials(trials) + 1,
    )
    study.pruner = make_pruner(pruner)
    setup = TrialSetup(
        recipe_path=recipe_path,
        overrides=list(overrides),
        space=space,
        metric=metric,
        budget=budget,
        train_size=checked.counts["train"],
        trials_dir=output / "trials",
    )
    if done < trials:
        say(f"study '{study_name}': {done} of {trials} trials finished; optimising {metric} ({direction}) …")
        _quiet_libraries()
        study.optimize(
            lambda trial: run_trial(trial, setup),
            n_trials=trials - done,
            callbacks=[
                optuna.study.MaxTrialsCallback(trials, states=finished),
                lambda s, t: say(describe_trial(s, t, metric)),
            ],
        )
    return study


def n_random_trials(trials: int) -> int:
    """Seeded random trials after the baseline, before TPE: a third of the study, at most 10."""
    return min(10, trials // 3)


def make_pruner(name: str):
    """`median`: stop a trial whose validation score is below the median of earlier trials at the same point
    (from the second in-loop validation on, once 3 trials finished); `halving`: successive halving (keep the
    better half at each validation); `none`: never stop a trial."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise PeftkitError(f"--pruner: '{name}' is not a pruner. Choose one of {', '.join(PRUNERS)}.")


def describe_trial(study, trial, metric: str) -> str:
    """One line per finished trial: its result, its settings and the best so far."""
    from optuna.trial import TrialState

    settings = ", ".join(f"{key.split('.')[-1]} {_short(v)}" for key, v in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        result = f"{metric} {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(max(trial.intermediate_values, default=0))
        shown = (
            f" ({metric} {last:.4f} at validation {len(trial.intermediate_values)})"
            if last is not None
            else ""
        )
        result = f"pruned{shown}"
    else:
        result = trial.state.name.lower()
    try:
        best = f" | best: trial {study.best_trial.number}, {study.best_value:.4f}"
    except ValueError:  # no complete trial yet
        best = ""
    return f"trial {trial.number} ({trial.user_attrs.get('role', 'tpe')}): {result} | {settings}{best}"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _hide_password(url: str) -> str:
    import re

    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)[:200]


@contextmanager
def _file_lock(path: Path):
    """An exclusive lock on `path` (fcntl) for the `with` block: processes on one machine take turns."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _quiet_libraries() -> None:
    """Trials print one line each: no model-load reports or progress bars from the libraries."""
    import datasets
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    datasets.disable_progress_bars()
