"""Helpers shared by the decoder tests."""

from __future__ import annotations

from tests.conftest import write_card


def write_checked_card(folder, rows, **kwargs):
    """`write_card` plus the checksum and counts that `peftkit validate` requires."""
    from peftkit.data.cards import load_card
    from peftkit.data.sources import load_splits, source_checksum

    card = write_card(folder, rows, **kwargs)
    loaded = load_card(card)
    counts = {name: len(split) for name, split in load_splits(loaded).items()}
    text = card.read_text().replace(
        "  split:", f"  checksum: {source_checksum(loaded)}\n  counts: {counts}\n  split:".replace("'", ""), 1
    )
    card.write_text(text)
    return card
