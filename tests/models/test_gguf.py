"""GGUF sources: a tiny llama GGUF written here is converted once into a cached HF folder, reused, rebuilt when
the cache is damaged; missing or corrupt GGUF files are clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from peftkit.errors import PeftkitError
from peftkit.models import gguf as peftkit_gguf
from peftkit.models.gguf import MARKER, converted_folder

HIDDEN, LAYERS, FFN, HEADS, KV_HEADS = 32, 2, 64, 4, 2


def write_tiny_gguf(path, seed: int = 0):
    """A 2-layer llama with a byte-level BPE vocabulary, written with gguf's own writer (float32 tensors)."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<unk>", "<|endoftext|>", "<eos>"]
    words = ["Ġg", "Ġgo", "Ġgoo", "Ġgood"]
    tokens = specials + list(bytes_to_unicode().values()) + words
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    w.add_token_merges(["Ġ g", "Ġg o", "Ġgo o", "Ġgoo d"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    kv = HIDDEN // HEADS * KV_HEADS
    w.add_tensor("token_embd.weight", rand(len(tokens), HIDDEN))
    for i in range(LAYERS):
        for name, shape in (
            ("attn_q", (HIDDEN, HIDDEN)),
            ("attn_k", (kv, HIDDEN)),
            ("attn_v", (kv, HIDDEN)),
            ("attn_output", (HIDDEN, HIDDEN)),
            ("ffn_gate", (FFN, HIDDEN)),
            ("ffn_up", (FFN, HIDDEN)),
            ("ffn_down", (HIDDEN, FFN)),
        ):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(*shape))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(HIDDEN, np.float32))
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture(autouse=True)
def _forget_verified(monkeypatch):
    # Each test sees the cache as a fresh process would.
    peftkit_gguf.forget_verified()


def _logits(folder_or_model, ids):
    with torch.no_grad():
        return folder_or_model(torch.tensor([ids])).logits


def test_converts_once_into_an_hf_folder(tiny_gguf, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    folder = converted_folder(tiny_gguf)
    assert folder.parent == tmp_path / "cache" / "gguf" and folder.name.startswith("tiny-llama-")
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= names
    assert not list((tmp_path / "cache" / "gguf").glob(".*.tmp"))
    record = json.loads((folder / MARKER).read_text())
    assert set(record["files"]) == names - {MARKER}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    # Same numbers as transformers' own GGUF loading.
    ids = [5, 80, 262, 9]
    direct = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name).eval()
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert torch.equal(_logits(direct, ids), _logits(converted, ids))
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok(" good go")["input_ids"] == [262, 260] and tok.eos_token == "<eos>"

    # Reused: the second call converts nothing.
    monkeypatch.setattr(peftkit_gguf, "convert_gguf", lambda *a: pytest.fail("converted again"))
    peftkit_gguf.forget_verified()
    assert converted_folder(tiny_gguf) == folder


@pytest.mark.parametrize("damage", ["truncated-weights", "no-marker", "bad-marker"])
def test_damaged_cache_is_rebuilt(damage, tiny_gguf, tmp_path):
    folder = converted_folder(tiny_gguf, cache_dir=tmp_path)
    good = (folder / "model.safetensors").read_bytes()
    if damage == "truncated-weights":
        (folder / "model.safetensors").write_bytes(good[: len(good) // 2])
    elif damage == "no-marker":  # a conversion killed before it finished
        (folder / MARKER).unlink()
    else:
        (folder / MARKER).write_text("{not json")
    peftkit_gguf.forget_verified()
    with pytest.warns(UserWarning, match="incomplete or corrupt"):
        again = converted_folder(tiny_gguf, cache_dir=tmp_path)
    assert again == folder
    assert (folder / "model.safetensors").read_bytes() == good
    assert json.loads((folder / MARKER).read_text())["files"]["model.safetensors"]["size"] == len(good)


def test_failed_conversion_leaves_nothing(tiny_gguf, tmp_path, monkeypatch):
    def boom(path, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(peftkit_gguf, "convert_gguf", boom)
    with pytest.raises(PeftkitError, match="could not be converted.*disk full"):
        converted_folder(tiny_gguf, cache_dir=tmp_path)
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == [".lock"]


def test_missing_gguf(tmp_path):
    with pytest.raises(PeftkitError) as err:
        converted_folder(tmp_path / "nope.gguf", cache_dir=tmp_path)
    assert "nope.gguf' does not exist" in str(err.value) and "model.source" in str(err.value)


@pytest.mark.parametrize("kind", ["not-gguf", "truncated"])
def test_corrupt_gguf(kind, tiny_gguf, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"PK\x03\x04 zip?" if kind == "not-gguf" else tiny_gguf.read_bytes()[:60000])
    with pytest.raises(PeftkitError) as err:
        converted_folder(bad, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert str(bad) in msg
    assert ("is not a GGUF file" in msg) if kind == "not-gguf" else ("corrupt or truncated" in msg)
    assert not (tmp_path / "cache" / "gguf").exists() or not any(
        p.name != ".lock" for p in (tmp_path / "cache" / "gguf").iterdir()
    )


@pytest.fixture(scope="module")
def checked_card(tmp_path_factory):
    from tests.helpers import make_texts, write_checked_card

    return write_checked_card(tmp_path_factory.mktemp("card"), make_texts(200))


def test_recipe_trains_and_predicts_from_a_gguf_source(
    tiny_gguf, checked_card, tmp_path, monkeypatch, capsys
):
    from peftkit.cli import main
    from peftkit.models.sources import content_hash, resolve_source
    from tests.helpers import write_recipe

    tiny_card = checked_card
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    recipe = write_recipe(
        tmp_path / "r.yaml", model=tiny_gguf, card=tiny_card, out=tmp_path / "run", train={"max_steps": 3}
    )
    assert main(["validate", str(recipe)]) == 0
    assert "gguf" in capsys.readouterr().out
    assert main(["train", str(recipe), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "run" / "adapter" / "peftkit_adapter.json").read_text())
    assert meta["base_model"]["content_hash"] == content_hash(resolve_source(str(tiny_gguf)))
    assert meta["base_model"]["model_type"] == "llama"
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "a good film", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] in ("neg", "pos") and sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-4)


def test_validate_reports_a_truncated_gguf(tiny_gguf, checked_card, tmp_path, monkeypatch, capsys):
    from peftkit.cli import main
    from tests.helpers import write_recipe

    bad = tmp_path / "half.gguf"
    bad.write_bytes(tiny_gguf.read_bytes()[:60000])
    monkeypatch.setenv("PEFTKIT_CACHE", str(tmp_path / "cache"))
    recipe = write_recipe(tmp_path / "r.yaml", model=bad, card=checked_card, out=tmp_path / "run")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "half.gguf' is corrupt or truncated" in err and "Traceback" not in err


def test_missing_gguf_package_says_how_to_install_it(tiny_gguf, monkeypatch):
    """`gguf` is an optional extra: without it a GGUF source is refused with the install command."""
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf → ImportError, as when it is not installed
    with pytest.raises(PeftkitError) as err:
        peftkit_gguf.check_gguf(tiny_gguf)
    assert "needs the optional `gguf` package" in str(err.value)
    assert "pip install 'peftkit[gguf]'" in str(err.value)
