"""What merge and export refuse, and the words they refuse with; the mark that makes plain PEFT refuse mean pooling."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.methods.peft_config import (
    MEAN_POOLING_TASK_TYPE,
    config_dict,
    read_peft_config,
    recorded_pooling,
)

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "minilm-lora-rotten_tomatoes.yaml"


def _tiny_quickstart(out: Path, model: Path, card: Path, pooling: str) -> Path:
    from peftkit.recipe import load_recipe
    from peftkit.training.recipe import train

    overrides = [f"model.source={model}", f"data.card={card}", "data.max_length=32", "train.max_steps=2"]
    overrides += [f"model.pooling={pooling}", "train.save_every=null", "train.report_to=none"]
    return train(load_recipe(QUICKSTART, [*overrides, f"train.output_dir={out}"]), progress=False)


@pytest.fixture(scope="module")
def run(tiny_bert, tiny_card, tmp_path_factory) -> Path:
    return _tiny_quickstart(tmp_path_factory.mktemp("errors") / "run", tiny_bert, tiny_card, "model")


@pytest.fixture(scope="module")
def mean_run(tiny_bert, tiny_card, tmp_path_factory) -> Path:
    return _tiny_quickstart(tmp_path_factory.mktemp("errors") / "mean", tiny_bert, tiny_card, "mean")


def _wrong_logits(requests, **kwargs):
    """A plain loader that answers with other logits (what a silently different model would do)."""
    import numpy as np

    return [{"ok": True, "logits": np.zeros((len(r["texts"]), 2), dtype=np.float32)} for r in requests]


def test_mean_pooling_mark_is_read_back_by_peftkit_only(mean_run, run):
    """PEFT 0.21 (pyproject pins peft<0.22) validates task_type in every config it builds; a PEFT that stopped
    doing so would load mean-pooled adapters silently again, and this test would fail."""
    config = json.loads((mean_run / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == MEAN_POOLING_TASK_TYPE
    assert config_dict(mean_run / "adapter")["task_type"] == "SEQ_CLS"
    assert recorded_pooling(mean_run / "adapter") == "mean" and recorded_pooling(run / "adapter") == "model"
    assert str(read_peft_config(mean_run / "adapter").task_type) in ("SEQ_CLS", "TaskType.SEQ_CLS")
    # What every PEFT loader does with it: refuse, in words that say what loads it.
    from peft import PeftConfig

    with pytest.raises(ValueError, match="Invalid task type") as err:
        PeftConfig.from_pretrained(str(mean_run / "adapter"))
    assert "Load it with peftkit (peftkit.load_adapter)" in str(err.value)
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"


def test_merge_refuses_a_folder_its_loader_reads_differently(run, tmp_path, monkeypatch):
    from peftkit.inference import parity
    from peftkit.inference.merge import merge_adapter

    monkeypatch.setattr(parity, "run_plain_loaders", _wrong_logits)
    with pytest.raises(PeftkitError) as err:
        merge_adapter(run, tmp_path / "m", texts=["a good film", "bad"], progress=lambda m: None)
    message = str(err.value)
    assert "the merged model does not behave as it must in transformers (expected parity" in message
    assert "MISMATCH" in message and f"'{tmp_path / 'm'}' was not written" in message
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m*"))


def test_export_refuses_without_its_packages(run, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a)
    )
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "export --format onnx needs onnxscript, which is not installed" in err
    assert "pip install 'peftkit[export]'" in err and not (tmp_path / "o").exists()


def test_export_refuses_an_existing_folder(run, tmp_path, capsys):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep").write_text("x")
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    assert "--out: '" in capsys.readouterr().err and (tmp_path / "o" / "keep").read_text() == "x"


def test_export_reports_an_exporter_failure_and_writes_nothing(run, tmp_path, monkeypatch):
    import torch

    from peftkit.inference.export import export_onnx

    def fail(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate\n(long exporter trace)")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(PeftkitError) as err:
        export_onnx(run, tmp_path / "o", progress=lambda m: None)
    message = str(err.value)
    assert "torch's ONNX exporter could not export adapter" in message
    assert (
        "RuntimeError: unsupported operator aten::frobnicate)" in message
        and "long exporter trace" not in message
    )
    assert "Nothing was written" in message and not (tmp_path / "o").exists()


def test_export_refuses_a_graph_that_answers_differently(run, tmp_path, monkeypatch):
    import torch

    from peftkit.inference import parity
    from peftkit.inference.export import export_onnx

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: None)
    monkeypatch.setattr(parity, "run_plain_loaders", _wrong_logits)
    with pytest.raises(PeftkitError) as err:
        export_onnx(run, tmp_path / "o", progress=lambda m: None)
    assert "the ONNX graph does not reproduce the adapter (labels agree on" in str(err.value)
    assert "was not written" in str(err.value) and not (tmp_path / "o").exists()


def test_sentence_folder_needs_a_linear_head(tiny_bert, tmp_path):
    import torch

    from peftkit.inference.sentence_folder import write_sentence_transformers_folder
    from peftkit.models.load import load_model_and_tokenizer
    from peftkit.models.sources import resolve_source

    model, tok = load_model_and_tokenizer(
        resolve_source(str(tiny_bert)), task="classification", labels=["a", "b"]
    )
    model.classifier = torch.nn.Sequential(model.classifier)
    with pytest.raises(PeftkitError, match="whose classifier is not one linear layer cannot be written"):
        write_sentence_transformers_folder(
            model, tok, tmp_path / "st", max_length=32, labels=["a", "b"], name="st"
        )
