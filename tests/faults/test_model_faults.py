"""A damaged base model folder is refused in one paragraph naming the file, by `validate` and by `train` alike,
before anything is written; peftkit never runs a model's own code."""

from __future__ import annotations

import json
import shutil

import pytest

from peftkit.cli import main
from tests.faults.helpers import one_paragraph, snapshot


def _damage(folder, case) -> str:
    config = folder / "config.json"
    if case == "config not json":
        config.write_text('{"model_type": "bert", ' + "x" * 5000)
        return f"{config} is not valid JSON"
    if case == "auto_map":
        cfg = json.loads(config.read_text())
        cfg.update(model_type="frobnet", auto_map={"AutoModel": "modeling_frob.FrobModel"})
        config.write_text(json.dumps(cfg))
        return "names model_type 'frobnet', an architecture transformers"
    if case == "no weights":
        (folder / "model.safetensors").unlink()
        return f"folder {folder} has a config.json but no weights"
    if case == "truncated weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        return f"weight file {weights} is truncated or corrupt (expected"
    (folder / "tokenizer.json").write_text("{")
    return "could not load its tokenizer (JSONDecodeError"


@pytest.mark.parametrize(
    "case", ["config not json", "auto_map", "no weights", "truncated weights", "tokenizer not json"]
)
def test_damaged_model_folder(tiny_bert, old_run, make_recipe, tmp_path, capsys, case):
    model = shutil.copytree(tiny_bert, tmp_path / "model")
    words = _damage(model, case)
    path = make_recipe(old_run)
    path.write_text(path.read_text().replace(str(tiny_bert), str(model)))
    before = snapshot(old_run.parent)
    for command in (["validate", path], ["train", path, "--overwrite", "--no-progress"]):
        code = main(list(map(str, command)))
        err = capsys.readouterr().err
        assert code == 2
        assert words in one_paragraph(err), err
    if case == "auto_map":
        assert "never runs (trust_remote_code stays off)" in err
    assert snapshot(old_run.parent) == before
