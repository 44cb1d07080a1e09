"""`train.class_weights`: the weighted loss, its invariants, where it is recorded, and the skewed-labels warning."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from peftkit.cli import main
from peftkit.recipe import load_recipe
from peftkit.training.recipe import train
from tests.helpers import no_dropout_copy, write_recipe


def skewed_card(tiny_card: Path, dest: Path, keep: int = 12) -> Path:
    """A copy of the tiny card whose 'neg' label keeps only `keep` examples (of 100)."""
    dest.mkdir(parents=True, exist_ok=True)
    rows = pd.read_csv(tiny_card.parent / "tiny.csv")
    rows = pd.concat([rows[rows.label == "pos"], rows[rows.label == "neg"].head(keep)])
    rows.to_csv(dest / "tiny.csv", index=False)
    card = dest / "skewed.md"
    shutil.copy(tiny_card, card)
    return card


def run(tmp: Path, name: str, model: Path, card: Path, **train_settings) -> Path:
    path = write_recipe(tmp / f"{name}.yaml", model=model, card=card, out=tmp / name, train=train_settings)
    return train(load_recipe(path), progress=False)


def adapter_weights(run_dir: Path) -> dict:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_weights_of_one_train_exactly_like_the_plain_loss(tmp_path, tiny_bert, tiny_card):
    plain = run(tmp_path, "plain", tiny_bert, tiny_card)
    ones = run(tmp_path, "ones", tiny_bert, tiny_card, class_weights={"neg": 1, "pos": 1})
    a, b = adapter_weights(plain), adapter_weights(ones)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert "class_weights" not in json.loads((plain / "metrics.json").read_text())["train"]


def test_weighted_loss_is_recorded_and_changes_training(tmp_path, tiny_bert, tiny_card):
    card = skewed_card(tiny_card, tmp_path / "data")
    plain = run(tmp_path, "plain", tiny_bert, card)
    weighted = run(tmp_path, "balanced", tiny_bert, card, class_weights="balanced")
    metrics = json.loads((weighted / "metrics.json").read_text())
    # 100 pos + 12 neg in the file, split 60/20/20: the training split's balance sets the weights
    weights = metrics["train"]["class_weights"]
    assert weights["neg"] > 1 > weights["pos"]
    counts = metrics["validation"]["per_class"]
    assert set(counts) == {"neg", "pos"}
    card_text = (weighted / "adapter" / "README.md").read_text()
    assert "Loss: cross-entropy weighted per class (`train.class_weights`): `neg`" in card_text
    changed = [
        k for k, v in adapter_weights(plain).items() if not torch.equal(v, adapter_weights(weighted)[k])
    ]
    assert changed


def one_sgd_step(model_dir: Path, split, tmp: Path, *, batch_size: int, accum: int, class_weights) -> dict:
    """The change of each parameter in one plain-SGD step of `fit` at lr 1 (minus the gradient). SGD is linear in
    the gradient; Adam would turn float noise in near-zero gradients into full-size steps."""
    from accelerate import Accelerator
    from transformers import AutoModelForSequenceClassification

    from peftkit.recipe.schema import TrainSpec
    from peftkit.training.loop import fit
    from peftkit.training.run_log import RunLog

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = TrainSpec(batch_size=batch_size, grad_accum_steps=accum, max_grad_norm=None)
    fit(
        model,
        optimizer,
        scheduler,
        Accelerator(cpu=True),
        data=split,
        settings=settings,
        group_by_length=False,
        pad_token_id=0,
        padding_side="right",
        start_step=0,
        total_steps=1,
        steps_per_epoch=1,
        log=RunLog(tmp, "none", 0, False),
        evaluate=None,
        checkpoint=None,
        progress=False,
        class_weights=class_weights,
    )
    return {name: p.detach() - before[name] for name, p in model.named_parameters()}


@pytest.mark.parametrize("class_weights", [None, [4.0, 0.5]])
def test_accumulated_micro_batches_weigh_like_one_batch(tmp_path, tiny_bert, class_weights):
    """One step over 8 examples == the same 8 as 4 + 4 accumulated: each micro-batch's (weighted) mean loss is
    scaled by its share of the step's (summed weights of) examples, so the gradient is the whole batch's."""
    from transformers import AutoTokenizer

    from peftkit.data.prepare import TokenizedSplit

    model = no_dropout_copy(tiny_bert, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [
        "good film",
        "bad plot",
        "the film was dull",
        "witty",
        "a very moving story",
        "awful",
        "fine",
        "flat",
    ]
    split = TokenizedSplit(tokenizer(texts)["input_ids"], [1, 0, 0, 0, 1, 0, 0, 0])  # 2 pos, 6 neg
    kwargs = dict(class_weights=class_weights)
    whole = one_sgd_step(model, split, tmp_path, batch_size=8, accum=1, **kwargs)
    accumulated = one_sgd_step(model, split, tmp_path, batch_size=4, accum=2, **kwargs)
    assert max(float(d.abs().max()) for d in whole.values()) > 1e-3  # the step did something to compare
    for key in whole:
        torch.testing.assert_close(whole[key], accumulated[key], rtol=1e-3, atol=1e-6)
    if class_weights is not None:  # and the weights changed the gradient
        plain = one_sgd_step(model, split, tmp_path, batch_size=8, accum=1, class_weights=None)
        assert not torch.allclose(plain["classifier.weight"], whole["classifier.weight"], atol=1e-4)


def test_train_warns_on_skewed_labels_when_the_headline_metric_is_accuracy(tmp_path, tiny_bert, tiny_card):
    card = skewed_card(tiny_card, tmp_path / "data")
    path = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=card, out=tmp_path / "run")
    with pytest.warns(UserWarning, match=r"the label distribution is skewed \(rare: 'neg'"):
        train(load_recipe(path), progress=False)
    # macro-F1 as the headline metric: the user already looks at what accuracy hides, so no warning
    quiet = load_recipe(path, ["eval.metrics=[macro_f1, accuracy]", f"train.output_dir={tmp_path / 'run2'}"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(quiet, progress=False)
    assert not [w for w in seen if "skewed" in str(w.message)]


def test_validate_refuses_class_weights_for_unknown_labels(tmp_path, tiny_bert, tiny_card, capsys):
    path = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run")
    assert main(["validate", str(path), "train.class_weights={nge: 3}"]) == 2
    err = capsys.readouterr().err
    assert "train.class_weights: 'nge' is not a label of the data card. Did you mean 'neg'?" in err
    assert not (tmp_path / "run").exists()


def test_data_show_warns_about_a_skewed_card(tmp_path, tiny_card, capsys):
    card = skewed_card(tiny_card, tmp_path / "data")
    assert main(["data", "show", str(card)]) == 0
    out = capsys.readouterr().out
    assert "warning: data card 'skewed', train split: the label distribution is skewed (rare: 'neg'" in out
    assert main(["data", "show", str(tiny_card)]) == 0
    assert "warning" not in capsys.readouterr().out
