"""Builders shared by tests (public names; fixtures stay in conftest.py)."""

from __future__ import annotations

from pathlib import Path


def write_recipe(
    path: Path,
    *,
    model: Path | str,
    card: Path | str,
    out: Path,
    method: dict | None = None,
    train: dict | None = None,
    data: dict | None = None,
    **sections,
) -> Path:
    """A recipe YAML for tiny runs (2 epochs, batch 8, no checkpoints, no tensorboard); dicts extend defaults."""
    import yaml

    recipe = {
        "model": {"source": str(model)},
        "method": method or {"name": "lora"},
        "data": {"card": str(card), "max_length": 32, **(data or {})},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 0.005,
            "output_dir": str(out),
            "save_every": None,
            "report_to": "none",
            **(train or {}),
        },
        **sections,
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
