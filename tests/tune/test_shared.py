"""Real `peftkit tune` processes: two share one study through its storage; a killed one is resumed.

End to end (each process imports the libraries: ~10 s), so marked slow; CI runs them.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

import optuna
import pytest

from peftkit.tune.study import open_storage

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def tune(recipe, out, storage: str, trials: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "peftkit",
        "tune",
        str(recipe),
        "--trials",
        str(trials),
        "--budget",
        "40",
        "--output",
        str(out),
        "--storage",
        storage,
        "--study",
        "shared",
    ]


def finished(study) -> list:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_processes_share_one_study(tmp_path, recipe, kind):
    storage = (
        f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'shared.log'}"
    )
    command = tune(recipe, tmp_path / "study", storage, trials=6)
    procs = [subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    procs.append(
        subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    done = finished(study)
    # --trials is the study's total: each process stops once 6 are finished (two may finish the last together)
    assert 6 <= len(done) <= 7
    assert len({t.user_attrs["pid"] for t in done}) == 2, outputs  # both processes ran trials
    roles = [t.user_attrs["role"] for t in study.trials]
    assert roles.count("recipe") == 1 and roles.count("random") == 2  # the queue was filled once, run once
    assert len({t.number for t in study.trials}) == len(study.trials)


def test_a_killed_tune_resumes_and_reruns_the_trial_it_lost(tmp_path, recipe):
    storage = f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    command = tune(recipe, tmp_path / "study", storage, trials=3)
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lost, deadline = None, time.monotonic() + 300
    while lost is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if not (tmp_path / "study" / "study.db").exists():
            continue
        # the tune creates tables and the study under this lock: reading then could race with it
        with open(tmp_path / "study" / ".study.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                study = optuna.load_study(study_name="shared", storage=storage)
            except KeyError:  # the study is not created yet
                continue
        running = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number >= 1 and "pid" in t.user_attrs and not t.state.is_finished()
        ]
        lost = running[0].number if running else None
    assert lost is not None, "the tune never reached its second trial"
    proc.kill()  # SIGKILL: the trial stays 'running' in the storage
    proc.wait()
    rerun = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"retrying trial(s) {lost}: their process stopped before they finished" in rerun.stdout
    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(finished(study)) == 3
    trials = {t.number: t for t in study.trials}
    assert trials[lost].state == optuna.trial.TrialState.FAIL
    retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == lost)
    assert retry.state.is_finished() and retry.params == trials[lost].params
