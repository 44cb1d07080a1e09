"""`peftkit data check` and `peftkit data show`: prove a card matches its data, and describe the data.

`verify_card` adds the Hugging Face side to `sources.check_card`: the file must parse with
`huggingface_hub.DatasetCard`, carry the dataset-card keys peftkit cards promise, and its `size_categories`
must be the bucket the example count falls in. `describe_card` gives sizes, label distribution (with a warning
when it is skewed) and text lengths in characters, words and (for a given model) tokens.
"""

from __future__ import annotations

from peftkit.data.balance import skew_warning
from peftkit.data.cards import SPLITS, DataCard, load_card

HF_KEYS = ("license", "language", "task_categories", "pretty_name", "size_categories")
PERCENTILES = (0, 50, 90, 95, 99, 100)
# The Hub's size_categories buckets (upper bounds, exclusive).
_SIZE_BUCKETS = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)


def size_category(n: int) -> str:
    """The Hub's `size_categories` value for a dataset of `n` examples."""
    return next((name for bound, name in _SIZE_BUCKETS if n < bound), "n>1T")


def _hub_problems(card: DataCard) -> list[str]:
    """What the Hugging Face dataset-card side of the file lacks."""
    from huggingface_hub import DatasetCard

    try:
        data = DatasetCard(card.path.read_text(encoding="utf-8")).data.to_dict()
    except Exception as exc:  # huggingface_hub raises ValueError or yaml errors for bad front matter
        return [f"huggingface_hub.DatasetCard cannot parse the file ({exc})."]
    problems = [
        f"`{key}` is missing from the front matter (a Hugging Face dataset-card key); add it."
        for key in HF_KEYS
        if data.get(key) in (None, "", [])
    ]
    if card.prose.strip() == "":
        problems.append(
            "the card has no prose: say where the data comes from, its license and its known limits."
        )
    return problems


def verify_card(name_or_path) -> tuple[DataCard, list[str]]:
    """(card, problems) where problems say precisely how the card and its data differ; [] = they match."""
    from peftkit.data.sources import check_card

    card = load_card(name_or_path)
    problems = _hub_problems(card) + check_card(card)
    declared = card.metadata.get("size_categories")
    # Only once the counts are proven: then they are the data's true size.
    if declared and card.counts and not problems:
        total = sum(card.counts.values())
        got = declared if isinstance(declared, list) else [declared]
        if got != [size_category(total)]:
            problems.append(
                f"size_categories: the card says {got}, but the data has {total:,} examples, so it "
                f"should be [{size_category(total)}]."
            )
    return card, problems


def _percentiles(values) -> dict[str, float]:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in PERCENTILES} | {
        "mean": round(float(arr.mean()), 1)
    }


def describe_card(name_or_path, model: str | None = None) -> dict:
    """Sizes, label distribution per split, and text-length percentiles (chars, words, tokens if `model`)."""
    from peftkit.data.sources import load_splits

    card = load_card(name_or_path)
    splits = load_splits(card)
    texts = [t for s in SPLITS for t in splits[s]["text"]]
    out: dict = {
        "card": card.name,
        "task": card.task,
        "sizes": {s: len(splits[s]) for s in SPLITS},
        "total": len(texts),
    }
    if card.task == "classification":
        out["labels"] = {}
        for split in SPLITS:
            ids = splits[split]["label"]
            out["labels"][split] = {name: ids.count(i) for i, name in enumerate(card.labels)}
        # No recipe here, so no headline metric: the warning says what accuracy would hide on this data.
        skew = skew_warning(
            out["labels"]["train"], where=f"data card '{card.name}', train split", headline=None
        )
        out["warnings"] = [skew] if skew else []
    lengths = {
        "characters": _percentiles([len(t) for t in texts]),
        "words": _percentiles([len(t.split()) for t in texts]),
    }
    if model:
        from peftkit.models.load import load_tokenizer
        from peftkit.models.sources import resolve_source

        tok = load_tokenizer(resolve_source(model))
        ids = tok(texts, add_special_tokens=True, truncation=False)["input_ids"]
        lengths["tokens"] = _percentiles([len(x) for x in ids])
        out["tokenizer"] = model
    out["lengths"] = lengths
    return out


def format_description(info: dict) -> str:
    """`describe_card`'s dict as aligned text tables."""
    lines = [f"{info['card']} ({info['task']}): {info['total']:,} examples"]
    lines += [f"  {s:<11}{n:>9,}" for s, n in info["sizes"].items()]
    if "labels" in info:
        names = list(next(iter(info["labels"].values())))
        width = max(9, *(len(n) + 2 for n in names))
        lines.append("label distribution:")
        lines.append("  " + f"{'split':<11}" + "".join(f"{n:>{width}}" for n in names))
        totals = dict.fromkeys(names, 0)
        for split, counts in info["labels"].items():
            lines.append("  " + f"{split:<11}" + "".join(f"{counts[n]:>{width},}" for n in names))
            for n in names:
                totals[n] += counts[n]
        all_n = max(1, sum(totals.values()))
        lines.append("  " + f"{'total':<11}" + "".join(f"{totals[n]:>{width},}" for n in names))
        lines.append("  " + f"{'share':<11}" + "".join(f"{totals[n] / all_n:>{width}.1%}" for n in names))
    lines.append("text length:")
    keys = [f"p{q}" for q in PERCENTILES] + ["mean"]
    lines.append("  " + f"{'unit':<11}" + "".join(f"{k:>8}" for k in keys))
    for unit, pct in info["lengths"].items():
        lines.append("  " + f"{unit:<11}" + "".join(f"{pct[k]:>8g}" for k in keys))
    if "tokenizer" in info:
        lines.append(f"  (tokens: {info['tokenizer']}'s tokenizer, special tokens included, no truncation)")
    lines += [f"warning: {message}" for message in info.get("warnings", [])]
    return "\n".join(lines)
