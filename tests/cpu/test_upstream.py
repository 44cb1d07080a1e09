"""The CPU fast path on the installed transformers / peft: it engages where it was checked (transformers 5.23.0,
5.24.0, 5.25.0 with peft 0.21.0 / 0.21.2), and where a library lacks what it plugs into it stays off with a
warning instead of failing or computing something else."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from peftkit import cpu
from peftkit.cpu.upstream import CHECKED, FastPathUnavailable
from peftkit.methods.apply import apply_method
from peftkit.models.load import load_model_and_tokenizer
from peftkit.models.sources import resolve_source


def _lora_bert(folder):
    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer(
        resolve_source(str(folder)), task="classification", labels=["neg", "pos"], device="cpu"
    )
    return apply_method(model, name="lora", settings={"r": 4}, task="classification")


def test_fast_path_engages_on_the_installed_versions(tiny_bert):
    import peft
    import transformers

    model = _lora_bert(tiny_bert)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FastPathUnavailable)  # a fallback here is the upgrade break to look at
        counts = cpu.enable(model)
    # 2 layers × (query, key, value, attention output, intermediate, output) + the pooler's dense layer
    assert counts == {"dropout": counts["dropout"], "attention": 1, "lora": 13}, (
        f"CPU fast path on transformers {transformers.__version__} / peft {peft.__version__} "
        f"(checked on {CHECKED}): {counts}"
    )
    assert counts["dropout"] > 0
    assert model.config._attn_implementation == "peftkit_cpu"


def test_attention_stays_off_with_a_warning_when_transformers_lacks_it(tiny_bert, monkeypatch):
    model = _lora_bert(tiny_bert)
    monkeypatch.setitem(sys.modules, "transformers.integrations.sdpa_attention", None)  # import fails
    with pytest.warns(FastPathUnavailable, match="CPU training attention is off for this run") as record:
        counts = cpu.enable(model)
    assert counts["attention"] == 0 and counts["lora"] == 13
    assert model.config._attn_implementation == "sdpa"
    assert "sdpa_attention" in str(record[0].message) and CHECKED in str(record[0].message)


def test_fused_lora_stays_off_with_a_warning_when_peft_lacks_an_attribute(tiny_bert):
    from peft.tuners.lora.layer import Linear

    model = _lora_bert(tiny_bert)
    first = next(m for m in model.modules() if type(m) is Linear)
    del first.lora_variant  # as if peft had renamed it
    with pytest.warns(FastPathUnavailable, match="fused LoRA layer is off for this run: .*'lora_variant'"):
        counts = cpu.enable(model)
    assert counts["lora"] == 0 and counts["attention"] == 1
    assert "forward" not in vars(first)  # PEFT's own forward stays
