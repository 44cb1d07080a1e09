"""Early stopping and keep_best: on a run built to peak early, the adapter is the best evaluation's, training
stops `patience` evaluations after it, and a resumed run stops and keeps exactly what the uninterrupted one did."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from peftkit.cli import main
from peftkit.recipe import load_recipe
from peftkit.training.recipe import train
from tests.helpers import Interrupted, flipped, interrupt_at, make_texts, write_recipe, write_split_card


@pytest.fixture(scope="module")
def peaking_card(tmp_path_factory):
    """Validation labels a quarter wrong: its loss falls while the model learns the training words, then rises as
    the model grows confident on the wrong quarter (best near step 16 of the schedule below)."""
    splits = {
        "train": make_texts(96, seed=1),
        "validation": flipped(make_texts(40, seed=2), 0.25),
        "test": make_texts(40, seed=3),
    }
    return write_split_card(tmp_path_factory.mktemp("peak"), splits)


def _recipe(tmp_path, name, model, card, **train):
    settings = {
        "max_steps": 60,
        "eval_every": 2,
        "learning_rate": 0.002,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "early_stopping": {"patience": 3},
        "keep_best": True,
        **train,
    }
    return write_recipe(
        tmp_path / f"{name}.yaml",
        model=model,
        card=card,
        out=tmp_path / name,
        method={"name": "lora", "lora_dropout": 0.0},
        train=settings,
    )


def _evaluations(run) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["eval/loss"] for r in rows if "eval/loss" in r}


def test_early_stopping_keeps_the_best_step(tmp_path, tiny_bert, peaking_card):
    run = train(load_recipe(_recipe(tmp_path, "run", tiny_bert, peaking_card)), progress=False)
    evaluations = _evaluations(run)
    best_step = min(evaluations, key=evaluations.get)
    steps = sorted(evaluations)
    assert steps[0] < best_step < steps[-1], evaluations  # the run peaks early, then gets worse

    metrics = json.loads((run / "metrics.json").read_text())
    best = metrics["best"]
    assert best["step"] == best_step and best["value"] == pytest.approx(evaluations[best_step], abs=1e-6)
    assert best["stopped_early"] and best["kept"] and best["metric"] == "loss" and best["mode"] == "min"
    # patience 3, an evaluation every 2 steps: stopped at the third evaluation without improvement
    assert best["last_step"] == steps[-1] == best_step + 3 * 2 < 60
    assert metrics["train"]["steps"] == best["last_step"]
    # The saved adapter is the best step's, not the last one's: its validation loss is the best one.
    assert metrics["validation"]["loss"] == pytest.approx(best["value"], abs=1e-5)
    assert evaluations[steps[-1]] > best["value"] + 0.01
    card = (run / "adapter" / "README.md").read_text()
    assert f"This adapter is from step {best_step}, the best validation loss ({best['value']:.4f})" in card
    assert f"training stopped early at step {best['last_step']}" in card
    assert not list((run / "checkpoints").glob("best-*")), "the best snapshots go once the adapter is saved"


def test_keep_best_false_keeps_the_last_step_and_says_so(tmp_path, tiny_bert, peaking_card):
    run = train(
        load_recipe(_recipe(tmp_path, "run", tiny_bert, peaking_card, keep_best=False)), progress=False
    )
    metrics = json.loads((run / "metrics.json").read_text())
    best, last = metrics["best"], max(_evaluations(run))
    assert not best["kept"] and best["stopped_early"] and best["last_step"] == last
    assert metrics["validation"]["loss"] == pytest.approx(_evaluations(run)[last], abs=1e-5)
    card = (run / "adapter" / "README.md").read_text()
    assert f"was at step {best['step']}; this adapter is from the last step, {last}" in card


def test_resumed_run_stops_and_keeps_what_the_uninterrupted_run_does(tmp_path, tiny_bert, peaking_card):
    """Stopped at step 21 (checkpoint at 20, two evaluations after the best one already logged): the resumed run
    must count those two, stop at the same step, and keep the same best weights."""
    kw = dict(save_every=4)
    full = train(load_recipe(_recipe(tmp_path, "full", tiny_bert, peaking_card, **kw)), progress=False)
    expected = json.loads((full / "metrics.json").read_text())["best"]
    assert expected["step"] + 4 <= 20 < expected["last_step"], expected  # the interruption falls in patience

    recipe = load_recipe(_recipe(tmp_path, "cut", tiny_bert, peaking_card, **kw))
    with pytest.raises(Interrupted):
        train(recipe, progress=False, callbacks=[interrupt_at(21)])
    train(recipe, resume=True, progress=False)

    got = json.loads((tmp_path / "cut" / "metrics.json").read_text())["best"]
    assert got == pytest.approx(expected)
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


@pytest.mark.parametrize(
    "train_settings, words",
    [
        (
            {"early_stopping": {"metric": "acuracy"}, "eval_every": 2},
            ["train.early_stopping.metric: 'acuracy' is not a validation result", "Did you mean 'accuracy'?"],
        ),
        (
            {"early_stopping": {"patience": 2}, "epochs": 1},
            ["the only validation is the final one", "Set train.eval_every"],
        ),
    ],
)
def test_bad_early_stopping_settings(tmp_path, tiny_bert, tiny_card, capsys, train_settings, words):
    recipe = write_recipe(
        tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run", train=train_settings
    )
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err
    assert not (tmp_path / "run").exists()
