"""Merge parity and swapping adapters of different types and label sets on one base (tiny BERT)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from peftkit.adapters.bundle import load_adapter
from peftkit.cli import main
from peftkit.inference.adapter_set import AdapterSet
from peftkit.inference.merge import REPORT_FILE, merge_adapter
from tests.helpers import make_texts, train_tiny, write_card

TEXTS = [t for t, _ in make_texts(12, seed=7)]


@pytest.fixture(scope="module")
def runs(tiny_bert, tiny_card, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swap")
    three = write_card(
        tmp / "data3",
        [(t, ["neg", "pos", "meh"][i % 3]) for i, (t, _) in enumerate(make_texts(150))],
        name="three",
        labels=("neg", "pos", "meh"),
    )
    return {
        "bottleneck": train_tiny(  # a bottleneck adapter (Pfeiffer layout)
            tmp, "bottleneck", model=tiny_bert, card=tiny_card, epochs=1, method={"name": "pfeiffer"}
        ),
        "lora": train_tiny(tmp, "lora", model=tiny_bert, card=tiny_card),
        "prefix": train_tiny(
            tmp,
            "prefix",
            model=tiny_bert,
            card=tiny_card,
            epochs=1,
            method={"name": "prefix_tuning", "num_virtual_tokens": 4},
        ),
        "lora3": train_tiny(tmp, "lora3", model=tiny_bert, card=three, epochs=1),
        "qlora": train_tiny(tmp, "qlora", model=tiny_bert, card=tiny_card, quantization={"bits": 4}),
    }


def _alone(path, texts=TEXTS):
    """Logits of the adapter loaded on its own (its own base copy), the reference a swap must reproduce."""
    return _logits(load_adapter(path), texts)


def _logits(loaded, texts=TEXTS):
    """Logits of a loaded adapter (`load_adapter`'s result) on `texts`."""
    from peftkit.data.prepare import tokenize_texts
    from peftkit.inference.forward import forward_split

    ids = tokenize_texts(loaded.tokenizer, texts, loaded.meta["max_length"])
    logits, _ = forward_split(
        loaded.model,
        ids,
        None,
        pad_token_id=loaded.tokenizer.pad_token_id,
        padding_side=loaded.tokenizer.padding_side,
        batch_size=64,
    )
    return logits


def test_swap_gives_each_adapter_its_own_logits_exactly(runs):
    adapters = AdapterSet()
    for name in ("lora", "prefix", "lora3"):
        adapters.add(name, runs[name])
    # Interleave requests so every call follows a swap.
    for _ in range(2):
        for name in ("prefix", "lora", "lora3"):
            np.testing.assert_array_equal(adapters.logits(name, TEXTS), _alone(runs[name]))
    assert adapters.logits("lora3", TEXTS).shape == (len(TEXTS), 3)
    # One base in memory: every adapter's frozen weights are the very same tensors.
    ptrs = [
        {p.data_ptr() for n, p in e.model.named_parameters() if "word_embeddings" in n}
        for e in adapters.entries.values()
    ]
    assert len(set().union(*ptrs)) == 1


@pytest.mark.parametrize("kind", ["prefix", "lora3", "bottleneck"])
def test_swap_pairs_with_lora(runs, kind):
    adapters = AdapterSet()
    adapters.add("a", runs["lora"])
    adapters.add("b", runs[kind])
    np.testing.assert_array_equal(adapters.logits("b", TEXTS), _alone(runs[kind]))
    np.testing.assert_array_equal(adapters.logits("a", TEXTS), _alone(runs["lora"]))


def test_predict_cli_routes_each_line_to_its_adapter(runs, tmp_path, capsys):
    lines = [
        {"adapter": "sent", "text": "a good film"},
        {"adapter": "three", "text": "a dull plot"},
        {"adapter": "pre", "text": "bad"},
    ]
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = [
        "predict",
        "--adapter",
        f"sent={runs['lora']}",
        "--adapter",
        f"three={runs['lora3']}",
        "--adapter",
        f"pre={runs['prefix']}",
        "--file",
        str(f),
        "--json",
    ]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["adapter"] for r in rows] == ["sent", "three", "pre"]
    assert set(rows[1]["probabilities"]) == {"neg", "pos", "meh"} and set(rows[0]["probabilities"]) == {
        "neg",
        "pos",
    }
    assert rows[0]["label"] == "pos"
    f.write_text(json.dumps({"adapter": "nope", "text": "x"}) + "\n")
    assert main(args) == 2
    assert "adapter 'nope' was not given" in capsys.readouterr().err
    assert main(["predict", "--adapter", "oops", "--file", str(f)]) == 2
    assert "expected NAME=PATH" in capsys.readouterr().err


@pytest.mark.integration
def test_merge_cli_writes_a_transformers_folder_proved_in_a_process_without_peftkit(runs, tmp_path, capsys):
    """The parity report is measured by plain transformers in a child process, not by peftkit against itself."""
    from transformers import AutoModelForSequenceClassification

    assert main(["merge", str(runs["lora"]), "--out", str(tmp_path / "m"), "--samples", "8"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "[3/5] merging" in captured.err and "in a fresh process (no peftkit)" in captured.err
    assert report["n_samples"] == 8 and report["format"] == "transformers"
    [check] = report["plain_loaders"]
    assert check["loader"] == "transformers" and check["outcome"] == "parity" == check["expected"]
    assert check["agree"] == check["n"] == 8 and check["max_abs_logit_diff"] <= 1e-5
    assert json.loads((tmp_path / "m" / REPORT_FILE).read_text()) == report
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert not any("lora" in n for n, _ in model.named_parameters())


@pytest.mark.integration
def test_merge_of_quantized_trained_adapter_goes_to_full_precision(runs, tmp_path):
    report = merge_adapter(runs["qlora"], tmp_path / "merged", texts=TEXTS, progress=lambda m: None)
    assert report["merged_dtype"] == "float32"
    assert report["plain_loaders"][0]["outcome"] == "parity"
    assert report["plain_loaders"][0]["max_abs_logit_diff"] <= 1e-5
    assert report["vs_quantized_training_base"]["label_agreement"] == 1.0
    assert report["vs_quantized_training_base"]["max_abs_logit_diff"] > 0  # 4-bit vs fp32 base: not bit-equal


def test_merge_refuses_prefix_tuning_and_existing_out(runs, tmp_path, capsys):
    assert main(["merge", str(runs["prefix"]), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "prefix_tuning, which cannot be merged" in err and "virtual tokens" in err
    assert not (tmp_path / "m").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["merge", str(runs["lora"]), "--out", str(tmp_path / "full")]) == 2
    assert "already exists" in capsys.readouterr().err
    if "bottleneck" in runs:
        assert main(["merge", str(runs["bottleneck"]), "--out", str(tmp_path / "b")]) == 2
        assert "cannot be merged" in capsys.readouterr().err


def test_swap_refuses_adapter_for_another_base(runs, tiny_gpt2, tiny_card, tmp_path):
    other = train_tiny(tmp_path, "g", model=tiny_gpt2, card=tiny_card, epochs=1)
    adapters = AdapterSet()
    adapters.add("a", runs["lora"])
    from peftkit.errors import PeftkitError

    with pytest.raises(PeftkitError, match=r"does not fit the loaded base.*base model: expected .* found"):
        adapters.add("b", other)
    with pytest.raises(PeftkitError, match="no adapter named 'zz'"):
        adapters.activate("zz")
    shutil.rmtree(other.parent)


@pytest.mark.integration
def test_serve_bench_prints_figures(runs, capsys):
    args = ["serve-bench", "--texts", "8"]
    for i in range(3):
        args += ["--adapter", f"a{i}={runs['lora']}"]
    assert main([*args, "--adapter", f"p={runs['prefix']}"]) == 0
    out = capsys.readouterr().out
    for words in ("swap (activate) median", "right after a swap", "adapter active", "merged", "4 adapter(s)"):
        assert words in out
    assert main(["serve-bench"]) == 2
    assert "nothing to measure" in capsys.readouterr().err


@pytest.mark.integration
def test_routed_predict_in_a_fresh_process_loads_a_bottleneck_adapter_first(runs, tmp_path):
    """peftkit's own PEFT types must be registered before PEFT reads the adapter config (a fresh process has not
    imported them; in this test process something else already had)."""
    import subprocess
    import sys

    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"adapter": "b", "text": "a good film"}) + "\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "peftkit",
            "predict",
            "--adapter",
            f"b={runs['bottleneck']}",
            "--adapter",
            f"l={runs['lora']}",
            "--file",
            str(f),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[0])["adapter"] == "b"


def test_serve_bench_compare_qlora_over_seeds(monkeypatch, capsys, tmp_path):
    """--seeds trains the pair once per seed (seed passed as an override, one folder per seed) and reports the
    mean QLoRA − LoRA difference; training itself is faked here (the real pair takes minutes)."""
    import peftkit.bench.serving as sb

    accuracy = {("fp32", 1): 0.80, ("q", 1): 0.79, ("fp32", 2): 0.82, ("q", 2): 0.82}
    calls = []

    def fake_train(recipe, overrides, out):
        seed = int([o for o in overrides if o.startswith("train.seed=")][0].split("=")[1])
        calls.append((recipe, overrides, out))
        return {
            "recipe": recipe,
            "accuracy": accuracy[(recipe, seed)],
            "macro_f1": 0.5,
            "peak_rss_mb": 100.0,
            "examples_per_s": 1.0,
            "adapter": str(out / "adapter"),
        }

    monkeypatch.setattr(sb, "train_in_process", fake_train)
    result = sb.compare_qlora_training(["fp32", "q"], ["data.max_train_examples=10"], [1, 2], root=tmp_path)
    assert [c[0] for c in calls] == ["fp32", "q", "fp32", "q"]
    assert calls[2][1] == ["data.max_train_examples=10", "train.seed=2"]
    assert calls[3][2] == tmp_path / "seed2" / "q"
    assert [round(r["delta_pt"], 6) for r in result["runs"]] == [-1.0, 0.0]
    assert result["mean_delta_pt"] == pytest.approx(-0.5)
    assert result["stdev_delta_pt"] == pytest.approx(0.7071, abs=1e-4)
    sb.print_training_comparison(result)
    assert "over 2 seed(s): mean -0.50 pt (sd 0.71 pt)" in capsys.readouterr().out.replace("−", "-")


@pytest.mark.parametrize(
    "seeds, words", [("1,x", "comma-separated list of integers"), ("1,1", "repeats a seed")]
)
def test_serve_bench_bad_seeds_are_usage_errors(seeds, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve-bench", "--seeds", seeds])
    assert exc.value.code == 2
    assert words in capsys.readouterr().err


def test_serve_bench_seeds_need_compare_qlora(capsys):
    assert main(["serve-bench", "--adapter", "a=b", "--seeds", "1,2"]) == 2
    assert "give --compare-qlora too" in capsys.readouterr().err
