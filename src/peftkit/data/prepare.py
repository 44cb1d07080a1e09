"""From text splits to model batches: tokenize once, pad each batch only to its own longest example.

Batches are index lists chosen by `batch_order`: seeded per epoch, so a resumed run and every process of a
multi-process run see exactly the same order. With `group_by_length`, examples are shuffled, cut into
chunks of 50 batches, sorted by length inside each chunk and the batches shuffled again: little padding,
still random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUP_CHUNK_BATCHES = 50


def tokenize_texts(tokenizer, texts: list[str], max_length: int, *, add_eos: bool = False) -> list[list[int]]:
    """Token ids per text, truncated to `max_length`, no padding (the collator pads per batch).

    `add_eos` (causal LM) ends each text with the eos token, room kept for it, so the model learns to stop.
    """
    eos = tokenizer.eos_token_id if add_eos else None
    enc = tokenizer(list(texts), truncation=True, max_length=max_length - (eos is not None), padding=False)
    ids = enc["input_ids"]
    return [x + [eos] for x in ids] if eos is not None else ids


def batch_order(
    lengths, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, group_by_length: bool = False
) -> list[list[int]]:
    """Index batches for one epoch. Deterministic in (seed, epoch)."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(-np.asarray(lengths), kind="stable") if group_by_length else np.arange(n)
        return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if group_by_length:
        lengths = np.asarray(lengths)
        chunk = batch_size * GROUP_CHUNK_BATCHES
        order = np.concatenate(
            [
                part[np.argsort(-lengths[part], kind="stable")]
                for part in np.split(order, range(chunk, n, chunk))
            ]
        )
    batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(ids: list[list[int]], pad_token_id: int, padding_side: str = "right", labels=None) -> dict:
    """Pad a batch to its longest member; `attention_mask` marks real tokens."""
    import torch

    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, seq in enumerate(ids):
        span = slice(longest - len(seq), longest) if padding_side == "left" else slice(0, len(seq))
        input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
    return batch


@dataclass
class TokenizedSplit:
    """A tokenized split: token ids per example and label ids (None for causal LM)."""

    ids: list[list[int]]
    labels: list[int] | None

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_split(
    columns: dict[str, list], tokenizer, max_length: int, *, limit: int | None = None, causal_lm: bool = False
):
    """A split's columns (`text` [+ `label`], as `sources.load_columns` gives them) as a `TokenizedSplit`, keeping
    its first `limit` examples."""
    texts = columns["text"][:limit]
    ids = tokenize_texts(tokenizer, texts, max_length, add_eos=causal_lm)
    labels = list(columns["label"][:limit]) if "label" in columns and not causal_lm else None
    return TokenizedSplit(ids, labels)


def collate_split(split: TokenizedSplit, idx: list[int], pad_id: int, padding_side: str, device) -> dict:
    """The batch of `split`'s examples `idx` on `device`: classification labels, or causal-LM targets (the
    input ids, with padding masked out of the loss)."""
    labels = [split.labels[i] for i in idx] if split.labels is not None else None
    batch = collate([split.ids[i] for i in idx], pad_id, padding_side, labels=labels)
    if split.labels is None:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    if getattr(device, "type", str(device).split(":")[0]) == "cuda":
        # pinned host memory, copied without waiting: the host builds the next batch while the GPU computes
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}
