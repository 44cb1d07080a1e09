"""Evaluation during and at the end of training: loss and metrics on a tokenized split, over all processes."""

from __future__ import annotations

import math

from peftkit.data.prepare import TokenizedSplit
from peftkit.inference.metrics import classification_metrics
from peftkit.training.distributed import forward_split_sharded


def evaluate_split(
    model,
    split: TokenizedSplit,
    *,
    task: str,
    labels: list[str] | None,
    metrics: list[str],
    tokenizer,
    batch_size: int,
    accelerator,
    full: bool = False,
    progress: str | None = None,
) -> dict:
    """Loss and metrics of `model` on `split` (each process evaluates a slice). Classification: the headline
    metrics (scalars), plus per-class scores and the confusion matrix when `full`; causal LM: loss and
    perplexity. `progress`: a progress bar with this label on the main process."""
    was_training = model.training
    model.eval()
    logits, loss = forward_split_sharded(
        model,
        split.ids,
        split.labels,
        accelerator,
        pad_token_id=tokenizer.pad_token_id,
        padding_side=tokenizer.padding_side,
        batch_size=batch_size,
        task=task,
        progress=progress if accelerator.is_main_process else None,
    )
    model.train(was_training)
    if task != "classification":
        return {"loss": loss, "perplexity": math.exp(min(loss, 50))}
    assert labels is not None  # a classification run always has its label names
    result = classification_metrics(split.labels, logits.argmax(-1), labels, metrics)
    result["loss"] = loss
    return result if full else {k: v for k, v in result.items() if isinstance(v, float)}


def evaluate_base(model, split: TokenizedSplit, **kwargs) -> dict:
    """Loss and perplexity of the base model alone (adapter switched off): the numbers before training."""
    with model.disable_adapter():
        result = evaluate_split(model, split, labels=None, metrics=[], full=True, **kwargs)
    return {"loss_before": result["loss"], "perplexity_before": result["perplexity"]}
