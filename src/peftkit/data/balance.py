"""Label balance: how skewed a label distribution is, and the class weights that even it out in the loss.

A classifier trained on skewed labels can score high accuracy while never predicting the rare classes, so a
skewed split gets a warning when its headline metric is accuracy (correct use stays silent), and
`train.class_weights` weights the cross-entropy per class: `balanced` gives class c the weight
n / (classes × n_c) (scikit-learn's "balanced"), a mapping gives named classes their own weight (others 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from peftkit.errors import PeftkitError, did_you_mean

# A label is rare when it has under this share of what an even split would give it (two labels: under 25%).
SKEW_SHARE = 0.5


def label_counts(label_ids: Sequence[int], labels: Sequence[str]) -> dict[str, int]:
    """Examples per label name, in label-id order (labels without examples count 0)."""
    counts = dict.fromkeys(labels, 0)
    for i in label_ids:
        counts[labels[i]] += 1
    return counts


def rare_labels(counts: dict[str, int]) -> list[str]:
    """Labels with under SKEW_SHARE of an even share of the examples; [] when the distribution is not skewed."""
    total = sum(counts.values())
    if total == 0:
        return []
    even = total / len(counts)
    return [name for name, n in counts.items() if n < SKEW_SHARE * even]


def skew_warning(counts: dict[str, int], *, where: str, headline: str | None) -> str | None:
    """The warning for a skewed distribution whose headline metric is accuracy (or unknown: `headline` None), or
    None when there is nothing to say."""
    rare = rare_labels(counts)
    if not rare or headline not in (None, "accuracy"):
        return None
    total = sum(counts.values())
    shares = ", ".join(f"'{name}' {counts[name] / total:.1%}" for name in rare)
    majority = max(counts, key=lambda name: counts[name])
    told = "the headline metric (eval.metrics[0]) is accuracy" if headline else "accuracy is misleading here"
    return (
        f"{where}: the label distribution is skewed (rare: {shares} of {total:,} examples; an even share is "
        f"{1 / len(counts):.1%}) and {told}: always answering '{majority}' scores "
        f"{counts[majority] / total:.1%} accuracy. Put macro_f1 first in eval.metrics (e.g. "
        f"`eval.metrics: [macro_f1, accuracy]`), and consider `train.class_weights: balanced` so the rare "
        f"labels count in the loss."
    )


def check_class_weights(spec, labels: Sequence[str], task: str) -> None:
    """Refuse class weights for a causal-LM recipe, or a mapping that names labels the data card lacks."""
    if spec == "none":
        return
    if task != "classification":
        raise PeftkitError(
            f"train.class_weights: {spec!r} weights classification labels, but model.task is {task}. "
            f"Remove train.class_weights (or set it to none)."
        )
    if isinstance(spec, dict):
        unknown = [name for name in spec if name not in labels]
        if unknown:
            raise PeftkitError(
                f"train.class_weights: '{unknown[0]}' is not a label of the data card."
                f"{did_you_mean(unknown[0], labels)} Name labels from the card ({', '.join(labels)}); labels "
                f"left out keep weight 1."
            )


def class_weights(spec, labels: Sequence[str], label_ids: Sequence[int]) -> list[float] | None:
    """The loss weight of each label id for `train.class_weights` = `spec`, or None for `none` (plain loss).

    `balanced` is computed on the training examples the run uses; a label without examples gets weight 1 (it
    never appears in the loss).
    """
    if spec == "none":
        return None
    if spec == "balanced":
        counts = label_counts(label_ids, labels)
        total = sum(counts.values())
        return [total / (len(labels) * n) if n else 1.0 for n in counts.values()]
    return [float(spec.get(name, 1.0)) for name in labels]
