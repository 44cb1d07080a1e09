"""Fixtures for the fault tests: a recipe writer, one finished reference run shared by every module, a snapshot of
a folder (to prove that nothing changed), and a child `peftkit` process with a fault injected (tests/faults/child.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CHILD = Path(__file__).with_name("child.py")
# 48 training examples, batch 8, 2 epochs: 12 steps, a checkpoint every 4 (steps 4, 8, 12), every step logged.
TRAIN = {
    "epochs": 2,
    "batch_size": 8,
    "learning_rate": 0.01,
    "save_every": 4,
    "keep_checkpoints": 5,
    "log_every": 1,
    "report_to": "none",
}


def _write_recipe(path: Path, *, model: Path, card: Path, out: Path, train=None, eval=None) -> Path:
    recipe = {
        "model": {"source": str(model)},
        "method": {"name": "lora", "lora_dropout": 0.1},
        "data": {"card": str(card), "max_length": 32, "max_train_examples": 48},
        "train": {**TRAIN, "output_dir": str(out), **(train or {})},
    }
    if eval:
        recipe["eval"] = eval
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def make_recipe(tiny_bert, tiny_card, tmp_path):
    """make_recipe(out, name="r", train={...}, eval={...}) → the path of a tiny LoRA recipe training into `out`."""

    def make(out: Path, name: str = "r", **sections) -> Path:
        return _write_recipe(tmp_path / f"{name}.yaml", model=tiny_bert, card=tiny_card, out=out, **sections)

    return make


@pytest.fixture(scope="session")
def reference_run(tiny_bert, tiny_card, tmp_path_factory) -> Path:
    """A finished run of the fault recipe, trained without interruption (the numbers a resumed run must match)."""
    from peftkit.recipe import load_recipe
    from peftkit.training.recipe import train

    tmp = tmp_path_factory.mktemp("fault-reference")
    recipe = _write_recipe(tmp / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp / "run")
    return train(load_recipe(recipe), progress=False)


@pytest.fixture
def old_run(reference_run, tmp_path) -> Path:
    """A copy of the reference run: an earlier good run that a failing --overwrite must leave untouched."""
    return Path(shutil.copytree(reference_run, tmp_path / "runs" / "run"))


@pytest.fixture
def child(tmp_path):
    """child(fault, *argv, timeout=...) → CompletedProcess of `peftkit ARGV` in a fresh process with `fault` injected
    (see tests/faults/child.py); run(..., wait=False) returns the Popen."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def run(fault: str, *argv: str, timeout: float = 300, wait: bool = True):
        cmd = [sys.executable, str(CHILD), fault, *map(str, argv)]
        if not wait:
            return subprocess.Popen(
                cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)

    return run
