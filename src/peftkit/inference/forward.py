"""Batched forward passes over tokenized examples: logits (and mean loss) in the original order."""

from __future__ import annotations

import numpy as np


def forward_split(
    model,
    ids: list[list[int]],
    labels: list[int] | None,
    *,
    pad_token_id: int,
    padding_side: str,
    batch_size: int,
    task: str = "classification",
    progress: str | None = None,
):
    """Run `model` over `ids` in length-sorted batches (less padding); return (logits in input order, mean loss).

    For causal LM the logits are not kept (only the token-weighted loss), since they are vocabulary-sized.
    `progress`: a progress bar with this label while several batches run (it goes away when done).
    """
    import torch
    from tqdm.auto import tqdm

    from peftkit.data.prepare import batch_order, collate

    device = next(model.parameters()).device
    n = len(ids)
    out = None
    loss_sum, weight = 0.0, 0
    batches = batch_order(
        [len(x) for x in ids], batch_size, seed=0, epoch=0, shuffle=False, group_by_length=True
    )
    bar = tqdm(
        batches, desc=progress, unit="batch", leave=False, disable=progress is None or len(batches) < 2
    )
    with torch.no_grad():
        for idx in bar:
            with_labels = (
                [labels[i] for i in idx] if labels is not None and task == "classification" else None
            )
            batch = collate([ids[i] for i in idx], pad_token_id, padding_side, labels=with_labels)
            if task == "causal_lm":
                batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            batch = {k: v.to(device) for k, v in batch.items()}
            result = model(**batch)
            if task == "causal_lm":
                n_tok = int((batch["labels"][:, 1:] != -100).sum())
                loss_sum += float(result.loss) * n_tok
                weight += n_tok
                continue
            logits = result.logits.float().cpu().numpy()
            if out is None:
                out = np.zeros((n, logits.shape[-1]), dtype=np.float32)
            out[idx] = logits
            if "labels" in batch:
                loss_sum += float(result.loss) * len(idx)
                weight += len(idx)
    return out, (loss_sum / weight if weight else float("nan"))
