"""Several LoRA adapters (different ranks, target layers and label sets) in ONE forward, routed per row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from peftkit.data.prepare import collate, tokenize_texts
from peftkit.inference.adapter_set import AdapterSet
from peftkit.inference.mixed_batch import MixedLoraModel, routable_reason
from tests.helpers import make_texts

TEXTS = [t for t, _ in make_texts(9, seed=11)]


@pytest.fixture(scope="module")
def adapters(adapter_runs):
    loaded = AdapterSet()
    for name in ("qv", "all3", "dora"):
        loaded.add(name, adapter_runs[{"qv": "lora", "all3": "lora3", "dora": "dora"}[name]])
    return loaded


def _alone(adapters: AdapterSet, name: str, texts: list[str]) -> np.ndarray:
    return adapters.logits(name, texts)


def test_routable_reason_names_what_cannot_be_mixed(adapters):
    assert routable_reason(adapters.entries["qv"].model, "default") is None
    assert routable_reason(adapters.entries["all3"].model, "default") is None
    assert "LoRA variant" in routable_reason(adapters.entries["dora"].model, "default")


def test_one_forward_gives_each_row_its_adapters_own_logits(adapters):
    mixed = MixedLoraModel(adapters.base, {n: (adapters.entries[n].model, "default") for n in ("qv", "all3")})
    tok = adapters.tokenizer
    # Rows grouped by adapter, groups of different sizes and lengths (padding differs from the alone runs).
    layout = [("all3", TEXTS[:2]), ("qv", TEXTS[2:7]), ("all3", TEXTS[7:])]
    ids, groups, start = [], [], 0
    for name, texts in layout:
        ids += tokenize_texts(tok, texts, 32)
        groups.append((name, start, start + len(texts)))
        start += len(texts)
    logits = mixed.logits(collate(ids, tok.pad_token_id, tok.padding_side), groups).numpy()
    assert logits.shape == (len(TEXTS), 3)
    for name, s, e in groups:
        width = len(adapters.entries[name].labels)
        np.testing.assert_allclose(logits[s:e, :width], _alone(adapters, name, TEXTS[s:e]), atol=1e-5, rtol=0)
        assert np.isnan(
            logits[s:e, width:]
        ).all()  # a narrower head's padding can never win an argmax silently
    # The base's weights are shared, not copied: the routed skeleton's embeddings are the base's tensor.
    assert (
        mixed.model.bert.embeddings.word_embeddings.weight
        is adapters.base.bert.embeddings.word_embeddings.weight
    )


def test_rows_of_an_adapter_differ_from_the_base(adapters):
    """The routed rows really carry the adapter: with its LoRA terms removed the logits change by far more than
    the invariant's 1e-5 (a tiny one-epoch LoRA moves them by ~3e-4; its trained head does the rest)."""
    mixed = MixedLoraModel(adapters.base, {"qv": (adapters.entries["qv"].model, "default")})
    tok = adapters.tokenizer
    batch = collate(tokenize_texts(tok, TEXTS, 32), tok.pad_token_id, tok.padding_side)
    with_lora = mixed.logits(batch, [("qv", 0, len(TEXTS))])
    for module in mixed.model.modules():
        if hasattr(module, "loras"):
            module.loras.clear()
    without = mixed.logits(batch, [("qv", 0, len(TEXTS))])
    assert float((with_lora - without).abs().max()) > 1e-4
    assert torch.isfinite(with_lora).all()
