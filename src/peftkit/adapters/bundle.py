"""Adapter bundles: PEFT's own folder format plus `peftkit_adapter.json`, a fingerprint checked on every load.

A bundle is what `peft.PeftModel.from_pretrained` reads (adapter_config.json, adapter_model.safetensors) and a
small metadata file: base model identity (source + content hash), tokenizer hash, task, labels, method, recipe
hash, versions, the sha256 of each weight file, and a fingerprint over the parts a load depends on
(`peftkit.adapters.fingerprint`). Loading checks all of it before any weight is used; an adapter without a
fingerprint loads only when the caller accepts an unverified adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from peftkit.adapters.fingerprint import (
    META_FILE,
    check_fingerprint,
    fingerprint,
    is_verifiable,
    note_unverified,
    unverified_meta,
    unverified_refusal,
)
from peftkit.errors import PeftkitError, shorten
from peftkit.fileio import atomic_dir, safetensors_header
from peftkit.fileio import file_sha256 as _hex_sha256
from peftkit.methods.peft_config import mark_pooling, unmarked
from peftkit.models.load import HEAD_MODULES

if TYPE_CHECKING:
    from typing import TypeAlias

    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

    from peftkit.methods.prefix.model import PrefixTuningClassifier

    AdapterModel: TypeAlias = PeftModel | PrefixTuningClassifier
    """A base with an adapter applied: PEFT's model, or peftkit's own implementation where the method has one
    (`MethodEntry.implementation`)."""

FORMAT_VERSION = 2  # 2: with a fingerprint


def file_sha256(path: Path) -> str:
    """`sha256:<hex>` of a file's bytes, the form recorded in peftkit_adapter.json."""
    return "sha256:" + _hex_sha256(path)


def versions() -> dict:
    """Versions of the libraries that shape an adapter's numbers."""
    import peft
    import torch
    import transformers

    from peftkit import __version__

    return {
        "peftkit": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def save_adapter(model, out_dir: str | Path, meta: dict, state_dict: dict | None = None) -> Path:
    """Write the PEFT adapter and the peftkit metadata into `out_dir`, atomically (all or nothing).

    `state_dict`: the full model state gathered from every process (`accelerator.get_state_dict`) when weights are
    sharded (FSDP, ZeRO-3); PEFT picks the adapter tensors out of it. The written tensors are checked before the
    folder appears: an empty adapter is refused rather than saved.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(
            tmp, safe_serialization=True, **({} if state_dict is None else {"state_dict": state_dict})
        )
        check_adapter_weights(tmp)
        mark_pooling(tmp, meta.get("pooling", "model"))
        weights = sorted(p for p in tmp.iterdir() if p.suffix == ".safetensors")
        full = {
            "format": FORMAT_VERSION,
            **meta,
            "versions": versions(),
            "files": {p.name: file_sha256(p) for p in weights},
        }
        full["fingerprint"] = fingerprint(full)
        (tmp / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return out_dir


def check_adapter_weights(adapter_dir: Path) -> dict:
    """Tensor count, parameter count and global L2 norm of a saved adapter; refuse an empty or broken one.

    Under DeepSpeed ZeRO-3 (and FSDP) a process holds only a shard of each weight: saving without gathering writes
    zero-sized tensors, an adapter that loads but does nothing.
    """
    import torch
    from safetensors.torch import load_file

    files = sorted(Path(adapter_dir).glob("*.safetensors"))
    tensors = {k: v for f in files for k, v in load_file(str(f)).items()}
    empty = [k for k, v in tensors.items() if v.numel() == 0]
    bad = [k for k, v in tensors.items() if v.numel() and not bool(torch.isfinite(v.float()).all())]
    squares = sum(((v.float() ** 2).sum() for v in tensors.values()), torch.tensor(0.0, dtype=torch.float32))
    norm = float(torch.sqrt(squares)) if tensors else 0.0
    problem = (
        "no adapter tensors at all"
        if not tensors
        else f"{len(empty)} of {len(tensors)} tensors are empty (e.g. {empty[0]})"
        if empty
        else f"{len(bad)} tensors hold NaN or inf values (e.g. {bad[0]})"
        if bad
        else "every adapter weight is zero"
        if norm == 0.0
        else None
    )
    if problem:
        raise PeftkitError(
            f"adapter '{adapter_dir}': refusing to save an empty or broken adapter: {problem}. With FSDP or DeepSpeed "
            f"ZeRO-3 the weights must be gathered from all processes before saving (peftkit does this through "
            f"accelerator.get_state_dict); with NaN values, lower train.learning_rate."
        )
    return {"tensors": len(tensors), "parameters": sum(v.numel() for v in tensors.values()), "norm": norm}


def read_meta(adapter_dir: str | Path) -> dict | None:
    """The peftkit metadata of a bundle, or None for a plain PEFT adapter."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise PeftkitError(
            f"adapter '{adapter_dir}': no adapter_config.json there, so it is not a PEFT adapter folder. Point at a "
            f"run's adapter/ folder (e.g. runs/NAME/adapter) or at the run folder itself."
        )
    meta_path = adapter_dir / META_FILE
    if not meta_path.is_file():
        return None
    return _read_json(adapter_dir, META_FILE)


def read_adapter_config(adapter_dir: Path) -> dict:
    """adapter_config.json as a dict, or a PeftkitError saying the file is damaged."""
    return unmarked(_read_json(adapter_dir, "adapter_config.json"))


def _read_json(adapter_dir: Path, name: str) -> dict:
    try:
        value = json.loads((adapter_dir / name).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PeftkitError(
            f"adapter '{adapter_dir}': {name} is not valid JSON ({shorten(exc, 120)}). The adapter folder is damaged: "
            f"copy it again, or re-export it from its run folder."
        ) from None
    if not isinstance(value, dict):
        raise PeftkitError(
            f"adapter '{adapter_dir}': {name} holds a JSON {type(value).__name__}, not an object. The adapter folder "
            f"is damaged: copy it again, or re-export it from its run folder."
        )
    return value


def resolve_adapter_dir(path: str | Path) -> Path:
    """Accept a run folder (uses its adapter/) or an adapter folder."""
    path = Path(path)
    if not path.exists():
        raise PeftkitError(
            f"adapter '{path}': no such folder. Pass a run folder (runs/NAME) or its adapter/ folder."
        )
    if (path / "adapter" / "adapter_config.json").is_file():
        return path / "adapter"
    return path


def check_files(adapter_dir: Path, meta: dict) -> None:
    """Refuse truncated or altered weight files before torch reads them."""
    for name, expected in meta.get("files", {}).items():
        f = adapter_dir / name
        if not f.is_file():
            raise PeftkitError(
                f"adapter '{adapter_dir}': weight file {name} is missing. Re-export the adapter."
            )
        found = file_sha256(f)
        if found != expected:
            raise PeftkitError(
                f"adapter '{adapter_dir}': {name} does not match its recorded checksum (expected {expected[:19]}…, "
                f"found {found[:19]}…): the file is truncated or was changed after saving. Re-export the adapter "
                f"from its run folder."
            )


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name → shape from a safetensors header, after checking the file is complete (no weight is read)."""
    try:
        header = safetensors_header(path)
    except ValueError as exc:
        raise PeftkitError(
            f"adapter file '{path}' is truncated or corrupt ({exc}). Copy it again or re-export the adapter from "
            f"its run folder."
        ) from None
    return {k: t["shape"] for k, t in header.items() if k != "__metadata__"}


def check_consistency(adapter_dir: Path, meta: dict, shapes: dict[str, list[int]]) -> None:
    """The metadata's task and label count must agree with the adapter's own config and head weights."""
    config = read_adapter_config(adapter_dir)
    task_type = {"classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}.get(meta.get("task", ""))
    if config.get("task_type") and task_type and config["task_type"] != task_type:
        raise PeftkitError(
            f"adapter '{adapter_dir}': task does not match: expected {task_type} (task '{meta['task']}' in "
            f"{META_FILE}), found {config['task_type']} in adapter_config.json. The files come from different "
            f"adapters; re-export it from its run folder."
        )
    rows = head_rows(shapes)
    labels = meta.get("labels")
    if labels and rows is not None and rows != len(labels):
        raise PeftkitError(
            f"adapter '{adapter_dir}': label set does not match the head: expected {len(labels)} labels "
            f"({', '.join(map(str, labels))[:200]}) in {META_FILE}, found a head with {rows} outputs. The files "
            f"come from different adapters; re-export it from its run folder."
        )


def head_rows(shapes: dict[str, list[int]]) -> int | None:
    """Outputs of the classification head among an adapter's tensors (one row per label), or None without one."""
    rows = sorted({shape[0] for key, shape in shapes.items() if is_head_weight(key) and shape})
    return rows[0] if rows else None


def is_head_weight(key: str) -> bool:
    """Whether an adapter tensor name is the output weight of a classification head (one row per label)."""
    parts = key.split(".")
    return (
        parts[-1] == "weight"
        and any(p in HEAD_MODULES for p in parts)
        and ("out_proj" in parts or parts[-2] in (*HEAD_MODULES, "modules_to_save"))
    )


def check_expected(adapter_dir: Path, meta: dict, *, task: str | None, labels: list[str] | None) -> None:
    """Refuse an adapter whose task or label set is not what the caller needs, showing expected vs found."""
    if task and meta.get("task") != task:
        raise PeftkitError(
            f"adapter '{adapter_dir}': wrong task: expected {task}, found {meta.get('task')}. "
            f"Use an adapter trained for {task}."
        )
    if labels is not None and meta.get("labels") != list(labels):
        raise PeftkitError(
            f"adapter '{adapter_dir}': different label set: expected {list(labels)}, found "
            f"{meta.get('labels')}. Use an adapter trained on this label set."
        )


def check_bundle(adapter_dir: Path) -> tuple[dict | None, dict[str, list[int]]]:
    """Every check that needs no model: metadata, fingerprint, checksums, complete safetensors files, consistent
    task/labels.

    Returns (metadata or None for a plain PEFT adapter, tensor shapes of the adapter weights). Metadata without a
    fingerprint (`fingerprint.is_verifiable`) is returned as it is: the caller decides whether to load it unverified.
    """
    meta = read_meta(adapter_dir)
    read_adapter_config(adapter_dir)
    if meta is not None:
        check_files(adapter_dir, meta)
    weights = sorted(adapter_dir.glob("*.safetensors"))
    if not weights:
        raise PeftkitError(
            f"adapter '{adapter_dir}': no adapter_model.safetensors there (peftkit loads safetensors "
            f"only, never pickle). Re-save the adapter with safe_serialization=True."
        )
    shapes = {}
    for w in weights:
        shapes.update(safetensors_shapes(w))
    if meta is not None:
        check_consistency(adapter_dir, meta, shapes)
        if is_verifiable(meta):  # after the concrete checks above, whose messages say more
            check_fingerprint(adapter_dir, meta)
    return meta, shapes


@dataclass
class LoadedAdapter:
    """A base model with an adapter applied, its tokenizer and the bundle's metadata."""

    model: AdapterModel
    tokenizer: PreTrainedTokenizerBase
    meta: dict
    path: Path

    @property
    def labels(self) -> list[str] | None:
        return self.meta.get("labels")

    @property
    def verified(self) -> bool:
        """False for an adapter loaded without a fingerprint (`allow_unverified`)."""
        return self.meta.get("verified", True)


def fingerprint_differences(meta: dict, *, base_hash: str, tok_hash: str) -> list[str]:
    """Human-readable expected-vs-found lines for a base model or tokenizer that is not the one trained on."""
    diffs = []
    if meta["base_model"]["content_hash"] != base_hash:
        diffs.append(
            f"base model: expected {meta['base_model']['content_hash'][:23]}… ({meta['base_model']['source']}), "
            f"found {base_hash[:23]}…"
        )
    if meta["tokenizer_hash"] != tok_hash:
        diffs.append(f"tokenizer: expected {meta['tokenizer_hash'][:23]}…, found {tok_hash[:23]}…")
    return diffs


class LoadChoices(TypedDict):
    """The caller's choices among `load_adapter`'s keyword arguments, for passing on to several loads."""

    allow_unverified: bool
    labels: list[str] | None
    base_source: str | None


def load_adapter(
    path: str | Path,
    *,
    base_source: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
    task: str | None = None,
    labels: list[str] | None = None,
    quantization: dict | None = None,
    allow_unverified: bool = False,
) -> LoadedAdapter:
    """Load base model + adapter, checking the fingerprint first. `base_source` overrides the recorded base.

    `task` / `labels`: what the caller needs; an adapter for another task or label set is refused.
    `quantization`: load the base quantized (a recipe quantization block); default full precision.
    `allow_unverified`: load an adapter without a fingerprint (see `peftkit.adapters.fingerprint`), with `labels` as
    its label names when given; its `meta["verified"]` is then False. Without it such an adapter is refused.
    """
    from peftkit.models.load import load_model_and_tokenizer, load_tokenizer, tokenizer_hash
    from peftkit.models.sources import content_hash, resolve_source

    adapter_dir = resolve_adapter_dir(path)
    meta, shapes = check_bundle(adapter_dir)
    verified = is_verifiable(meta)
    if not verified:
        if not allow_unverified:
            raise unverified_refusal(adapter_dir, meta)
        meta = unverified_meta(
            adapter_dir,
            read_adapter_config(adapter_dir),
            head_rows(shapes),
            meta,
            labels=labels,
            base_source=base_source,
        )
        note_unverified(adapter_dir, meta)
    assert meta is not None  # is_verifiable(None) is False, so missing metadata was filled in just above
    check_expected(adapter_dir, meta, task=task, labels=labels)
    source = resolve_source(base_source or meta["base_model"]["source"])
    cache_dir = meta["base_model"].get("cache_dir")
    tokenizer = load_tokenizer(source, cache_dir)
    diffs = (
        fingerprint_differences(meta, base_hash=content_hash(source), tok_hash=tokenizer_hash(tokenizer))
        if verified
        else []
    )
    if diffs:
        raise PeftkitError(
            f"adapter '{adapter_dir}' was trained on a different base than '{source.spec}': "
            + "; ".join(diffs)
            + ". Load it with the base it was trained on (see base_model in its peftkit_adapter.json)."
        )
    base, tokenizer = load_model_and_tokenizer(
        source,
        task=meta["task"],
        labels=meta.get("labels"),
        pooling=meta.get("pooling", "model"),
        dtype=dtype,
        device=device,
        quantization=quantization,
        cache_dir=cache_dir,
        tokenizer=tokenizer,
    )
    model = attach_adapter(base, adapter_dir, source.spec, task=meta["task"])
    model.eval()
    return LoadedAdapter(model, tokenizer, {**meta, "verified": verified}, adapter_dir)


def attach_adapter(base, adapter_dir: Path, base_spec: str, *, task: str):
    """`base` with the adapter in `adapter_dir` applied (`peftkit.methods.apply.attach_adapter`: PEFT's loader, or
    peftkit's own implementation of the method), with PEFT's errors (an unknown method, weights of another shape)
    turned into one paragraph."""
    from peft.utils.error import NoMatchingPeftModuleError  # peft 0.21 (a ValueError subclass)

    from peftkit.methods.apply import attach_adapter as apply_saved

    try:
        return apply_saved(base, adapter_dir, task=task)
    except NoMatchingPeftModuleError:
        targets = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("target_modules")
        raise PeftkitError(
            f"adapter '{adapter_dir}': its target modules ({targets}) match no layer of the loaded base "
            f"'{base_spec}', so it would change nothing. Use an adapter trained on this base (target_modules in "
            f"its adapter_config.json)."
        ) from None
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        raise PeftkitError(
            f"adapter '{adapter_dir}': PEFT could not apply it to base '{base_spec}' ({type(exc).__name__}: "
            f"{shorten(exc, 300)}). Its adapter_config.json or weights do not fit this base: load it with the base "
            f"it was trained on, or copy the adapter again if it was damaged."
        ) from None
