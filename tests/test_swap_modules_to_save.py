"""Swapping adapters that save extra full modules (PEFT `modules_to_save`) besides the head, on one tiny BERT.

AdapterSet gives each adapter a skeleton of the base whose modules are its own but whose tensors are shared. PEFT
wraps a `modules_to_save` module in place (ModulesToSaveWrapper around the original, plus a trained copy): if that
wrapping reached the shared base, one adapter's pooler would leak into the others, or be dropped from its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from peftkit.adapters.bundle import load_adapter
from peftkit.inference.adapter_set import AdapterSet
from tests.helpers import train_tiny
from tests.test_swap_merge import TEXTS, _alone, _logits

# The plain adapter is loaded before and after the pooler-saving ones, so a pooler leaking either way shows.
ORDER = ("lora", "lora_pooler", "prefix_pooler", "lora_again")


@pytest.fixture(scope="module")
def runs(tiny_bert, tiny_card, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swap_mts")
    return {
        "lora_pooler": train_tiny(
            tmp,
            "lora_pooler",
            model=tiny_bert,
            card=tiny_card,
            method={"name": "lora", "r": 4, "modules_to_save": ["pooler"]},
        ),
        "prefix_pooler": train_tiny(
            tmp,
            "prefix_pooler",
            model=tiny_bert,
            card=tiny_card,
            epochs=1,
            method={"name": "prefix_tuning", "num_virtual_tokens": 4, "modules_to_save": ["pooler"]},
        ),
        "lora": train_tiny(tmp, "lora", model=tiny_bert, card=tiny_card),
    }


def _saved_pooler(adapter_dir) -> torch.Tensor | None:
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return next((t for k, t in weights.items() if k.endswith("bert.pooler.dense.weight")), None)


def test_extra_modules_really_trained_and_matter(runs, tiny_bert):
    """Without this the parity test below could not tell a dropped or leaked pooler from the right one."""
    base_weights = load_file(str(tiny_bert / "model.safetensors"))
    base_pooler = base_weights["pooler.dense.weight"]
    for name in ("lora_pooler", "prefix_pooler"):
        saved = _saved_pooler(runs[name])
        assert saved is not None, f"{name}: no pooler saved"
        assert (saved - base_pooler).abs().max() > 1e-2  # seen: 0.098 (lora), 0.066 (prefix)
        # The trained pooler moves the logits: put the base pooler back in its place and they change.
        loaded = load_adapter(runs[name])
        own = _logits(loaded)
        # PEFT's trained copy sits in a ModulesToSaveWrapper; peftkit's prefix tuning keeps it as bert.pooler
        trained = [
            m
            for n, m in loaded.model.named_modules()
            if n.endswith(("bert.pooler.modules_to_save.default", "base_model.bert.pooler"))
        ]
        assert len(trained) == 1, name
        trained[0].dense.load_state_dict({"weight": base_pooler, "bias": base_weights["pooler.dense.bias"]})
        assert np.abs(_logits(loaded) - own).max() > 1e-2  # seen: 0.043 (lora), 0.037 (prefix)
    assert _saved_pooler(runs["lora"]) is None


def test_swap_keeps_each_adapters_saved_modules_to_itself(runs, tiny_bert):
    adapters = AdapterSet()
    for name in ORDER:
        adapters.add(name, runs[name.removesuffix("_again")])
    alone = {name: _alone(runs[name]) for name in ORDER[:-1]}
    alone["lora_again"] = alone["lora"]
    for _ in range(2):  # interleaved: every call follows a swap
        for name in reversed(ORDER):
            np.testing.assert_allclose(adapters.logits(name, TEXTS), alone[name], rtol=0, atol=1e-6)
    for i, a in enumerate(ORDER[:-1]):
        for b in ORDER[i + 1 : -1]:
            assert np.abs(alone[a] - alone[b]).max() > 1e-2, (
                f"{a} and {b} give the same logits"
            )  # seen >= 0.146
    # The shared base itself is never wrapped: its pooler is the plain module with the pretrained weights.
    assert type(adapters.base.bert.pooler).__name__ == "BertPooler"
    base_pooler = load_file(str(tiny_bert / "model.safetensors"))["pooler.dense.weight"]
    assert torch.equal(adapters.base.bert.pooler.dense.weight, base_pooler)
