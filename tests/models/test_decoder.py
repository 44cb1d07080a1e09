"""Decoder classification pools the last real token: batched == one-by-one with any padding side, pad == eos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftkit.data.prepare import tokenize_texts
from peftkit.inference.forward import forward_split
from peftkit.methods.apply import apply_method
from peftkit.models.decoder import backbone
from peftkit.models.load import load_base_model, load_tokenizer
from peftkit.models.sources import resolve_source
from tests.helpers import build_tiny_decoder, make_texts


def _model(folder, method="lora", settings=None):
    source = resolve_source(str(folder))
    tok = load_tokenizer(source)
    model = load_base_model(
        source, task="classification", labels=["neg", "pos"], pad_token_id=tok.pad_token_id, device="cpu"
    )
    torch.manual_seed(1)
    # init_lora_weights=False: a non-zero update, so the adapter is part of what is compared.
    settings = settings if settings is not None else {"init_lora_weights": False}
    model = apply_method(model, name=method, settings=settings, task="classification").eval()
    return model, tok


def _ids(tok, n=12, eos=False):
    ids = tokenize_texts(tok, [t for t, _ in make_texts(n, seed=5)], 40)
    return [x + [tok.eos_token_id] for x in ids] if eos else ids


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("eos", [False, True], ids=["plain", "ends-in-eos"])
def test_batched_equals_one_by_one(arch, side, eos, tiny_gpt2, tiny_llama):
    model, tok = _model(tiny_gpt2 if arch == "gpt2" else tiny_llama)
    assert tok.pad_token_id == tok.eos_token_id == model.config.pad_token_id  # pad == eos, set on both
    ids = _ids(tok, eos=eos)
    assert len({len(x) for x in ids}) > 3  # real padding in the batches
    batched, _ = forward_split(
        model, ids, None, pad_token_id=tok.pad_token_id, padding_side=side, batch_size=12
    )
    single, _ = forward_split(
        model, ids, None, pad_token_id=tok.pad_token_id, padding_side=side, batch_size=1
    )
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    # And the pooled token is the real last one (the eos itself when the text ends in eos): compare with the
    # head applied by hand to the last position of the unpadded sequence.
    with torch.no_grad():
        for i in (0, 5):
            hidden = backbone(model.base_model.model)(input_ids=torch.tensor([ids[i]])).last_hidden_state
            by_hand = model.base_model.model.score(hidden[:, -1]).numpy()[0]
            np.testing.assert_allclose(batched[i], by_hand, atol=1e-5, rtol=0)


def test_left_and_right_padding_agree(tiny_gpt2):
    # GPT-2 has absolute positions: left padding only agrees because positions are counted from the mask.
    model, tok = _model(tiny_gpt2)
    ids = _ids(tok)
    left, _ = forward_split(
        model, ids, None, pad_token_id=tok.pad_token_id, padding_side="left", batch_size=6
    )
    right, _ = forward_split(
        model, ids, None, pad_token_id=tok.pad_token_id, padding_side="right", batch_size=6
    )
    np.testing.assert_allclose(left, right, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_prompt_tuning_pools_the_real_last_token(side, tiny_gpt2):
    # Prompt tuning feeds inputs_embeds (virtual tokens first); transformers would pool the last position.
    model, tok = _model(tiny_gpt2, "prompt_tuning", {"num_virtual_tokens": 4})
    ids = _ids(tok)
    batched, _ = forward_split(
        model, ids, None, pad_token_id=tok.pad_token_id, padding_side=side, batch_size=12
    )
    single, _ = forward_split(
        model, ids, None, pad_token_id=tok.pad_token_id, padding_side=side, batch_size=1
    )
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_decoder_without_pad_or_eos_is_refused(tmp_path):
    from peftkit.errors import PeftkitError

    folder = build_tiny_decoder(tmp_path / "no-eos", "gpt2", eos=None)
    with pytest.raises(PeftkitError) as err:
        load_tokenizer(resolve_source(str(folder)))
    msg = str(err.value)
    assert "neither a pad token nor an eos token" in msg and "pad_token" in msg and str(folder) in msg


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def cls_run(request, pretrained_gpt2, pretrained_llama, tiny_card, tmp_path_factory):
    from peftkit.cli import main
    from tests.helpers import write_recipe

    tmp = tmp_path_factory.mktemp(f"cls-{request.param}")
    model = pretrained_gpt2 if request.param == "gpt2" else pretrained_llama
    recipe = write_recipe(
        tmp / "r.yaml",
        model=model,
        card=tiny_card,
        out=tmp / "run",
        train={"epochs": 3, "learning_rate": 0.01},
    )
    assert main(["train", str(recipe), "--no-progress"]) == 0
    return tmp / "run"


def test_decoder_classification_train_then_predict(cls_run, capsys):
    import json

    from peftkit.cli import main

    metrics = json.loads((cls_run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.85, metrics["test"]
    capsys.readouterr()
    texts = ["the film was superb and witty", "a dull and boring plot", "the actors were lovely", "awful"]
    assert main(["predict", str(cls_run), *texts, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] == ["pos", "neg", "pos", "neg"]


def test_validate_refuses_a_decoder_without_pad_or_eos(tmp_path, capsys):
    from peftkit.cli import main
    from tests.helpers import write_checked_card, write_recipe

    folder = build_tiny_decoder(tmp_path / "no-eos", "llama", eos=None)
    card = write_checked_card(tmp_path / "data", make_texts(60))
    recipe = write_recipe(tmp_path / "r.yaml", model=folder, card=card, out=tmp_path / "run")
    for command in ("validate", "train"):
        assert main([command, str(recipe)]) == 2
        err = capsys.readouterr().err
        assert "neither a pad token nor an eos token" in err and "tokenizer_config.json" in err, command
    assert not (tmp_path / "run").exists()
