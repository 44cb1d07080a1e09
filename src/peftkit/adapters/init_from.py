"""`method.init_from`: continue training an existing adapter (a peftkit run or adapter folder, or plain PEFT).

Checked before any weight loads: the folder is a complete adapter (checksums, safetensors headers); its method and
settings become the recipe's (a setting the recipe gives differently is an error naming both values); a peftkit
adapter's fingerprint (base model content hash, tokenizer hash), task, labels and pooling must be this recipe's.
A plain PEFT adapter carries no fingerprint: only its task and head size can be checked.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from peftkit.adapters.bundle import check_bundle, fingerprint_differences, is_head_weight, resolve_adapter_dir
from peftkit.errors import PeftkitError

_TASK_TYPES = {"SEQ_CLS": "classification", "CAUSAL_LM": "causal_lm"}


def check_init_from(
    path: str,
    *,
    method_name: str | None,
    settings: dict,
    task: str,
    labels: list[str] | None,
    pooling: str,
    base_hash: str | None,
    tok_hash: str | None,
) -> tuple[Path, str]:
    """(adapter folder, method name) of the adapter to continue, or PeftkitError saying what does not match.

    `method_name`: the recipe's `method.name` when the recipe sets it, else None (taken from the adapter).
    `base_hash` / `tok_hash`: this recipe's base model and tokenizer fingerprints (None: not checked).
    """
    adapter_dir = resolve_adapter_dir(path)
    where = f"method.init_from: adapter '{adapter_dir}'"
    meta, shapes = check_bundle(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    name = (meta or {}).get("method") or str(config.get("peft_type", "")).lower()
    if method_name is not None and method_name != name:
        raise PeftkitError(
            f"{where} is a {name} adapter, but the recipe says method.name: {method_name}. Remove method.name "
            f"(continuing an adapter keeps its method), or drop method.init_from to start a new {method_name} one."
        )
    for key, value in settings.items():
        if key in config and not _same(config[key], value):
            raise PeftkitError(
                f"{where} was trained with {key}: {_show(config[key])}, but the recipe says method.{key}: "
                f"{_show(value)}. Remove method.{key} (the adapter's settings are kept), or drop "
                f"method.init_from to train a new adapter with it."
            )
    found_task = (meta or {}).get("task") or _TASK_TYPES.get(str(config.get("task_type")))
    if found_task and found_task != task:
        raise PeftkitError(
            f"{where} is a {found_task} adapter, but model.task is {task}. Use a {task} adapter."
        )
    if meta is None:
        _check_plain_head(where, shapes, labels)
        warnings.warn(
            f"{where} is a plain PEFT adapter (no peftkit_adapter.json): its base model and tokenizer could not "
            f"be checked. Make sure model.source is the base it was trained on.",
            stacklevel=2,
        )
        return adapter_dir, name
    if task == "classification" and meta.get("labels") != labels:
        raise PeftkitError(
            f"{where} was trained on labels {meta.get('labels')}, the data card gives {labels}. Continue it on "
            f"data with the same labels in the same order, or train a new adapter."
        )
    if meta.get("pooling", "model") != pooling:
        raise PeftkitError(
            f"{where} was trained with model.pooling: {meta.get('pooling', 'model')}, the recipe says {pooling}. "
            f"Set model.pooling: {meta.get('pooling', 'model')}."
        )
    if base_hash is not None and tok_hash is not None:
        diffs = fingerprint_differences(meta, base_hash=base_hash, tok_hash=tok_hash)
        if diffs:
            raise PeftkitError(
                f"{where} was trained on a different base than this recipe's model.source: "
                + "; ".join(diffs)
                + ". Set model.source to the base it was trained on (see base_model in its peftkit_adapter.json)."
            )
    return adapter_dir, name


def _check_plain_head(where: str, shapes: dict, labels: list[str] | None) -> None:
    rows = {shape[0] for key, shape in shapes.items() if is_head_weight(key)}
    if labels and rows and rows != {len(labels)}:
        raise PeftkitError(
            f"{where} has a classification head with {sorted(rows)[0]} outputs, the data card has "
            f"{len(labels)} labels. Continue it on data with its label set."
        )


def _same(found, wanted) -> bool:
    if isinstance(found, list | tuple | set) and isinstance(wanted, list | tuple | set):
        return sorted(map(str, found)) == sorted(map(str, wanted))
    return found == wanted


def _show(value) -> str:
    text = json.dumps(sorted(value) if isinstance(value, set) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def continue_adapter(model, adapter_dir: Path):
    """`model` (the base) wrapped with the adapter in `adapter_dir`, its weights loaded and trainable."""
    from peft import PeftModel

    import peftkit.methods.bottleneck  # noqa: F401  (registers peftkit's own PEFT types before reading configs)

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
