"""Merge an adapter into a full-precision reload of its base and prove it in the merged folder's own loader.

Merging into a 4-bit base silently rounds the merged weights back to 4 bits; peftkit never does that. The
base is reloaded in float32 (also when the adapter was trained on a quantized base), the adapter merged,
and the standalone model written where its standard loader reads it:
- a transformers folder (`AutoModelFor…from_pretrained(folder)`) for the model's own head;
- a sentence-transformers folder (`SentenceTransformer(folder).encode(texts)` gives the logits) for a
  classifier trained with `model.pooling: mean`, which plain transformers cannot express (it would read the
  [CLS] token); plain transformers refuses that folder with a message naming the loader
  (`peftkit.inference.sentence_folder`).
Next to it, `parity_report.json`: label agreement and max |logit difference| between the adapter on its base
(peftkit) and the merged folder in that loader, run in a child process that never imports peftkit
(`peftkit.inference.parity`); for a quantization-trained adapter, also against the adapter on the quantized
base it was trained on. A merged folder that does not reproduce the adapter is not written.
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
    elif entry.merge_refusal is None:  # entry.mergeable, spelled so that the branch below has a str reason
        return
    else:
        method, why = entry.name, entry.merge_refusal
    raise PeftkitError(
        f"merge: adapter '{adapter_dir}' uses {method}, which cannot be merged: {why}. Serve it "
        f"as an adapter instead (`peftkit predict ADAPTER` or several with --adapter NAME=PATH)."
    )


def check_out_folder(out: str | Path, *, overwrite: bool) -> Path:
    """`--out` as a Path, refused when it is a file, or holds files and `overwrite` is off."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PeftkitError(f"--out: '{out}' is an existing file, not a folder. Choose another --out folder.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PeftkitError(
            f"--out: '{out}' already exists and is not empty. Choose another folder or pass --overwrite."
        )
    return out


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
    from peftkit.adapters.bundle import LoadChoices, check_bundle, load_adapter, resolve_adapter_dir
    from peftkit.fileio import atomic_dir, atomic_write_json, reported_write_failures
    from peftkit.inference.parity import compare
    from peftkit.inference.sentence_folder import write_sentence_transformers_folder

    say = progress or (lambda msg: print(f"merge: {msg}", file=sys.stderr))
    out = check_out_folder(out, overwrite=overwrite)
    adapter_dir = resolve_adapter_dir(adapter)
    meta, _ = check_bundle(adapter_dir)
    check_mergeable(adapter_dir, meta)

    how = LoadChoices(allow_unverified=allow_unverified, labels=labels, base_source=base_source)
    say("[1/5] loading the base in float32 with the adapter")
    loaded = load_adapter(adapter_dir, dtype="float32", device="cpu", **how)
    task = loaded.meta["task"]
    texts = texts or sample_texts(loaded.meta, n_samples)
    reference = _logits(loaded, texts, task)
    pooling = loaded.meta.get("pooling", "model")
    loader = "sentence_transformers" if pooling == "mean" else "transformers"
    report: dict = {
        "adapter": str(adapter_dir),
        "method": loaded.meta.get("method"),
        "task": task,
        "n_samples": len(texts),
        "merged_dtype": "float32",
        "verified": loaded.verified,
        "pooling": pooling,
        "format": loader,
        "load_with": LOAD_WITH[loader],
    }
    quant = loaded.meta.get("quantization")
    if quant:
        say("[2/5] reference: the adapter on the quantized base it was trained on")
        qloaded = load_adapter(adapter_dir, quantization=quant, **how)
        report["vs_quantized_training_base"] = compare(_logits(qloaded, texts, task), reference)
        del qloaded
    else:
        say("[2/5] adapter was trained on a full-precision base (no quantized reference)")

    say("[3/5] merging")
    from peft import PeftModel  # loaded already by load_adapter

    # check_mergeable passed, and only non-mergeable methods (prefix tuning) have peftkit's own implementation
    assert isinstance(loaded.model, PeftModel), "a mergeable adapter loads as a PeftModel"
    merged = loaded.model.merge_and_unload()
    max_length = loaded.meta.get("max_length", 512)
    with reported_write_failures("merge --out", out), atomic_dir(out) as tmp:
        say(f"[4/5] writing the merged model to {out} ({loader} format)")
        if loader == "sentence_transformers":
            assert loaded.labels is not None, "mean pooling is for classifiers, which record their labels"
            write_sentence_transformers_folder(
                merged, loaded.tokenizer, tmp, max_length=max_length, labels=loaded.labels, name=out.name
            )
        else:
            merged.save_pretrained(tmp, safe_serialization=True)
            loaded.tokenizer.save_pretrained(tmp)
        say(f"[5/5] loading it with {loader} in a fresh process (no peftkit) and comparing logits")
        expected = {loader: "parity"}
        if loader == "sentence_transformers":  # plain transformers must refuse this folder, not misread it
            expected["transformers"] = "fails_loudly"
        checks = _plain_checks(expected, tmp, texts, reference, max_length, task)
        report["plain_loaders"] = checks
        _refuse_unexpected(checks, out)
        atomic_write_json(tmp / REPORT_FILE, report)
    for check in checks:
        say(_summary(check))
    say(f"done: report in {out / REPORT_FILE}")
    return report


def sample_texts(meta: dict, n: int | None) -> list[str]:
    """The first `n` (None: all) test texts of the adapter's data card, or a few fixed sentences without one."""
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


LOAD_WITH = {
    "transformers": "transformers: AutoModelForSequenceClassification.from_pretrained(folder) (AutoModelForCausalLM "
    "for a causal LM)",
    "sentence_transformers": "sentence-transformers: SentenceTransformer(folder).encode(texts) returns the logits",
}


def _plain_checks(
    expected: dict[str, str], folder: Path, texts: list[str], reference, max_length: int, task: str
) -> list[dict]:
    """The merged folder in each loader of `expected` (loader → the outcome it must have), in one child process
    without peftkit, against peftkit's logits."""
    import importlib.util

    from peftkit.inference.parity import plain_request, run_plain_loaders, verdict

    missing = {"sentence_transformers"} - {n for n in expected if importlib.util.find_spec(n) is not None}
    measured = [name for name in expected if name not in missing]
    results = run_plain_loaders(
        [plain_request(name, folder, texts, max_length=max_length, task=task) for name in measured]
    )
    found = {name: verdict(name, reference, result) for name, result in zip(measured, results, strict=True)}
    why = "sentence-transformers is not installed here (pip install 'peftkit[export]')"
    return [
        {**found.get(name, {"loader": name, "outcome": "not_measured", "why": why}), "expected": outcome}
        for name, outcome in expected.items()
    ]


def _refuse_unexpected(checks: list[dict], out: Path) -> None:
    """A merged folder that a standard loader would read as a different model is never written."""
    bad = [c for c in checks if c["outcome"] not in (c["expected"], "not_measured")]
    if bad:
        raise PeftkitError(
            f"merge: the merged model does not behave as it must in {bad[0]['loader']} (expected "
            f"{bad[0]['expected']}; {_summary(bad[0])}), so '{out}' was not written. Serve the adapter itself "
            f"(`peftkit predict`) or export it (`peftkit export --format onnx`), and report this with the "
            f"adapter's method and base model."
        )


def _summary(check: dict) -> str:
    if check["outcome"] in ("parity", "MISMATCH"):
        return (
            f"{check['loader']}: {check['outcome']}, labels agree on {check['agree']}/{check['n']}, max |logit "
            f"diff| {check['max_abs_logit_diff']:.2e}"
        )
    return f"{check['loader']}: {check['outcome']} ({check.get('error') or check.get('why')})"


def _logits(loaded, texts: list[str], task: str):
    """peftkit's float32 logits per text: classification, one row each (batched as `peftkit predict` does);
    causal LM, the last position's, texts one by one (no padding)."""
    import numpy as np
    import torch

    if task == "classification":
        from peftkit.inference.parity import reference_logits

        return reference_logits(loaded, texts)
    rows = []
    max_length = loaded.meta.get("max_length", 512)
    with torch.no_grad():
        for text in texts:
            enc = loaded.tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
            rows.append(loaded.model(**enc).logits[0, -1].float().numpy())
    return np.stack(rows)
