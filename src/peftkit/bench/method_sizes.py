"""`peftkit methods`: trainable parameters and adapter size for each shipped recipe's method (the README table).

Each method is applied to the real base model and its adapter saved to a temporary folder, so the sizes are those
of real `adapter_model.safetensors` files (float32 weights, head included), not estimates.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class MethodRow:
    """One line of the table."""

    recipe: str
    method: str
    trainable: int
    total: int
    adapter_bytes: int
    merge: str

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total


def method_rows(recipe_paths: list[Path], model_source: str | None = None) -> list[MethodRow]:
    """Apply each recipe's method (on `model_source`, default: the recipe's own model) and measure it."""
    import torch

    from peftkit.data.cards import load_card
    from peftkit.methods.apply import apply_method
    from peftkit.methods.registry import merge_refusal_reason
    from peftkit.models.load import load_model_and_tokenizer
    from peftkit.models.sources import resolve_source
    from peftkit.recipe import load_recipe

    rows = []
    for path in recipe_paths:
        recipe = load_recipe(path, [f"model.source={model_source}"] if model_source else [])
        source = resolve_source(recipe.model.source, recipe.model.revision)
        torch.manual_seed(0)
        labels = load_card(recipe.data.card).labels if recipe.model.task == "classification" else None
        base, _ = load_model_and_tokenizer(
            source,
            task=recipe.model.task,
            labels=labels,
            pooling=recipe.model.pooling,
            device="cpu",
            cache_dir=recipe.model.cache_dir,
        )
        total = sum(p.numel() for p in base.parameters())
        model = apply_method(
            base, name=recipe.method.name, settings=recipe.method.settings(), task=recipe.model.task
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            size = (Path(tmp) / "adapter_model.safetensors").stat().st_size
        merge = "yes" if merge_refusal_reason(recipe.method.name) is None else "no"
        rows.append(MethodRow(path.stem, recipe.method.name, trainable, total, size, merge))
    return rows


def format_rows(rows: list[MethodRow]) -> str:
    """A Markdown table."""
    lines = [
        "| method | recipe | trainable params | % of base | adapter file | mergeable |",
        "|---|---|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.method} | {r.recipe} | {r.trainable:,} | {r.percent:.2f}% | "
            f"{r.adapter_bytes / 1024:,.0f} KiB | {r.merge} |"
        )
    return "\n".join(lines)
