"""Builders shared by tests (public names only; nothing here is a fixture)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def hub_cache(root: Path, hub_id: str, folder: Path) -> Path:
    """Lay `folder`'s files out in a Hugging Face cache at `root` under `hub_id`, as a download would; returns root.

    With HF_HUB_CACHE=root and HF_HUB_OFFLINE=1, `from_pretrained(hub_id)` then reads them without a network.
    """
    commit = hashlib.sha1(hub_id.encode()).hexdigest()
    repo = Path(root) / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in Path(folder).iterdir():
        if f.is_file():
            shutil.copy2(f, snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return Path(root)


def train_shipped_tiny(recipe: Path, out: Path, *, model: Path, card: Path, steps: int = 6) -> Path:
    """Train a shipped recipe's own method, pooling and settings on a tiny model and tiny data; the run folder."""
    from peftkit.recipe import load_recipe
    from peftkit.training.recipe import train

    tiny = load_recipe(
        recipe,
        [
            f"model.source={model}",
            f"data.card={card}",
            "data.max_length=32",
            f"train.max_steps={steps}",
            "train.batch_size=8",
            "train.save_every=null",
            "train.report_to=none",
            "data.max_eval_examples=16",
            f"train.output_dir={out}",
        ],
    )
    return train(tiny, progress=False)
