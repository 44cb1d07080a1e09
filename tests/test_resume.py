"""--resume after a stop at step k reproduces the uninterrupted run's later losses and final adapter."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from peftkit.recipe import load_recipe
from peftkit.training.recipe import train
from tests.helpers import Interrupted, interrupt_at, write_recipe


def _losses(run):
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_resume_reproduces_uninterrupted_run(tmp_path, tiny_bert, tiny_card):
    # Dropout on, so the checkpointed RNG state matters; 2 epochs, so resuming crosses an epoch boundary.
    settings = {"name": "lora", "lora_dropout": 0.2}
    kw = dict(
        model=tiny_bert,
        card=tiny_card,
        method=settings,
        train={"epochs": 2, "log_every": 1, "save_every": 4, "learning_rate": 0.01},
    )
    full = train(load_recipe(write_recipe(tmp_path / "a.yaml", out=tmp_path / "full", **kw)), progress=False)

    recipe = load_recipe(write_recipe(tmp_path / "b.yaml", out=tmp_path / "resumed", **kw))
    k = 18  # past the first epoch's 15 steps, not on a save_every multiple: resumes from step 16
    with pytest.raises(Interrupted):
        train(recipe, progress=False, callbacks=[interrupt_at(k)])
    assert not (tmp_path / "resumed" / "adapter").exists()
    train(recipe, resume=True, progress=False)

    a, b = _losses(full), _losses(tmp_path / "resumed")
    assert sorted(a) == sorted(b) == list(range(1, 31))
    for step in range(k + 1, 31):
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    wa = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max() <= 1e-6, name


def test_resume_without_checkpoint_is_refused(tmp_path, tiny_bert, tiny_card, capsys):
    from peftkit.cli import main

    path = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run")
    assert main(["train", str(path), "--resume", "--no-progress"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
