"""`model.pooling: mean`: what it computes, and that it travels with the adapter, the merge, the card and swaps."""

from __future__ import annotations

import json

import pytest
import torch

from peftkit.errors import PeftkitError
from peftkit.models.load import load_base_model, load_tokenizer
from peftkit.models.pooling import MeanPooler
from peftkit.models.sources import resolve_source
from peftkit.recipe import load_recipe
from peftkit.training.recipe import train
from tests.helpers import write_recipe

TEXTS = ["good film", "the plot was very dull and the actors were tired", "a witty and sharp story"]


def _load(folder, pooling):
    source = resolve_source(str(folder))
    tok = load_tokenizer(source)
    model = load_base_model(
        source,
        task="classification",
        labels=["neg", "pos"],
        pad_token_id=tok.pad_token_id,
        device="cpu",
        pooling=pooling,
    )
    return model.eval(), tok


def test_mean_pooling_feeds_the_mean_of_real_tokens_to_the_classifier(tiny_bert):
    model, tok = _load(tiny_bert, "mean")
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padded rows, so a mean over every position would differ
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = model.classifier((hidden * mask).sum(1) / mask.sum(1))
        alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in TEXTS])
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(alone, logits, atol=1e-5, rtol=0)
    assert model.config.peftkit_pooling == "mean"
    assert not any(
        k.startswith("bert.pooler") for k in model.state_dict()
    )  # nothing of the [CLS] pooler is left
    plain, _ = _load(tiny_bert, "model")
    assert "bert.pooler.dense.weight" in plain.state_dict() and not hasattr(plain.config, "peftkit_pooling")


def test_mean_pooling_under_prefix_tuning_reads_the_mask_from_the_right(tiny_bert):
    from peftkit.methods.apply import apply_method

    model, tok = _load(tiny_bert, "mean")
    model = apply_method(
        model, name="prefix_tuning", settings={"num_virtual_tokens": 4}, task="classification"
    )
    model.eval()
    with torch.no_grad():
        batch = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
        alone = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in TEXTS])
    torch.testing.assert_close(alone, batch, atol=1e-5, rtol=0)


def test_mean_pooling_refusals(tiny_gpt2, tiny_bert, tmp_path, capsys):
    """Bad poolings are refused with the fix; `validate` and `train` refuse before anything is written."""
    from peftkit.cli import main

    with pytest.raises(PeftkitError, match="model.pooling: mean needs a BERT-style encoder"):
        _load(tiny_gpt2, "mean")
    recipe = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card="rotten_tomatoes", out=tmp_path / "out")
    with pytest.raises(PeftkitError, match="model.pooling"):
        load_recipe(recipe, ["model.pooling=max"])
    # Refused before anything is written: a decoder, and a pooler to train that mean pooling removed.
    gpt = write_recipe(tmp_path / "g.yaml", model=tiny_gpt2, card="rotten_tomatoes", out=tmp_path / "g")
    for path, extra, message in [
        (gpt, [], "is a gpt2 decoder"),
        (recipe, ["method.modules_to_save=[pooler]"], "'pooler' has nothing to train"),
    ]:
        for command in ("validate", "train"):
            assert main([command, str(path), "model.pooling=mean", *extra]) == 2
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "g").exists()


def test_mean_pooled_adapter_loads_publishes_and_refuses_a_mixed_swap(tiny_bert, tiny_card, tmp_path):
    from peftkit.adapters.bundle import load_adapter
    from peftkit.adapters.card import snippets
    from peftkit.inference.adapter_set import AdapterSet

    def run(name, overrides):
        recipe = write_recipe(
            tmp_path / f"{name}.yaml",
            model=tiny_bert,
            card=tiny_card,
            out=tmp_path / name,
            train={"epochs": 1, "learning_rate": 0.01},
        )
        return train(load_recipe(recipe, overrides), progress=False) / "adapter"

    mean, cls = run("mean", ["model.pooling=mean"]), run("cls", [])
    assert json.loads((mean / "peftkit_adapter.json").read_text())["pooling"] == "mean"
    assert "pooling: mean" in (tmp_path / "mean" / "recipe.resolved.yaml").read_text()
    loaded = load_adapter(mean)
    assert isinstance(loaded.model.base_model.model.bert.pooler, MeanPooler)

    # Its merged form (a sentence-transformers folder) is checked in tests/test_interop.py.
    _, plain = snippets(
        base="/models/minilm", adapter="adapter", task="classification", labels=["neg", "pos"], pooling="mean"
    )
    compile(plain, "snippet", "exec")
    assert "import peftkit" not in plain and "from peftkit" not in plain
    assert "PeftModel" not in plain and "SentenceTransformer('merged')" in plain

    adapters = AdapterSet()
    adapters.add("mean", mean)
    with pytest.raises(PeftkitError, match="model.pooling: expected mean, found model"):
        adapters.add("cls", cls)
