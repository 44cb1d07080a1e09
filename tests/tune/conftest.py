"""Fixtures of the tune tests."""

from __future__ import annotations

import pytest

from tests.helpers import write_recipe


@pytest.fixture
def recipe(tmp_path, tiny_bert, tiny_card):
    """A tiny LoRA recipe with macro-F1 as its headline metric (one epoch, lr 0.01)."""
    return write_recipe(
        tmp_path / "tiny-lora.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp_path / "run",
        train={"epochs": 1, "learning_rate": 0.01},
        eval={"metrics": ["macro_f1", "accuracy"]},
    )
