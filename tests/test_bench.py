"""`peftkit bench` on a tiny BERT: two methods + the peer pipeline, both output files, every column plausible."""

from __future__ import annotations

import json

import pytest

from peftkit.bench.methods import run_bench
from peftkit.cli import main
from peftkit.errors import PeftkitError
from tests.helpers import write_recipe


@pytest.fixture(scope="module")
def bench(tiny_bert, tiny_card, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    recipe = write_recipe(
        tmp / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp / "run", train={"epochs": 1}
    )
    # run_bench directly: the CLI's 2048² matmul-peak probe takes seconds on one thread; 512² shows the same.
    return run_bench(
        str(recipe),
        methods=["lora", "full", "nosuch"],
        peer=True,
        budget=80,
        output=tmp / "out",
        progress=False,
        matmul_size=512,
    )


@pytest.mark.integration
def test_bench_json_rows_filled_and_plausible(bench):
    result = json.loads((bench / "bench.json").read_text())
    assert result["matmul_peak_flops"] > 1e8 and "6·N·T" in result["flop_formula"]
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["lora", "peer_pad128 (lora)", "peer_dynamic (lora)", "full", "nosuch"]
    assert rows["nosuch"]["status"].startswith("skipped: method.name: unknown method 'nosuch'")
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    assert len(ok) == 4
    for r in ok:
        assert 0 < r["trainable_pct"] <= 100
        assert r["examples"] == 80  # the budget, one epoch
        assert r["examples_per_second"] > 0 and r["tokens_per_second"] > 0
        assert r["peak_rss_mb"] > 50 and r["adapter_bytes"] > 0
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and r["eval_loss"] > 0
        assert 0 < r["mfu_pct"] < 100
    # One peak before the first row and one after every row; a row's MFU uses the larger of the two around it.
    peaks = result["matmul_peaks_flops"]
    assert len(peaks) == len(result["rows"]) + 1 and result["matmul_peak_flops"] == max(peaks)
    for i, r in enumerate(result["rows"]):
        if r["status"] != "ok":
            continue
        assert r["matmul_peak_gflops"] * 1e9 == pytest.approx(max(peaks[i : i + 2]))
        assert r["mfu_pct"] == pytest.approx(100 * r["train_flops"] / r["seconds"] / max(peaks[i : i + 2]))
    assert rows["full"]["trainable_pct"] == 100
    assert rows["lora"]["trainable_pct"] < 100
    # Full fine-tuning saves the whole model; LoRA only the adapter (+ head).
    assert rows["full"]["adapter_bytes"] > rows["lora"]["adapter_bytes"]
    # The same data: peftkit and the peer see the same real tokens; pad-to-max_length pads most of them away.
    assert rows["lora"]["real_tokens"] == rows["peer_dynamic (lora)"]["real_tokens"]
    assert 0.3 < rows["peer_pad128 (lora)"]["pad_share"] < 1
    for peer in ("peer_pad128 (lora)", "peer_dynamic (lora)"):
        assert rows[peer]["peftkit_speedup"] == pytest.approx(
            rows["lora"]["examples_per_second"] / rows[peer]["examples_per_second"]
        )


@pytest.mark.integration
def test_bench_markdown_table(bench):
    md = (bench / "bench.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 4  # header + the four rows that ran
    for line in table[1:]:
        assert "—" not in line  # every column filled
    assert (
        "--methods lora,full,nosuch --budget 80 --peer --device cpu`" in md
    )  # the command that reproduces it
    assert "| full | 5e-05 |" in md  # full fine-tuning gets its own learning rate
    assert "peer_dynamic (lora): **" in md and "nosuch: skipped" in md and "(4·N + 2·N_train)·T" in md
    assert "before the first row and after every row" in md and "| peak GFLOP/s | MFU % |" in md


def test_bench_refuses_bad_budget(tiny_bert, tiny_card, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run")
    assert main(["bench", str(recipe), "--budget", "0"]) == 2
    assert "--budget: expected a positive number" in capsys.readouterr().err


def test_full_method_takes_no_settings():
    from peftkit.errors import PeftkitError
    from peftkit.methods.registry import check_method_settings

    assert check_method_settings("full", {}) == {}
    with pytest.raises(PeftkitError, match="'full' \\(full fine-tuning\\) takes no settings"):
        check_method_settings("full", {"r": 8})


def test_bench_prefix_row_depends_on_the_pooling(tiny_bert, tiny_card, tmp_path):
    """The bench's prefix row: under the [CLS] pooler, 128 prefixes per layer plus the pooler and the head at lr
    1e-2; under mean pooling, 20 prefixes and the head (there is no pooler) at lr 3e-2."""
    import transformers

    from peftkit.bench.methods import count_params, recipe_for_method
    from peftkit.recipe import load_recipe

    path = str(write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run"))
    cfg = transformers.AutoConfig.from_pretrained(tiny_bert)
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    pooler, head = h * h + h, 2 * h + 2
    cls, mean = load_recipe(path), load_recipe(path, ["model.pooling=mean"])
    assert count_params(cls, "prefix_tuning")["trainable_params"] == 128 * layers * 2 * h + pooler + head
    assert count_params(mean, "prefix_tuning")["trainable_params"] == 20 * layers * 2 * h + head
    assert recipe_for_method(cls, "prefix_tuning").train.learning_rate == 1e-2
    assert recipe_for_method(mean, "prefix_tuning").train.learning_rate == 3e-2
    assert recipe_for_method(mean, "full").train.learning_rate == 5e-5


def test_bench_device_and_unquantized_row_refusals(tiny_bert, tiny_card, tmp_path, capsys):
    import torch

    recipe = write_recipe(tmp_path / "r.yaml", model=tiny_bert, card=tiny_card, out=tmp_path / "run")
    if not torch.cuda.is_available():
        assert main(["bench", str(recipe), "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "--device cuda: no CUDA GPU is visible" in err and "--device cpu" in err
    assert main(["bench", str(recipe), "--unquantized-row"]) == 2
    err = capsys.readouterr().err
    assert "--unquantized-row: recipe" in err and "has no quantization block" in err
    with pytest.raises(PeftkitError, match="--device: unknown device 'tpu'"):
        run_bench(str(recipe), methods=["lora"], device="tpu", output=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
