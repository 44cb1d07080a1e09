"""An adapter's fingerprint, and the one explicit way to load an adapter that has none.

`peftkit_adapter.json` records, besides its metadata, a fingerprint: the sha256 of each part a load depends on —
the base model's content hash, the tokenizer hash, the task, the label map (names in id order), the pooling and the
weight files' own hashes. A load recomputes them from the file: if anything was edited after saving (a label list
swapped, a base hash replaced), the load is refused and the message names the part. The fingerprint guards
against mix-ups and edits, not against someone who rewrites it on purpose (it is not a signature).

An adapter without a fingerprint (a plain PEFT adapter from elsewhere, or metadata without one) is *unverified*:
nothing says which base, tokenizer or labels it was trained with. It loads only when the caller accepts that
explicitly (`--unverified`, `allow_unverified=True`); its labels are then the ones the caller states (`--labels`),
else the ones its metadata records, else `LABEL_0`, `LABEL_1`, … for the rows of its own classification head
(never guessed from the base model's config), and everything it outputs is marked unverified.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import TypeGuard

from peftkit.errors import PeftkitError

META_FILE = "peftkit_adapter.json"


def _parts(meta: dict) -> dict:
    return {
        "base_model": (meta.get("base_model") or {}).get("content_hash"),
        "tokenizer": meta.get("tokenizer_hash"),
        "task": meta.get("task"),
        "labels": meta.get("labels"),
        "pooling": meta.get("pooling", "model"),
        "weights": meta.get("files"),
    }


def fingerprint(meta: dict) -> dict[str, str]:
    """Part name → `sha256:<hex>` of that part of `meta` (canonical JSON)."""
    return {
        name: "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
        for name, value in _parts(meta).items()
    }


def is_verifiable(meta: dict | None) -> TypeGuard[dict]:
    """Whether `meta` carries a fingerprint (checked by `check_fingerprint`); True also says it is not None."""
    return isinstance(meta, dict) and isinstance(meta.get("fingerprint"), dict)


def check_fingerprint(adapter_dir: Path, meta: dict) -> None:
    """Refuse metadata that no longer matches the fingerprint saved with it, naming each changed part."""
    recorded, found = meta["fingerprint"], fingerprint(meta)
    changed = [name for name in found if recorded.get(name) != found[name]]
    if not changed:
        return
    shown = {"base_model": "base_model.content_hash", "tokenizer": "tokenizer_hash", "weights": "files"}
    parts = ", ".join(
        f"{shown.get(name, name)} (now {json.dumps(_parts(meta)[name])[:80]})" for name in changed
    )
    raise PeftkitError(
        f"adapter '{adapter_dir}': {META_FILE} was changed after the adapter was saved: {parts} no longer "
        f"match{'es' if len(changed) == 1 else ''} the fingerprint recorded with the weights, so the adapter "
        f"would be used with the wrong {' / '.join(changed)}. Restore the original {META_FILE} (copy the adapter "
        f"again), or re-export the adapter from its run folder."
    )


def unverified_refusal(adapter_dir: Path, meta: dict | None) -> PeftkitError:
    """Why an adapter without a fingerprint is not loaded by default, and the explicit way to load it."""
    what = (
        f"has no {META_FILE}: it is a plain PEFT adapter"
        if meta is None
        else f"has a {META_FILE} without a fingerprint (written by an older peftkit, or by hand)"
    )
    return PeftkitError(
        f"adapter '{adapter_dir}' {what}, so nothing about it can be checked: not its base model, tokenizer or "
        f"labels, and its predictions could come out under the wrong names. To use it anyway, say so: pass "
        f"--unverified (Python: allow_unverified=True), with --labels A,B,... for its label names (default: "
        f"LABEL_0, LABEL_1, ... for its head's rows) and --base SOURCE for its base model (default: "
        f"base_model_name_or_path in its adapter_config.json). Its outputs are then marked unverified."
    )


def unverified_meta(
    adapter_dir: Path,
    config: dict,
    head_rows: int | None,
    meta: dict | None = None,
    *,
    labels: list[str] | None = None,
    base_source: str | None = None,
) -> dict:
    """The metadata an unverified adapter is loaded with (see the module docstring); `config` is its
    adapter_config.json, `head_rows` the output count of the classification head in its weights (None: none)."""
    meta = dict(meta or {})
    task_type = str(config.get("task_type") or "")
    task = {"SEQ_CLS": "classification", "CAUSAL_LM": "causal_lm"}.get(task_type, meta.get("task"))
    if task not in ("classification", "causal_lm"):
        raise PeftkitError(
            f"adapter '{adapter_dir}': adapter_config.json has task_type {task_type or 'null'}; peftkit loads "
            f"SEQ_CLS (classification) and CAUSAL_LM adapters. Set task_type in adapter_config.json to the one it "
            f"was trained for."
        )
    if task == "classification":
        if head_rows is None:
            raise PeftkitError(
                f"adapter '{adapter_dir}': its weights hold no classification head (PEFT saves one through "
                f"modules_to_save), so its predictions would come from an untrained head. Save the adapter with "
                f"its head."
            )
        labels = list(labels or meta.get("labels") or [f"LABEL_{i}" for i in range(head_rows)])
        if len(labels) != head_rows:
            raise PeftkitError(
                f"--labels: {len(labels)} names ({', '.join(labels)[:120]}) for an adapter whose head has "
                f"{head_rows} outputs ('{adapter_dir}'). Name one label per output, in id order."
            )
    else:
        labels = None
    base = (
        base_source or (meta.get("base_model") or {}).get("source") or config.get("base_model_name_or_path")
    )
    if not base:
        raise PeftkitError(
            f"adapter '{adapter_dir}': no base model recorded (adapter_config.json has no "
            f"base_model_name_or_path). Name it with --base SOURCE."
        )
    return {
        **meta,
        "task": task,
        "labels": labels,
        "base_model": {**(meta.get("base_model") or {}), "source": base},
        "method": meta.get("method") or str(config.get("peft_type", "")).lower(),
        "verified": False,
    }


def note_unverified(adapter_dir: Path, meta: dict) -> None:
    """Say on stderr that an adapter is used unverified, with what it is used as."""
    labels = meta.get("labels")
    named = f", labels {', '.join(labels)[:120]}" if labels else ""
    print(
        f"peftkit: note: adapter '{adapter_dir}' is UNVERIFIED (no fingerprint): used as a {meta['task']} adapter "
        f"on base '{meta['base_model']['source']}'{named}; none of this could be checked.",
        file=sys.stderr,
    )
