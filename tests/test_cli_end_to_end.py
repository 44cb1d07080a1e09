"""train → run folder → eval → predict through the real CLI entry point, on a tiny BERT."""

from __future__ import annotations

import json

import pytest
import torch

from peftkit.cli import main
from tests.helpers import write_recipe


@pytest.fixture(scope="module")
def run(tiny_bert, tiny_card, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    recipe = write_recipe(
        tmp / "r.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp / "run",
        train={"epochs": 3, "learning_rate": 0.01, "log_every": 2},
    )
    assert main(["train", str(recipe), "--no-progress", "data.max_length=24"]) == 0
    return tmp / "run"


def test_run_folder_contents(run):
    assert {p.name for p in run.iterdir()} >= {"adapter", "metrics.json", "recipe.resolved.yaml", "plots"}
    adapter = run / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    meta = json.loads((adapter / "peftkit_adapter.json").read_text())
    assert meta["labels"] == ["neg", "pos"] and meta["task"] == "classification"
    assert meta["base_model"]["content_hash"].startswith("sha256:")
    # The override reached the resolved recipe.
    assert "max_length: 24" in (run / "recipe.resolved.yaml").read_text()
    # No temporary files left behind.
    assert not list(run.rglob("*.tmp"))


def test_metrics_learned_the_signal(run):
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["n"] == 40
    assert test["accuracy"] >= 0.9, test
    assert len(test["confusion_matrix"]) == 2 and sum(map(sum, test["confusion_matrix"])) == 40
    assert set(test["per_class"]) == {"neg", "pos"}
    assert metrics["train"]["steps"] == 3 * 15  # 120 train examples / batch 8 = 15 steps per epoch
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]


@pytest.mark.integration
@pytest.mark.parametrize("schedule", [{"epochs": 2}, {"epochs": 1, "eval_every": 2}])
def test_validation_once_per_point_and_not_in_the_training_time(
    schedule, tiny_bert, tiny_card, tmp_path, monkeypatch
):
    """In-loop evaluations (epoch ends, or every `eval_every` steps) skip the last step, which the final evaluation
    covers and logs as the eval curve's last point; their time is not counted as training time (metrics' seconds
    and examples/s)."""
    import time

    from peftkit.training import recipe as train_module

    calls, real = [], train_module.evaluate_split

    def slow_evaluate(model, split, *, full=False, **kwargs):
        calls.append("final" if full else "in-loop")
        time.sleep(3.0)
        return real(model, split, full=full, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_split", slow_evaluate)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp_path / "run",
        train={**schedule, "max_steps": 4, "batch_size": 8, "output_dir": str(tmp_path / "run")},
    )
    assert main(["train", str(recipe), "--no-progress", "data.max_train_examples=16"]) == 0
    assert calls == ["in-loop", "final", "final"]  # step 2 (of 4); then the final evaluation, once per split
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval/accuracy" in r] == [2, 4]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["seconds"] < 3.0  # the 3 s evaluation at step 2 is not training time
    assert log[-1]["eval/accuracy"] == metrics["validation"]["accuracy"]


def test_eval_matches_training_metrics(run, capsys):
    assert main(["eval", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert out["accuracy"] == pytest.approx(metrics["accuracy"])
    assert out["confusion_matrix"] == metrics["confusion_matrix"]


def test_predict_labels_and_probabilities(run, capsys, tmp_path):
    assert main(["predict", str(run / "adapter"), "a great superb film", "a dull boring plot", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg"]
    for r in rows:
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    f = tmp_path / "in.jsonl"
    f.write_text('{"text": "lovely witty story"}\n{"text": "weak flat script"}\n')
    assert main(["predict", str(run), "--file", str(f)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["pos", "neg"]


def test_plain_peft_loads_same_logits(run, tiny_bert):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peftkit.adapters.bundle import load_adapter

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tok(["a great film", "the plot was dull and messy"], padding=True, return_tensors="pt")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    plain = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    ours = load_adapter(run).model
    with torch.no_grad():
        a, b = plain(**batch).logits, ours(**batch).logits
    assert torch.allclose(a, b, atol=1e-6), (a, b)
