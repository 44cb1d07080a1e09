"""The method registry: one entry per method, read by every consumer (merge refusals, Conv1D checks, bench
suggestions, peftkit's own implementations)."""

from __future__ import annotations

import json

import pytest

from peftkit.errors import PeftkitError
from peftkit.inference.merge import check_mergeable
from peftkit.methods.registry import get_method, merge_refusal_reason, method_names, registered


def test_entries_say_what_each_method_is():
    names = [e.name for e in registered()]
    assert len(names) == len(set(names))
    assert (
        {"lora", "dora", "prefix_tuning", "houlsby", "pfeiffer", "parallel"}
        <= set(names)
        <= set(method_names())
    )
    assert get_method("dora").presets == {"use_dora": True} and get_method("dora").peft_type == "LORA"
    assert get_method("houlsby").peft_type == "BOTTLENECK" and get_method("houlsby").conv1d
    prefix = get_method("prefix_tuning")
    assert prefix.prompt_learning and not prefix.mergeable and prefix.gradient_checkpointing_refusal
    assert prefix.own_implementation("classification") is not None
    assert prefix.own_implementation("causal_lm") is None  # PEFT's
    assert prefix.suggestion("mean").settings == {"num_virtual_tokens": 20}
    assert prefix.suggestion("model").settings["modules_to_save"] == ["pooler"]
    # A PEFT method without an entry passes through, prompt learning as PEFT's config class says.
    assert get_method("multitask_prompt_tuning").prompt_learning


def test_merge_refusals_come_from_the_entries(tmp_path):
    assert merge_refusal_reason("lora") is None
    assert "non-linearity" in merge_refusal_reason("pfeiffer")
    assert "virtual tokens" in merge_refusal_reason("prompt_tuning")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "NOSUCH"}))
    with pytest.raises(
        PeftkitError, match="uses nosuch, which cannot be merged: peftkit does not know the method"
    ):
        check_mergeable(tmp_path, None)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "BOTTLENECK"}))
    with pytest.raises(
        PeftkitError, match="uses houlsby, which cannot be merged: the adapter branch has a non-linea"
    ):
        check_mergeable(tmp_path, {"method": "houlsby"})
