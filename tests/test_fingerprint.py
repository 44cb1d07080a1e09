"""Every adapter load checks its fingerprint: wrong base, tokenizer, labels, task, or damaged files are refused
before any weight is used, with expected vs found; a plain PEFT adapter loads with a warning."""

from __future__ import annotations

import json
import shutil

import pytest

from peftkit.adapters.bundle import META_FILE, load_adapter
from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.inference.adapter_set import AdapterSet
from tests.helpers import train_tiny


@pytest.fixture(scope="module")
def adapter(tiny_bert, tiny_card, tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("fp"), "run", model=tiny_bert, card=tiny_card, epochs=1)


@pytest.fixture
def copy(adapter, tmp_path):
    dst = tmp_path / "adapter"
    shutil.copytree(adapter, dst)
    return dst


def _edit_meta(folder, **changes):
    meta = json.loads((folder / META_FILE).read_text())
    meta.update(changes)
    (folder / META_FILE).write_text(json.dumps(meta))


def test_other_base_refused(adapter, tiny_gpt2):
    with pytest.raises(
        PeftkitError, match=r"trained on a different base.*base model: expected sha256:.*found sha256:"
    ):
        load_adapter(adapter, base_source=str(tiny_gpt2))


def test_other_tokenizer_refused(adapter, tiny_bert, tmp_path):
    other = tmp_path / "bert-other-vocab"
    shutil.copytree(tiny_bert, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]  # same weights, a different tokenizer
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(PeftkitError) as err:
        load_adapter(adapter, base_source=str(other))
    assert "tokenizer: expected sha256:" in str(err.value) and "base model:" not in str(err.value)


def test_label_set_and_task_the_caller_needs(adapter):
    with pytest.raises(
        PeftkitError, match=r"different label set: expected \['a', 'b', 'c'\], found \['neg', 'pos'\]"
    ):
        load_adapter(adapter, labels=["a", "b", "c"])
    with pytest.raises(PeftkitError, match="wrong task: expected causal_lm, found classification"):
        load_adapter(adapter, task="causal_lm")


def test_metadata_that_disagrees_with_the_weights_refused(copy):
    _edit_meta(copy, labels=["neg", "pos", "meh"])
    with pytest.raises(
        PeftkitError, match=r"label set does not match the head: expected 3 labels .* found a head with 2"
    ):
        load_adapter(copy)


def test_task_that_disagrees_with_adapter_config_refused(copy):
    _edit_meta(copy, task="causal_lm")
    with pytest.raises(PeftkitError, match="task does not match: expected CAUSAL_LM .* found SEQ_CLS"):
        load_adapter(copy)


def test_truncated_weights_refused_by_checksum(copy, capsys):
    f = copy / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(PeftkitError, match="does not match its recorded checksum .* truncated"):
        load_adapter(copy)
    assert main(["predict", str(copy), "a good film"]) == 2
    assert "truncated" in capsys.readouterr().err
    with pytest.raises(PeftkitError, match="truncated"):
        AdapterSet().add("a", copy)


def test_truncated_plain_peft_file_refused_by_header_check(copy):
    (copy / META_FILE).unlink()
    f = copy / "adapter_model.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(
        PeftkitError, match=f"truncated or corrupt \\(expected {size} bytes, found {size - 100} bytes"
    ):
        load_adapter(copy)
    f.write_bytes(b"\x05\x00")
    with pytest.raises(PeftkitError, match="expected a valid safetensors header"):
        load_adapter(copy)


def test_corrupt_metadata_refused(copy):
    (copy / META_FILE).write_text("{not json")
    with pytest.raises(PeftkitError, match="is not valid JSON"):
        load_adapter(copy)


def test_plain_peft_adapter_loads_only_when_accepted_unverified(copy, tiny_bert, adapter, capsys):
    import numpy as np

    (copy / META_FILE).unlink()
    with pytest.raises(PeftkitError, match="plain PEFT adapter, so nothing about it can be checked"):
        load_adapter(copy, base_source=str(tiny_bert))
    plain = load_adapter(copy, base_source=str(tiny_bert), allow_unverified=True)
    assert plain.meta["task"] == "classification" and not plain.verified
    assert plain.labels == ["LABEL_0", "LABEL_1"]  # from its head's rows: never guessed from the base
    assert "is UNVERIFIED (no fingerprint)" in capsys.readouterr().err
    adapters = AdapterSet(base_source=str(tiny_bert))
    with pytest.raises(PeftkitError, match="--unverified"):
        adapters.add("plain", copy)
    adapters.add("plain", copy, allow_unverified=True, labels=["neg", "pos"])
    adapters.add("checked", adapter)
    assert adapters.predict("plain", ["a good film"])[0]["unverified"] is True
    assert "unverified" not in adapters.predict("checked", ["a good film"])[0]
    np.testing.assert_array_equal(
        adapters.logits("plain", ["a good film"]), adapters.logits("checked", ["a good film"])
    )
