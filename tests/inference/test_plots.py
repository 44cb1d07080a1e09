"""Run plots draw every logged point: a run that logged its loss once still shows it."""

from __future__ import annotations

import numpy as np

from peftkit.inference import plots


def _blue_pixels(png) -> int:
    """Pixels of matplotlib's tab:blue, the training loss colour (its legend sample included)."""
    from matplotlib.image import imread

    rgb = (imread(str(png))[..., :3] * 255).round()
    return int((np.abs(rgb - np.array([31, 119, 180])).max(axis=-1) < 30).sum())


def test_a_single_logged_loss_is_drawn(tmp_path, monkeypatch):
    rows = [{"step": 10, "loss": 0.6}]
    marked = _blue_pixels(plots.plot_loss(rows, tmp_path / "marked.png"))
    monkeypatch.setattr(
        plots, "MARKED_POINTS", 0
    )  # a plain line: one point draws nothing but the legend sample
    line_only = _blue_pixels(plots.plot_loss(rows, tmp_path / "line.png"))
    assert marked - line_only >= 20, (marked, line_only)
