"""method.init_from: a run continues the adapter it starts from (its loss curve, its weights), with the adapter's
method and settings; anything that does not match the adapter is refused before training, naming both sides."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from peftkit.cli import main
from peftkit.recipe import load_recipe
from peftkit.training.recipe import train
from tests.helpers import make_texts, write_card, write_recipe

TRAIN = {"epochs": 1, "log_every": 1, "learning_rate": 0.01}


@pytest.fixture(scope="module")
def first_run(tiny_bert, tiny_card, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("first")
    method = {"name": "lora", "r": 4, "lora_dropout": 0.0}
    recipe = write_recipe(
        tmp / "a.yaml", model=tiny_bert, card=tiny_card, out=tmp / "a", method=method, train=TRAIN
    )
    return train(load_recipe(recipe), progress=False)


def _losses(run) -> list[float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _continue(tmp_path, model, card, init_from, name="b", method=None, **train_settings):
    recipe = write_recipe(
        tmp_path / f"{name}.yaml",
        model=model,
        card=card,
        out=tmp_path / name,
        method={"init_from": str(init_from), **(method or {})},
        train={**TRAIN, **train_settings},
    )
    return load_recipe(recipe)


def test_init_from_continues_the_loss_curve(tmp_path, tiny_bert, tiny_card, first_run):
    first = _losses(first_run)
    fresh = _losses(
        train(
            load_recipe(
                write_recipe(
                    tmp_path / "c.yaml",
                    model=tiny_bert,
                    card=tiny_card,
                    out=tmp_path / "c",
                    method={"name": "lora", "r": 4, "lora_dropout": 0.0},
                    train=TRAIN,
                )
            ),
            progress=False,
        )
    )
    continued = _losses(train(_continue(tmp_path, tiny_bert, tiny_card, first_run), progress=False))
    # A fresh adapter starts where the first run started; the continued one where the first run ended.
    assert fresh[0] == pytest.approx(first[0], abs=1e-6)
    end = sum(first[-3:]) / 3
    assert continued[0] < first[0] - 0.2 and continued[0] < end + 0.1, (first, continued)
    assert sum(continued) / len(continued) < sum(first) / len(first)
    # The method and its settings came from the adapter.
    config = json.loads((tmp_path / "b" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4
    meta = json.loads((tmp_path / "b" / "adapter" / "peftkit_adapter.json").read_text())
    assert meta["method"] == "lora" and meta["init_from"] == str(first_run)


def test_init_from_starts_from_the_adapters_weights(tmp_path, tiny_bert, tiny_card, first_run):
    """A learning rate that cannot move the weights: the continued adapter is the one it started from (a plain
    PEFT adapter too: the same folder without peftkit's metadata)."""
    plain = tmp_path / "plain"
    shutil.copytree(first_run / "adapter", plain)
    (plain / "peftkit_adapter.json").unlink()
    with pytest.warns(UserWarning, match="is a plain PEFT adapter .* could not be checked"):
        run = train(_continue(tmp_path, tiny_bert, tiny_card, plain, learning_rate=1e-12), progress=False)
    a = load_file(str(first_run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    first = json.loads((first_run / "metrics.json").read_text())["test"]["accuracy"]
    assert json.loads((run / "metrics.json").read_text())["test"]["accuracy"] == first


@pytest.mark.parametrize(
    "method, words",
    [
        ({"r": 8}, ["was trained with r: 4, but the recipe says method.r: 8", "Remove method.r"]),
        ({"name": "ia3"}, ["is a lora adapter, but the recipe says method.name: ia3", "Remove method.name"]),
        (
            {"num_virtual_tokens": 8},
            ["'lora' has no setting 'num_virtual_tokens'"],
        ),  # lora: the adapter's
    ],
)
def test_init_from_conflicting_settings(tmp_path, tiny_bert, tiny_card, first_run, capsys, method, words):
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp_path / "run",
        method={"init_from": str(first_run), **method},
    )
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_init_from_other_labels_or_base_is_refused(tmp_path, tiny_bert, tiny_card, first_run, capsys):
    rows = [(text, "good" if label == "pos" else "bad") for text, label in make_texts(80)]
    card = write_card(tmp_path / "data", rows, labels=("bad", "good"))
    init = {"init_from": str(first_run)}
    recipe = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=card, out=tmp_path / "run", method=init)
    assert main(["validate", str(recipe)]) == 2
    assert (
        "was trained on labels ['neg', 'pos'], the data card gives ['bad', 'good']" in capsys.readouterr().err
    )

    other = tmp_path / "other-bert"
    shutil.copytree(tiny_bert, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-5}))
    recipe = write_recipe(tmp_path / "s.yaml", model=other, card=tiny_card, out=tmp_path / "run", method=init)
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "was trained on a different base than this recipe's model.source: base model: expected" in err


def test_init_from_missing_folder(tmp_path, tiny_bert, tiny_card, capsys):
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp_path / "run",
        method={"init_from": "no-such-run"},
    )
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"adapter '{tmp_path / 'no-such-run'}': no such folder" in err  # read from the recipe's folder
