"""Use a trained adapter: predict labels for texts, evaluate on a data card split or a labelled file."""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.errors import PeftkitError

TEXT_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def read_texts(path: str) -> list[str]:
    """Texts from a file: JSONL rows with a 'text' field, or plain text with one text per line."""
    p = Path(path)
    if not p.is_file():
        raise PeftkitError(f"--file: '{path}' does not exist. Give a text file (one text per line) or JSONL.")
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(lines, 1):
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PeftkitError(
                    f"--file {path}:{n}: expected a JSON object with a 'text' field, found {line[:60]!r}."
                ) from None
        return texts
    return lines


def predict_texts(
    adapter: str,
    texts: list[str],
    *,
    batch_size: int = 64,
    loaded=None,
    allow_unverified: bool = False,
    labels: list[str] | None = None,
    base_source: str | None = None,
) -> list[dict]:
    """One dict per text: `label` and `probabilities` (label → probability), and `"unverified": True` for an
    adapter without a fingerprint. `allow_unverified`, `labels`, `base_source`: as for `load_adapter`."""
    import torch

    from peftkit.adapters.bundle import load_adapter

    loaded = loaded or load_adapter(
        adapter, allow_unverified=allow_unverified, labels=labels, base_source=base_source
    )
    if loaded.meta["task"] != "classification":
        raise PeftkitError(
            f"predict: adapter '{adapter}' is a {loaded.meta['task']} adapter; predict needs a "
            f"classification adapter (use `peftkit generate` for causal LM)."
        )
    from peftkit.inference.parity import reference_logits

    logits = reference_logits(loaded, texts, batch_size=batch_size)
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    labels = loaded.labels
    mark = {} if loaded.verified else {"unverified": True}
    return [
        {
            "label": labels[int(p.argmax())],
            "probabilities": {lab: round(float(v), 6) for lab, v in zip(labels, p, strict=True)},
            **mark,
        }
        for p in probs
    ]


def _labelled_file(path: Path, labels: list[str]):
    """(texts, label ids) from a CSV/JSONL/Parquet file with `text` and `label` columns (label names or ids)."""
    import pandas as pd

    readers = {
        ".csv": pd.read_csv,
        ".parquet": pd.read_parquet,
        ".jsonl": lambda p: pd.read_json(p, lines=True),
        ".json": pd.read_json,
    }
    df = readers[path.suffix](path)
    for col in ("text", "label"):
        if col not in df.columns:
            raise PeftkitError(
                f"--data {path}: no '{col}' column (found: {', '.join(map(str, df.columns))}). "
                f"A labelled file needs 'text' and 'label' columns."
            )
    ids = []
    for value in df["label"]:
        if value in labels:
            ids.append(labels.index(value))
        elif isinstance(value, int | float) and 0 <= int(value) < len(labels):
            ids.append(int(value))
        else:
            raise PeftkitError(
                f"--data {path}: label {value!r} is not one of the adapter's labels ({', '.join(labels)})."
            )
    return df["text"].astype(str).tolist(), ids


def evaluate_adapter(
    adapter: str,
    *,
    data: str | None = None,
    split: str = "test",
    metrics=None,
    allow_unverified: bool = False,
    labels: list[str] | None = None,
    base_source: str | None = None,
    progress: bool = False,
) -> dict:
    """Metrics of an adapter on a data card's split (default: the card it was trained on) or a labelled file;
    `"unverified": True` among them for an adapter without a fingerprint. `allow_unverified`, `labels`,
    `base_source`: as for `load_adapter`; `progress` shows a progress bar over the batches."""
    from peftkit.adapters.bundle import load_adapter
    from peftkit.data.cards import load_card
    from peftkit.data.prepare import tokenize_texts
    from peftkit.inference.forward import forward_split
    from peftkit.inference.metrics import classification_metrics

    loaded = load_adapter(adapter, allow_unverified=allow_unverified, labels=labels, base_source=base_source)
    meta, labels = loaded.meta, loaded.labels
    data = data or meta.get("data_card")
    if data is None:
        raise PeftkitError(
            f"eval: adapter '{adapter}' does not record its data card; pass --data CARD_OR_FILE."
        )
    if Path(data).suffix in TEXT_SUFFIXES:
        texts, y = _labelled_file(Path(data), labels or [])
    else:
        from peftkit.data.sources import load_splits

        card = load_card(data)
        if meta["task"] == "classification" and card.labels != labels:
            raise PeftkitError(
                f"eval: data card '{card.name}' has labels {card.labels}, the adapter was trained on "
                f"{labels}. Evaluate on data with the adapter's label set."
            )
        splits = load_splits(card)
        if split not in splits:
            raise PeftkitError(
                f"--split: card '{card.name}' has no split '{split}' (has: {', '.join(splits)})."
            )
        texts, y = (
            splits[split]["text"],
            (splits[split]["label"] if meta["task"] == "classification" else None),
        )
    tok = loaded.tokenizer
    ids = tokenize_texts(tok, texts, meta.get("max_length", 512), add_eos=meta["task"] == "causal_lm")
    logits, loss = forward_split(
        loaded.model,
        ids,
        y,
        pad_token_id=tok.pad_token_id,
        padding_side=tok.padding_side,
        batch_size=64,
        task=meta["task"],
        progress="eval" if progress else None,
    )
    if meta["task"] != "classification":
        import math

        result = {"loss": loss, "perplexity": math.exp(min(loss, 50)), "n": len(ids)}
    else:
        assert labels is not None, "a classification adapter's metadata names its labels"
        result = classification_metrics(y, logits.argmax(-1), labels, metrics or [])
        result["loss"] = loss
    return result if loaded.verified else {**result, "unverified": True}
