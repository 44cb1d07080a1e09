"""Train tiny adapters for the quantization / merge / swap / fingerprint tests (seconds each)."""

from __future__ import annotations

from pathlib import Path

from peftkit.recipe import load_recipe
from peftkit.training.recipe import train
from tests.conftest import write_recipe


def train_tiny(
    tmp: Path, name: str, *, model: Path, card: Path, method: dict | None = None, epochs: int = 2, **sections
) -> Path:
    """Train a tiny recipe into tmp/name and return its adapter folder."""
    recipe = write_recipe(
        tmp / f"{name}.yaml",
        model=model,
        card=card,
        out=tmp / name,
        method=method,
        train={"epochs": epochs, "learning_rate": 0.01},
        **sections,
    )
    return train(load_recipe(recipe), progress=False) / "adapter"
