"""Metrics: scikit-learn built in (no download needed), `evaluate` modules by local path or hub id.

`evaluate.load('accuracy')` needs the hub (evaluate ships no metric scripts), so the usual metrics are computed
with scikit-learn, which gives the same numbers. A recipe may also name an `evaluate` module by path.
"""

from __future__ import annotations

from pathlib import Path
from typing import SupportsFloat, cast

from peftkit.errors import PeftkitError


def _sk(name: str, **kwargs):
    """A scikit-learn metric by name, imported when first used (sklearn costs ~1 s to import)."""

    def metric(y, p):
        import sklearn.metrics

        return getattr(sklearn.metrics, name)(y, p, **kwargs)

    return metric


BUILTIN = {
    "accuracy": _sk("accuracy_score"),
    "macro_f1": _sk("f1_score", average="macro", zero_division=0),
    "micro_f1": _sk("f1_score", average="micro", zero_division=0),
    "weighted_f1": _sk("f1_score", average="weighted", zero_division=0),
    "precision": _sk("precision_score", average="macro", zero_division=0),
    "recall": _sk("recall_score", average="macro", zero_division=0),
    "mcc": _sk("matthews_corrcoef"),
}


def check_metric_names(names: list[str]) -> None:
    """Refuse a metric that is neither built in nor an existing path (hub ids need a network)."""
    from peftkit.fileio import hub_offline

    for name in names:
        if name in BUILTIN or Path(name).exists():
            continue
        if "/" in name and not name.startswith((".", "/")) and not hub_offline():
            continue
        raise PeftkitError(
            f"eval.metrics: '{name}' is not a built-in metric ({', '.join(BUILTIN)}) and no such file or folder "
            f"exists. Name a built-in metric or the path of an `evaluate` module (a .py file or its folder)."
        )


def _evaluate_module(name: str, y_true, y_pred) -> dict:
    import evaluate
    import numpy as np

    module = evaluate.load(name)
    result = module.compute(predictions=list(map(int, y_pred)), references=list(map(int, y_true)))
    stem = Path(name).stem if Path(name).exists() else name.split("/")[-1]
    # np.isscalar's guard also admits complex and bytes-like values; an `evaluate` metric's scalars are real
    return {
        k if k == stem else f"{stem}.{k}": float(cast(SupportsFloat, v))
        for k, v in result.items()
        if np.isscalar(v)
    }


def classification_metrics(y_true, y_pred, labels: list[str], metrics: list[str]) -> dict:
    """Headline metrics plus per-class precision/recall/F1 and the confusion matrix (rows: true, cols: predicted)."""
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = list(range(len(labels)))
    out: dict = {}
    for name in ["accuracy", "macro_f1", *metrics]:
        if name in BUILTIN:
            out[name] = float(BUILTIN[name](y_true, y_pred))
        else:
            out.update(_evaluate_module(name, y_true, y_pred))
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    out["per_class"] = {
        label: {
            "precision": float(prec[i]),
            "recall": float(rec[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    out["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=ids).tolist()
    out["labels"] = list(labels)
    out["n"] = int(len(y_true))
    return out
