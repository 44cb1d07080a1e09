"""peftkit: parameter-efficient adaptation of BERT- and GPT-style models, from a recipe to a small adapter.

The public API is imported lazily so `import peftkit` (and `peftkit --help`) does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "AdapterSet": "peftkit.inference.adapter_set",
    "merge_adapter": "peftkit.inference.merge",
    "load_recipe": "peftkit.recipe.load",
    "train": "peftkit.training.recipe",
    "load_adapter": "peftkit.adapters.bundle",
    "PeftkitError": "peftkit.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'peftkit' has no attribute {name!r}")
