"""Merge an adapter into a full-precision reload of its base and prove it with a parity report.

Merging into a 4-bit base silently rounds the merged weights back to 4 bits; peftkit never does that. The
base is reloaded in float32 (also when the adapter was trained on a quantized base), the adapter merged,
and the standalone model written where plain `AutoModelFor…from_pretrained` reads it. Next to it,
`parity_report.json`: max |logit difference| and label agreement between the adapter on its base and the
merged model (reloaded from disk) on sample inputs, and, for a quantization-trained adapter, against the
adapter on the quantized base it was trained on.

An adapter trained with `model.pooling: mean` merges into a model whose config.json records that pooling
(`peftkit_pooling`); plain transformers would read its [CLS] token instead, so the reload check applies the
recorded pooling (`peftkit.models.pooling.apply_pooling`) and the report says the merged model needs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from peftkit.errors import PeftkitError

REPORT_FILE = "parity_report.json"
FALLBACK_TEXTS = [
    "a good film",
    "a bad film",
    "the plot was dull and the actors were tired",
    "witty, sharp and moving",
    "it is what it is",
    "I would not watch it again",
]


def check_mergeable(adapter_dir: Path, meta: dict | None) -> None:
    """Refuse methods whose weights cannot be folded into the base, with the reason their registry entry gives."""
    from peftkit.adapters.bundle import read_adapter_config
    from peftkit.methods.apply import entry_for_adapter

    entry = entry_for_adapter(adapter_dir, (meta or {}).get("method"))
    if entry is None:
        config = read_adapter_config(adapter_dir)
        method = (meta or {}).get("method") or str(config.get("peft_type", "")).lower()
        why = f"peftkit does not know the method {method!r}, so it cannot tell whether merging keeps its outputs"
    elif entry.mergeable:
        return
    else:
        method, why = entry.name, entry.merge_refusal
    raise PeftkitError(
        f"merge: adapter '{adapter_dir}' uses {method}, which cannot be merged: {why}. Serve it "
        f"as an adapter instead (`peftkit predict ADAPTER` or several with --adapter NAME=PATH)."
    )


def merge_adapter(
    adapter: str | Path,
    out: str | Path,
    *,
    texts: list[str] | None = None,
    n_samples: int = 64,
    progress=None,
    overwrite: bool = False,
    allow_unverified: bool = False,
    labels: list[str] | None = None,
    base_source: str | None = None,
) -> dict:
    """Merge `adapter` into a float32 reload of its base, write the model to `out`, return the parity report.

    `allow_unverified`, `labels`, `base_source`: as for `load_adapter` (an adapter without a fingerprint is
    refused unless allowed; the report then says `"verified": false`).
    """
    from peftkit.adapters.bundle import check_bundle, load_adapter, resolve_adapter_dir
    from peftkit.fileio import atomic_dir, atomic_write_json, reported_write_failures

    say = progress or (lambda msg: print(f"merge: {msg}", file=sys.stderr))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PeftkitError(f"--out: '{out}' is an existing file, not a folder. Choose another --out folder.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PeftkitError(
            f"--out: '{out}' already exists and is not empty. Choose another folder or pass --overwrite."
        )
    adapter_dir = resolve_adapter_dir(adapter)
    meta, _ = check_bundle(adapter_dir)
    check_mergeable(adapter_dir, meta)

    how = dict(allow_unverified=allow_unverified, labels=labels, base_source=base_source)
    say("[1/5] loading the base in float32 with the adapter")
    loaded = load_adapter(adapter_dir, dtype="float32", **how)
    task = loaded.meta["task"]
    texts = texts or _sample_texts(loaded.meta, n_samples)
    reference = _logits(loaded.model, loaded.tokenizer, texts, task)
    report: dict = {
        "adapter": str(adapter_dir),
        "method": loaded.meta.get("method"),
        "task": task,
        "n_samples": len(texts),
        "merged_dtype": "float32",
        "verified": loaded.verified,
    }
    pooling = loaded.meta.get("pooling", "model")
    if pooling != "model":
        report["pooling"] = (
            f"{pooling}: recorded in config.json as peftkit_pooling; load the merged model with "
            f"peftkit, or call peftkit.models.pooling.apply_pooling(model, 'model') after "
            f"from_pretrained (plain transformers reads the [CLS] token)"
        )
    quant = loaded.meta.get("quantization")
    if quant:
        say("[2/5] reference: the adapter on the quantized base it was trained on")
        qloaded = load_adapter(adapter_dir, quantization=quant, **how)
        report["vs_quantized_training_base"] = _compare(
            _logits(qloaded.model, qloaded.tokenizer, texts, task), reference
        )
        del qloaded
    else:
        say("[2/5] adapter was trained on a full-precision base (no quantized reference)")

    say("[3/5] merging")
    merged = loaded.model.merge_and_unload()
    with reported_write_failures("merge --out", out), atomic_dir(out) as tmp:
        say(f"[4/5] writing the merged model to {out}")
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        say("[5/5] reloading it with plain transformers and comparing logits")
        reloaded = _plain_load(tmp, task).to(next(loaded.model.parameters()).device)
        report["vs_adapter_on_full_precision_base"] = _compare(
            reference, _logits(reloaded, loaded.tokenizer, texts, task)
        )
        atomic_write_json(tmp / REPORT_FILE, report)
    diff = report["vs_adapter_on_full_precision_base"]
    say(
        f"done: max |logit diff| {diff['max_abs_logit_diff']:.2e}, label agreement {diff['label_agreement']:.3f} "
        f"on {len(texts)} inputs; report in {out / REPORT_FILE}"
    )
    if "pooling" in report:
        say(f"note: pooling {report['pooling']}")
    return report


def _sample_texts(meta: dict, n: int) -> list[str]:
    """The first `n` test texts of the adapter's data card, or a few fixed sentences when it has none."""
    card = meta.get("data_card")
    if card:
        try:
            from peftkit.data.cards import load_card
            from peftkit.data.sources import load_splits

            splits = load_splits(load_card(card))
            split = splits.get("test") or splits.get("validation") or splits["train"]
            return list(split["text"][:n])
        except PeftkitError:
            pass
    return FALLBACK_TEXTS


def _plain_load(folder: Path, task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    model = cls.from_pretrained(str(folder), dtype="float32").eval()
    if task == "classification":
        from peftkit.models.pooling import apply_pooling

        apply_pooling(
            model, "model"
        )  # the pooling recorded in config.json, if any (see the module docstring)
    return model


def _logits(model, tokenizer, texts: list[str], task: str) -> list:
    """Per text: its logits (classification: one row; causal LM: every position), float32 numpy, one by one."""
    import torch

    device = next(model.parameters()).device
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=128).to(device)
            rows.append(model(**enc).logits[0].float().cpu().numpy())
    return rows


def _compare(a: list, b: list) -> dict:
    """Max |difference| over all logits and the share of inputs whose predicted label (last position) agrees."""
    import numpy as np

    diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    agree = [
        int(np.atleast_2d(x)[-1].argmax() == np.atleast_2d(y)[-1].argmax()) for x, y in zip(a, b, strict=True)
    ]
    return {"max_abs_logit_diff": diff, "label_agreement": sum(agree) / len(agree)}
