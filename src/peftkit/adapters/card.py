"""The adapter card: `README.md` in Hugging Face model-card format, written into a run's adapter folder.

Metadata: `base_model` (the base's Hub id: `--base-model`, or the id peftkit knows for a hub source or a
package-shipped model; left out when none is known, since the Hub accepts only model ids there), `library_name:
peft`, `pipeline_tag`, `tags`, `datasets`, `license` and a `model-index` holding the run's validation and test
results. Body: what the adapter does, how to load it with peftkit and without it, the training recipe, a data
card summary with the example counts of this run, the metrics and the plots.

Nothing machine-specific goes into a card meant for publishing: local model folders and data card paths
are shown by name (`portable_source`), and `publish` renders the card again for the published folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from peftkit.fileio import atomic_write_text
from peftkit.models.sources import known_hub_id

CARD_FILE = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TASK_TAGS = {
    "classification": ("text-classification", "AutoModelForSequenceClassification"),
    "causal_lm": ("text-generation", "AutoModelForCausalLM"),
}


def is_hub_id(spec: str) -> bool:
    """`org/name` that is not a local path."""
    return bool(_HUB_ID.match(spec)) and not Path(spec).exists()


def portable_source(spec: str) -> str:
    """A model source that names no local path: hub ids and `package:` specs stay, folders become their name."""
    spec = spec.strip()
    if spec.startswith("hub:"):
        return spec[4:]
    if spec.startswith("package:") or is_hub_id(spec):
        return spec
    return Path(spec.removeprefix("path:")).name


def portable_recipe(text: str) -> str:
    """The resolved recipe with local paths replaced by names (model source, data card, run folder, cache)."""
    recipe = yaml.safe_load(text)
    recipe["model"]["source"] = portable_source(recipe["model"]["source"])
    recipe["model"]["cache_dir"] = None
    card = recipe["data"]["card"]
    recipe["data"]["card"] = Path(card).stem if card.endswith(".md") or "/" in card else card
    if recipe["train"].get("output_dir"):
        recipe["train"]["output_dir"] = f"runs/{Path(recipe['train']['output_dir']).name}"
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def _base_license(source_spec: str) -> str | None:
    """The `license` in the base model folder's own README front matter, when there is one."""
    try:
        from peftkit.models.sources import resolve_source

        path = resolve_source(source_spec).path
    except Exception:  # hub ids offline, moved folders: the card then says license: other
        return None
    readme = path / "README.md" if path is not None and path.is_dir() else None
    if readme is None or not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    return ModelCard(readme.read_text(encoding="utf-8")).data.to_dict().get("license")


def _card_summary(card_ref: str):
    try:
        from peftkit.data.cards import load_card

        return load_card(card_ref)
    except Exception:  # the card moved since training: the adapter card just says less
        return None


def _eval_results(metrics: dict, task: str, dataset: str, dataset_name: str) -> list:
    from huggingface_hub import EvalResult

    task_type = TASK_TAGS[task][0]
    results = []
    for split in ("validation", "test"):
        res = metrics.get(split) or {}
        for key, mtype, mname, config in (
            ("accuracy", "accuracy", "Accuracy", None),
            ("macro_f1", "f1", "Macro F1", "macro"),
            ("loss", "loss", "Loss", None),
            ("perplexity", "perplexity", "Perplexity", None),
        ):
            if isinstance(res.get(key), float):
                results.append(
                    EvalResult(
                        task_type=task_type,
                        dataset_type=dataset,
                        dataset_name=dataset_name,
                        dataset_split=split,
                        metric_type=mtype,
                        metric_name=mname,
                        metric_config=config,
                        metric_value=round(res[key], 4),
                    )
                )
    return results


def snippets(
    *,
    base: str,
    adapter: str,
    task: str,
    labels: list[str] | None,
    plain_base: str | None = None,
    pooling: str = "model",
) -> tuple[str, str]:
    """(peftkit snippet, snippet without peftkit) that load `adapter` on `base` (plain peft: `plain_base`) once.

    An adapter trained with `model.pooling: mean` cannot be read by plain transformers (it would pool [CLS]) and
    plain PEFT refuses it; its second snippet shows the merged sentence-transformers folder instead.
    """
    plain_base = plain_base or base
    example = "a sharp, witty and moving film"
    if task == "classification":
        use = f"print(predict_texts(adapter, [{example!r}], loaded=loaded))"
        ours = (
            f"from peftkit import load_adapter\nfrom peftkit.inference.predict import predict_texts\n\n"
            f"adapter = {adapter!r}\nloaded = load_adapter(adapter, base_source={base!r})\n{use}\n"
        )
    else:
        ours = (
            f"from peftkit import load_adapter\n\nadapter = {adapter!r}\n"
            f"loaded = load_adapter(adapter, base_source={base!r})\nprint(loaded.model)\n"
        )
    if task == "classification" and pooling == "mean":
        return ours, _MEAN_POOLED.format(adapter=adapter, labels=labels, example=example)
    auto = TASK_TAGS[task][1]
    plain = (
        f"import torch\nfrom peft import PeftModel\nfrom transformers import {auto}, AutoTokenizer\n\n"
        f"base = {plain_base!r}\n"
    )
    if task == "classification":
        plain += (
            f"labels = {labels!r}\n"
            "tokenizer = AutoTokenizer.from_pretrained(base)\n"
            f"model = {auto}.from_pretrained(base, num_labels=len(labels), id2label=dict(enumerate(labels)),\n"
            f"    label2id={{name: i for i, name in enumerate(labels)}}, pad_token_id=tokenizer.pad_token_id)\n"
            f"model = PeftModel.from_pretrained(model, {adapter!r}).eval()\n"
            "with torch.no_grad():\n"
            f"    logits = model(**tokenizer([{example!r}], return_tensors='pt')).logits\n"
            "print(labels[int(logits.argmax(-1))])\n"
        )
    else:
        plain += (
            f"model = PeftModel.from_pretrained({auto}.from_pretrained(base), {adapter!r}).eval()\n"
            "tokenizer = AutoTokenizer.from_pretrained(base)\n"
            "out = model.generate(**tokenizer(['The film'], return_tensors='pt'), max_new_tokens=20)\n"
            "print(tokenizer.decode(out[0]))\n"
        )
    return ours, plain


# The second snippet of a mean-pooled classifier: its merged form, in the loader that pools the same way.
_MEAN_POOLED = (
    "# Trained reading the mean of the tokens (model.pooling: mean). Plain transformers would read the [CLS]\n"
    "# token instead, so PEFT refuses this adapter with an error rather than load a different model. Merge it\n"
    "# into a sentence-transformers folder (`peftkit merge {adapter} --out merged`), whose loader pools the same\n"
    "# way, or export it to ONNX (`peftkit export {adapter} --format onnx --out onnx`).\n"
    "from sentence_transformers import SentenceTransformer\n\n"
    "labels = {labels!r}\n"
    "logits = SentenceTransformer('merged').encode([{example!r}])\n"
    "print(labels[int(logits[0].argmax())])\n"
)


def _best_line(metrics: dict) -> list[str]:
    """Which evaluation the adapter comes from, when the run tracked the best one (`train.keep_best`, early
    stopping)."""
    best = metrics.get("best")
    if not best:
        return []
    score = f"the best validation {best['metric']} ({best['value']:.4f})"
    stop = f"training stopped early at step {best['last_step']}" if best["stopped_early"] else None
    if best["kept"]:
        tail = f"; {stop}" if stop else f" (trained {best['last_step']} steps)"
        return [f"This adapter is from step {best['step']}, {score} of the run{tail}."]
    tail = f" ({stop})" if stop else ""
    return [
        f"{score[0].upper()}{score[1:]} was at step {best['step']}; this adapter is from the last step, "
        f"{best['last_step']}{tail}."
    ]


def _metrics_table(metrics: dict) -> str:
    keys = [
        k
        for k in ("accuracy", "macro_f1", "loss", "perplexity")
        if any(isinstance((metrics.get(s) or {}).get(k), float) for s in ("validation", "test"))
    ]
    rows = ["| split | n | " + " | ".join(keys) + " |", "|---|---:|" + "---:|" * len(keys)]
    for split in ("validation", "test"):
        res = metrics.get(split)
        if res:
            rows.append(
                f"| {split} | {res.get('n', '')} | " + " | ".join(f"{res[k]:.4f}" for k in keys) + " |"
            )
    test = metrics.get("test") or {}
    if test.get("per_class"):
        rows += [
            "",
            "Per class (test):",
            "",
            "| label | precision | recall | F1 | support |",
            "|---|---:|---:|---:|---:|",
        ]
        rows += [
            f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
            for name, s in test["per_class"].items()
        ]
    return "\n".join(rows)


def render_card(
    run_dir: str | Path,
    *,
    adapter_ref: str,
    plots_prefix: str = "../plots/",
    base_model: str | None = None,
    name: str | None = None,
) -> str:
    """The adapter card text for a run; `adapter_ref` is what the snippets load (a folder or a hub repo id).

    `base_model`: the base's Hub id, for the metadata and the plain-peft snippet, when the run used a local
    folder or package (the peftkit snippet keeps the run's source: its fingerprint is checked on load). `name`:
    the run's name (default: the folder's).
    """
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    name = name or run_dir.name
    meta = json.loads((run_dir / "adapter" / "peftkit_adapter.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recipe_text = portable_recipe((run_dir / "recipe.resolved.yaml").read_text())
    recipe = yaml.safe_load(recipe_text)
    task, method, labels = meta["task"], meta["method"], meta.get("labels")
    base = portable_source(meta["base_model"]["source"])
    hub_base = base_model or known_hub_id(meta["base_model"]["source"])
    card = _card_summary(meta.get("data_card") or recipe["data"]["card"])
    dataset = card.source.hub if card and card.source.kind == "hub" else recipe["data"]["card"]
    dataset_name = (card.metadata.get("pretty_name") if card else None) or dataset
    license_ = _base_license(meta["base_model"]["source"]) or "other"
    data = ModelCardData(
        base_model=hub_base,
        library_name="peft",
        pipeline_tag=TASK_TAGS[task][0],
        license=license_,
        tags=["peft", "peftkit", method, TASK_TAGS[task][0]],
        datasets=[dataset],
        model_name=name,
        eval_results=_eval_results(metrics, task, dataset, dataset_name) or None,
    )
    ours, plain = snippets(
        base=base,
        adapter=adapter_ref,
        task=task,
        labels=labels,
        plain_base=hub_base,
        pooling=meta.get("pooling", "model"),
    )
    what = (
        f"classifies text into {', '.join(labels)}"
        if task == "classification"
        else "adapts the base model's text generation to the data below"
    )
    parts = [
        f"# {name}",
        f"A **{method}** adapter for `{base}`, trained with peftkit on "
        f"**{dataset_name}**. It {what}. The adapter alone is small: the base model is loaded separately.",
        "## How to load it",
        "With peftkit (checks that the base model and tokenizer are the ones it was trained on):",
        f"```python\n{ours}```",
        "Without peftkit:" if meta.get("pooling") == "mean" else "With plain peft and transformers:",
        f"```python\n{plain}```",
        "## Training recipe",
        "Reproduce with `peftkit train recipe.resolved.yaml` (the resolved recipe, every default written out; point "
        "`model.source` and `data.card` at your copies):",
        f"```yaml\n{recipe_text}```",
        *_class_weights_line(metrics),
        "## Data",
        _data_section(card, dataset_name, run_counts(metrics, recipe, card)),
        "## Results",
        *_best_line(metrics),
        _metrics_table(metrics),
        "## Plots",
        *[
            f"![{alt}]({plots_prefix}{png})"
            for alt, png in (
                ("training loss", "loss.png"),
                ("validation metrics", "eval_metrics.png"),
                ("confusion matrix", "confusion_matrix.png"),
            )
            if (run_dir / "plots" / png).is_file()
        ],
        "## Framework versions",
        ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
    ]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n"
    ModelCard(text)  # parses as a model card, or raises here rather than on the Hub
    return text


def _class_weights_line(metrics: dict) -> list[str]:
    """What the loss weighted (`train.class_weights`), when it weighted anything."""
    weights = (metrics.get("train") or {}).get("class_weights")
    if not weights:
        return []
    listed = ", ".join(f"`{name}` {w:g}" for name, w in weights.items())
    return [f"Loss: cross-entropy weighted per class (`train.class_weights`): {listed}."]


def run_counts(metrics: dict, recipe: dict, card) -> dict[str, int]:
    """Examples this run used per split (after the recipe's max_*_examples), not the data card's full sizes."""
    counts = {}
    for split, limit in (
        ("train", "max_train_examples"),
        ("validation", "max_eval_examples"),
        ("test", "max_test_examples"),
    ):
        n = (metrics.get(split) or {}).get("n")
        if n is None and card is not None and split in (card.counts or {}):  # runs that did not record it
            cap = recipe["data"].get(limit)
            n = card.counts[split] if cap is None else min(cap, card.counts[split])
        if n is not None:
            counts[split] = n
    return counts


def _data_section(card, dataset_name: str, counts: dict[str, int]) -> str:
    used = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    if card is None:
        return f"Data card `{dataset_name}` (not found when this card was written). Examples used: {used}."
    head = f"Data card **{card.name}** ({dataset_name}), license `{card.metadata.get('license', 'unknown')}`."
    if used:
        head += f" Examples used by this run: {used}."
    if card.counts and card.counts != counts:
        head += " The card's full splits: " + ", ".join(f"{k} {v:,}" for k, v in card.counts.items()) + "."
    if card.labels:
        head += " Labels (id order): " + ", ".join(f"`{name}`" for name in card.labels) + "."
    # The prose's first paragraph (headings and tables skipped) says what the data is.
    paragraphs = [
        p.strip() for p in card.prose.split("\n\n") if p.strip() and not p.lstrip().startswith(("#", "|"))
    ]
    tail = "The full data card (source, license, known limits) is `data_card.md` in the published folder."
    return "\n\n".join([head, *paragraphs[:1], tail])


def write_adapter_card(run_dir: str | Path, *, final_dir: str | Path | None = None) -> Path:
    """Write RUN/adapter/README.md (replacing the stub peft writes); returns its path. `final_dir`: where the run
    folder will live once finished, when it is written elsewhere first (training writes into NAME.partial)."""
    run_dir = Path(run_dir)
    final = Path(final_dir or run_dir)
    path = run_dir / "adapter" / CARD_FILE
    atomic_write_text(path, render_card(run_dir, adapter_ref=str(final / "adapter"), name=final.name))
    return path
