"""Adapters under faults: damaged files, tampered fingerprints, plain PEFT adapters (loaded only when accepted as
unverified, and then marked so), a killed merge. Each asserts the message, the exit code and what is on disk."""

from __future__ import annotations

import json
import shutil

import pytest

from peftkit.adapters.bundle import META_FILE, load_adapter
from peftkit.cli import main
from peftkit.errors import PeftkitError
from peftkit.inference.adapter_set import AdapterSet
from tests.faults.helpers import one_paragraph, snapshot


@pytest.fixture
def adapter(reference_run, tmp_path):
    """A copy of the reference run's adapter folder, free to damage."""
    return shutil.copytree(reference_run / "adapter", tmp_path / "adapter")


def _edit_meta(folder, edit) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    edit(meta)
    (folder / META_FILE).write_text(json.dumps(meta))


def _cli(argv, capsys) -> tuple[int, str, str]:
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["predict", "merge", "eval"])
def test_adapter_config_that_is_not_json(adapter, tmp_path, capsys, command):
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", ')
    argv = {
        "predict": ["predict", adapter, "a good film"],
        "merge": ["merge", adapter, "--out", tmp_path / "merged"],
        "eval": ["eval", adapter],
    }[command]
    code, _, err = _cli(argv, capsys)
    assert code == 2
    message = one_paragraph(err)
    assert (
        f"adapter '{adapter}': adapter_config.json is not valid JSON" in message
        and "copy it again" in message
    )
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(
    "edit, words",
    [
        (
            lambda m: m.update(labels=["pos", "neg"]),
            'labels (now ["pos", "neg"]) no longer matches the fingerprint',
        ),
        (
            lambda m: m["base_model"].update(content_hash="sha256:" + "0" * 64),
            "base_model.content_hash (now",
        ),
        (lambda m: m.update(tokenizer_hash="sha256:" + "1" * 64), "tokenizer_hash (now"),
        (lambda m: m.update(pooling="mean"), 'pooling (now "mean")'),
        (lambda m: m.pop("fingerprint"), "has a peftkit_adapter.json without a fingerprint"),
        (
            lambda m: m["files"].update({"adapter_model.safetensors": "sha256:" + "2" * 64}),
            "adapter_model.safetensors does not match its recorded checksum",
        ),
    ],
    ids=["labels swapped", "base hash", "tokenizer hash", "pooling", "fingerprint removed", "weights hash"],
)
def test_tampered_metadata_is_refused_everywhere(adapter, capsys, edit, words):
    _edit_meta(adapter, edit)
    code, out, err = _cli(["predict", adapter, "a good film"], capsys)
    assert code == 2 and out == ""
    assert words in one_paragraph(err), err
    with pytest.raises(PeftkitError, match="."):
        load_adapter(adapter)
    with pytest.raises(PeftkitError) as refused:
        AdapterSet().add("a", adapter)
    assert words in str(refused.value)


def test_plain_peft_adapter_needs_the_explicit_path(adapter, tiny_bert, tiny_card, capsys):
    (adapter / META_FILE).unlink()
    base = ["--base", tiny_bert]
    code, out, err = _cli(["predict", adapter, "a good film", *base], capsys)
    assert code == 2 and out == ""
    message = one_paragraph(err)
    assert "has no peftkit_adapter.json: it is a plain PEFT adapter" in message
    assert "pass --unverified" in message and "--labels A,B" in message

    code, out, err = _cli(["predict", adapter, "a good film", *base, "--unverified", "--json"], capsys)
    assert code == 0, err
    row = json.loads(out)
    assert row["unverified"] is True and set(row["probabilities"]) == {"LABEL_0", "LABEL_1"}
    assert f"adapter '{adapter}' is UNVERIFIED (no fingerprint)" in err

    code, out, err = _cli(
        ["predict", adapter, "a good film", *base, "--unverified", "--labels", "neg,pos"], capsys
    )
    assert (
        code == 0
        and out.rstrip().endswith("a good film\t(unverified)")
        and out.split("\t")[0] in ("neg", "pos")
    )

    code, out, err = _cli(
        ["eval", adapter, "--data", tiny_card, *base, "--unverified", "--labels", "neg,pos", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["unverified"] is True and json.loads(out)["accuracy"] > 0.5

    code, out, err = _cli(["predict", adapter, "x", *base, "--unverified", "--labels", "a,b,c"], capsys)
    assert code == 2
    assert "--labels: 3 names (a, b, c) for an adapter whose head has 2 outputs" in one_paragraph(err)


def test_adapter_config_peft_cannot_read(adapter, capsys):
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 3  # the weights were saved with another rank
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    code, _, err = _cli(["predict", adapter, "a good film"], capsys)
    assert code == 2
    message = one_paragraph(err)
    assert f"adapter '{adapter}': PEFT could not apply it to base" in message and "size mismatch" in message


def test_merge_into_a_file_is_refused(adapter, tmp_path, capsys):
    (tmp_path / "taken").write_text("keep")
    code, _, err = _cli(["merge", adapter, "--out", tmp_path / "taken"], capsys)
    assert code == 2 and "'" + str(tmp_path / "taken") + "' is an existing file" in one_paragraph(err)
    assert (tmp_path / "taken").read_text() == "keep"


@pytest.mark.slow
def test_killed_merge_leaves_a_temporary_that_the_next_merge_cleans(adapter, tmp_path, child, capsys):
    out = tmp_path / "merged"
    done = child("kill-in-merge", "merge", adapter, "--out", out)
    assert done.returncode == -9, done.stderr[-3000:]
    stale = list(tmp_path.glob(".merged.~*.tmp"))
    assert len(stale) == 1 and (stale[0] / "config.json").is_file() and not out.exists()
    code, _, err = _cli(["merge", adapter, "--out", out], capsys)
    assert code == 0, err
    assert not list(tmp_path.glob(".merged.*")) and (out / "parity_report.json").is_file()
    assert json.loads((out / "parity_report.json").read_text())["verified"] is True
    before = snapshot(out)
    code, _, err = _cli(["merge", adapter, "--out", out], capsys)  # an existing --out needs --overwrite
    assert code == 2 and "already exists" in one_paragraph(err) and snapshot(out) == before


@pytest.mark.slow
def test_merge_on_a_full_disk_is_one_paragraph(adapter, tmp_path, child):
    out = tmp_path / "merged"
    done = child("disk-full", "merge", adapter, "--out", out)
    assert done.returncode == 2, done.stderr[-3000:]
    message = one_paragraph(done.stderr)
    assert f"merge --out: '{out}' could not be written: File too large" in message
    assert not out.exists() and not list(tmp_path.glob(".merged.*"))
