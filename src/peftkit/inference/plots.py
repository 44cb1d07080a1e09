"""PNG plots of a run: training loss, eval-metric curves, confusion matrix (matplotlib, Agg backend).

Figures have a fixed size (FIGSIZE inches at DPI, no tight bounding box), so every PNG is exactly
`PIXELS` wide and high: the adapter card can lay them out and tests can check them.
"""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.fileio import atomic_write_bytes

FIGSIZE = (6.4, 4.0)
DPI = 100
PIXELS = (640, 400)
PLOTS_DIR = "plots"
MARKED_POINTS = 60
LOSS_PNG, EVAL_PNG, CONFUSION_PNG = "loss.png", "eval_metrics.png", "confusion_matrix.png"


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display: never open a window, never need a GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_log(path: Path) -> list[dict]:
    """The rows of a run's train_log.jsonl ([] when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(rows: list[dict], path: Path) -> Path | None:
    """Training loss (and validation loss, when logged) against the step; None when nothing was logged."""
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
    if not train:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    # Markers while the points are few: a run logged once or twice draws no line at all without them.
    marker = "o" if len(train) <= MARKED_POINTS else None
    ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", marker=marker, markersize=4)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss", color="tab:orange")
    ax.set(xlabel="step", ylabel="loss", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_eval_metrics(rows: list[dict], path: Path) -> Path | None:
    """Every `eval/<metric>` except the loss against the step; None when there was no periodic evaluation."""
    names = sorted({k for r in rows for k in r if k.startswith("eval/") and k != "eval/loss"})
    if not names:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name in names:
        points = [(r["step"], r[name]) for r in rows if name in r]
        ax.plot(*zip(*points, strict=True), "o-", label=name.removeprefix("eval/"))
    ax.set(xlabel="step", ylabel="score", title="Validation metrics")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(
    matrix: list[list[int]], labels: list[str], path: Path, title: str = "Confusion matrix"
) -> Path:
    """Rows: true label, columns: predicted label; each cell shows its count."""
    import numpy as np

    plt = pyplot()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels=labels, rotation=45 if len(labels) > 4 else 0)
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    threshold = m.max() / 2 if m.size else 0
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > threshold else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def write_run_plots(run_dir: str | Path) -> list[Path]:
    """Write the run's plots into RUN/plots/ from train_log.jsonl and metrics.json; returns the files written."""
    run_dir = Path(run_dir)
    out = run_dir / PLOTS_DIR
    rows = read_log(run_dir / "train_log.jsonl")
    written = [plot_loss(rows, out / LOSS_PNG), plot_eval_metrics(rows, out / EVAL_PNG)]
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        final = metrics.get("test") or metrics.get("validation") or {}
        if "confusion_matrix" in final:
            split = "test" if "test" in metrics else "validation"
            written.append(
                plot_confusion(
                    final["confusion_matrix"],
                    final["labels"],
                    out / CONFUSION_PNG,
                    title=f"Confusion matrix ({split}, n={final['n']})",
                )
            )
    return [p for p in written if p is not None]
