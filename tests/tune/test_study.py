"""`peftkit tune` end to end on a tiny BERT: trials, pruning, the best recipe, the report, resuming a study."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import optuna
import pytest
import yaml

from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.recipe import load_recipe
from peftkit.tune.objective import TrialSetup, run_trial
from peftkit.tune.report import write_report
from peftkit.tune.space import build_space
from peftkit.tune.study import open_storage


def load(out):
    return optuna.load_study(study_name="tiny-lora", storage=f"sqlite:///{out / 'study.db'}")


def finished(study) -> list:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def test_tune_finds_settings_writes_a_trainable_best_recipe_and_a_report(tmp_path, recipe, capsys):
    out = tmp_path / "study"
    code = main(
        ["tune", str(recipe), "--trials", "4", "--budget", "60", "--output", str(out), "--pruner", "none"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "trial 0 (recipe): macro_f1" in printed and "best recipe:" in printed
    study = load(out)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(finished(study)) == 4
    # trial 0 is the recipe's own settings; the next are seeded random points (4 // 3 = 1), then TPE
    assert trials[0].params == {"train.learning_rate": 0.01, "method.r": 8, "method.lora_alpha": 8}
    assert [t.user_attrs["role"] for t in trials] == ["recipe", "random", "tpe", "tpe"]
    for t in trials:  # every trial trains on the budget, keeps the recipe's seed, never looks at test
        metrics = json.loads((out / "trials" / f"trial-{t.number:04d}" / "metrics.json").read_text())
        assert "test" not in metrics and metrics["train"]["examples"] == 60
        assert t.user_attrs["seed"] == 42 and t.value == metrics["validation"]["macro_f1"]
        assert (
            len(t.intermediate_values) == 3
        )  # 8 steps, validations after steps 2, 4, 6; the 4th is the final
    best = max(trials, key=lambda t: t.value)
    assert best.value >= trials[0].value
    # best.yaml: the recipe with the best settings, on the recipe's own data size, loads and trains as it is
    tuned = load_recipe(out / "best.yaml")
    assert tuned.train.learning_rate == best.params["train.learning_rate"]
    assert tuned.method.settings()["r"] == best.params["method.r"]
    assert tuned.data.max_train_examples is None
    assert tuned.train.output_dir == "runs/tiny-lora-best"
    assert (
        (out / "best.yaml").read_text().startswith("# peftkit tune: the best of study 'tiny-lora' (4 trials)")
    )
    summary = json.loads((out / "best.json").read_text())
    assert summary["params"] == best.params and summary["baseline"]["value"] == trials[0].value
    assert summary["method"]["name"] == "lora" and summary["train"] == {
        "learning_rate": best.params["train.learning_rate"]
    }
    table = (out / "trials.md").read_text()
    assert f"**Best: trial {best.number}, macro_f1 {best.value:.4f}**" in table
    assert "| trial | role | state | method.lora_alpha | method.r | train.learning_rate | macro_f1 |" in table
    assert (out / "plots" / "learning_rate.png").stat().st_size > 1000
    assert len((out / "trials.csv").read_text().splitlines()) == 5


def test_a_rerun_continues_the_study_and_refuses_other_settings(tmp_path, recipe, capsys):
    out = tmp_path / "study"
    args = ["tune", str(recipe), "--budget", "40", "--output", str(out)]
    assert main([*args, "--trials", "2"]) == 0
    first = {t.number: t.value for t in load(out).trials}
    assert main([*args, "--trials", "3"]) == 0
    study = load(out)
    assert len(finished(study)) == 3 and {t.number: t.value for t in study.trials if t.number < 2} == first
    assert main([*args, "--trials", "3"]) == 0  # already there: only the report
    assert len(load(out).trials) == 3
    capsys.readouterr()
    assert main(["tune", str(recipe), "--budget", "50", "--output", str(out), "--trials", "4"]) == 2
    err = capsys.readouterr().err
    assert (
        "--study: study 'tiny-lora' already exists in this storage with other settings (budget: study 40, now 50)"
        in err
    )
    assert "or start a new search with --study NEW_NAME" in err


def test_a_trial_lost_with_its_process_runs_again(tmp_path, recipe, capsys):
    out = tmp_path / "study"
    args = ["tune", str(recipe), "--budget", "40", "--output", str(out)]
    assert main([*args, "--trials", "1"]) == 0
    # A trial left running by a process that was killed (SIGKILL: no chance to mark it failed).
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    study = load(out)
    lost = study.ask({"train.learning_rate": optuna.distributions.FloatDistribution(1e-3, 0.1, log=True)})
    lost.set_user_attr("host", socket.gethostname())
    lost.set_user_attr("pid", int(gone.stdout))
    assert main([*args, "--trials", "2"]) == 0
    assert (
        f"retrying trial(s) {lost.number}: their process stopped before they finished"
        in capsys.readouterr().out
    )
    trials = {t.number: t for t in load(out).trials}
    assert trials[lost.number].state == optuna.trial.TrialState.FAIL
    retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == lost.number)
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params["train.learning_rate"] == lost.params["train.learning_rate"]


def test_pruned_trials_stop_at_an_in_loop_validation(tmp_path, recipe, capsys):
    """The pruner sees every in-loop validation score; a pruned trial ends there without a final evaluation, and
    without the "run stopped" note an interrupted training prints."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    setup = TrialSetup(
        recipe_path=str(recipe),
        overrides=[],
        space=build_space(str(recipe), []),
        metric="macro_f1",
        budget=40,
        train_size=120,
        trials_dir=tmp_path / "trials",
    )
    study.optimize(lambda trial: run_trial(trial, setup), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1] and trial.user_attrs["pruned_at"] == 1
    assert not (tmp_path / "trials" / "trial-0000" / "metrics.json").exists()
    assert "run stopped" not in capsys.readouterr().err


def test_tune_input_errors(tmp_path, recipe, capsys, monkeypatch):
    out = str(tmp_path / "study")
    assert main(["tune", str(recipe), "--trials", "2", "--metric", "f1", "--output", out]) == 2
    assert "--metric: tune cannot optimise 'f1' for a classification recipe. Choose one of accuracy" in (
        capsys.readouterr().err
    )
    assert main(["tune", str(recipe), "--trials", "2", "--storage", "study.db", "--output", out]) == 2
    assert "--storage: 'study.db' is not a storage URL. Use sqlite:///PATH.db" in capsys.readouterr().err
    assert main(["tune", str(recipe), "--trials", "-1"]) == 2
    assert "--trials: expected 0 or more" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    assert main(["tune", str(recipe), "--trials", "2"]) == 2
    assert "pip install 'peftkit[tune]'" in capsys.readouterr().err


def test_a_database_url_without_its_driver_is_named_without_the_password():
    with pytest.raises(PeftkitError) as err:
        open_storage("postgresql://user:secret@localhost/optuna")
    assert "'postgresql://user:***@localhost/optuna' needs a database driver that is not installed" in str(
        err.value
    )
    assert "secret" not in str(err.value)


def test_the_best_recipe_keeps_comments_out_of_the_yaml(tmp_path, recipe):
    assert (
        main(["tune", str(recipe), "--trials", "1", "--budget", "40", "--output", str(tmp_path / "s")]) == 0
    )
    data = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())
    assert set(data) >= {"model", "method", "data", "train", "eval"}


def test_importance_of_each_setting_is_plotted_and_listed(tmp_path, recipe):
    """A study whose score depends on the learning rate only: fANOVA gives it nearly all the importance."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: (
            -abs(t.suggest_float("train.learning_rate", 1e-3, 0.1, log=True) - 0.01)
            + 0 * t.suggest_categorical("method.r", [4, 8])
        ),
        n_trials=12,
    )
    summary = write_report(
        study, tmp_path, recipe_path=str(recipe), overrides=[], metric="macro_f1", budget=None
    )
    assert max(summary["importance"], key=summary["importance"].get) == "train.learning_rate"
    assert summary["importance"]["train.learning_rate"] > 0.8
    assert (tmp_path / "plots" / "importance.png").stat().st_size > 1000
    assert "Importance: train.learning_rate 0." in (tmp_path / "trials.md").read_text()
    # every trial scoring the same says nothing about importance: no plot rather than a misleading one
    flat = optuna.create_study(direction="maximize")
    flat.optimize(lambda t: 1.0 + 0 * t.suggest_float("train.learning_rate", 1e-3, 0.1), n_trials=4)
    assert (
        write_report(
            flat, tmp_path / "flat", recipe_path=str(recipe), overrides=[], metric="macro_f1", budget=None
        )["importance"]
        == {}
    )
