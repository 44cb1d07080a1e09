"""Several named adapters on ONE loaded base, of any types and with their own heads, routed per request.

PEFT keeps one adapter type per model (`Cannot combine adapters with different peft types`) and one head
shape per model. peftkit sidesteps both without a second copy of the base weights: each adapter gets its own
*module skeleton* of the base — a deep copy in which every parameter and buffer is the same tensor object as
in the base — with its own head of the right size, and is loaded with `peftkit.methods.apply.attach_adapter`
(plain `PeftModel.from_pretrained`, or peftkit's own implementation where a method has one).
LoRA-style adapters inject their layers into their own skeleton, prompt-learning adapters wrap theirs,
peftkit's bottleneck adapters do whichever they do: none of them can see another. So each adapter gives
exactly the logits it gives when loaded alone, the base's weights sit in memory once, and a swap is a
dictionary lookup (nothing is moved, merged or re-wrapped).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from peftkit.errors import PeftkitError
from peftkit.models.load import HEAD_MODULES

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from peftkit.adapters.bundle import AdapterModel


class AdapterMismatch(PeftkitError):
    """The adapter was made for another base model, tokenizer, task or pooling than the loaded one."""


class AdapterDoesNotApply(PeftkitError):
    """The adapter's layers or weights do not land on the loaded base (it would answer as the bare base)."""


def _return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc). Loading an adapter allocates temporaries — DoRA's weight
    norms are ~110 MiB on MiniLM for 1.4 MiB of live tensors — which the allocator otherwise keeps resident."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def shared_copy(model):
    """A deep copy of `model`'s modules whose parameters and buffers are the original tensors (no weight copied)."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def _resize_head(model, n_labels: int, labels: list[str]) -> None:
    """Give `model` (a shared copy) its own classification head with `n_labels` outputs and matching config."""
    import torch

    name = next((n for n in HEAD_MODULES if hasattr(model, n)), None)
    if name is None:
        raise PeftkitError(
            f"swap: the base model ({type(model).__name__}) has no classifier/score head to give "
            f"each adapter its own labels."
        )
    old = getattr(model, name)
    fresh = copy.deepcopy(old)  # a private head: its weights come from the adapter file
    for child_name, child in [("", fresh), *fresh.named_modules()]:
        if isinstance(child, torch.nn.Linear) and child.out_features == model.config.num_labels:
            new = torch.nn.Linear(
                child.in_features,
                n_labels,
                bias=child.bias is not None,
                dtype=child.weight.dtype,
                device=child.weight.device,
            )
            if child_name:
                parent, _, leaf = child_name.rpartition(".")
                setattr(fresh.get_submodule(parent) if parent else fresh, leaf, new)
            else:
                fresh = new
    setattr(model, name, fresh)
    model.config.num_labels = n_labels
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {lab: i for i, lab in enumerate(labels)}


@dataclass
class SwapEntry:
    """One named adapter: its PEFT model (over a shared skeleton of the base), labels and metadata."""

    name: str
    model: AdapterModel
    labels: list[str] | None
    meta: dict
    path: Path


class AdapterSet:
    """One base model, several named adapters; `predict(name, texts)` runs texts through the named adapter.

    The base is loaded on the first `add` (from the adapter's recorded base, or `base_source`). Every later
    adapter must match its fingerprint (base model, tokenizer, task) or is refused with expected vs found.
    """

    def __init__(
        self,
        base_source: str | None = None,
        *,
        device: str | None = None,
        dtype: str = "auto",
        quantization: dict | None = None,
    ):
        self.base_source, self.device, self.dtype, self.quantization = (
            base_source,
            device,
            dtype,
            quantization,
        )
        # All set by the first `add` (`_load_base`).
        self.base: PreTrainedModel | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.task: str | None = None
        self.base_hash: str | None = None
        self.tok_hash: str | None = None
        self.entries: dict[str, SwapEntry] = {}
        self.active: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def add(
        self,
        name: str,
        path: str | Path,
        *,
        allow_unverified: bool = False,
        labels: list[str] | None = None,
    ) -> SwapEntry:
        """Check and load the adapter at `path` under `name` (refused if the fingerprint does not match).

        An adapter without a fingerprint is refused unless `allow_unverified` (see `peftkit.adapters.fingerprint`);
        `labels` then names its labels, and its predictions carry `"unverified": True`. For a fingerprinted
        adapter, `labels` are the ones it must have (as for `load_adapter`).
        """
        from peftkit.adapters.bundle import (
            attach_adapter,
            check_bundle,
            check_expected,
            head_rows,
            read_adapter_config,
            resolve_adapter_dir,
        )
        from peftkit.adapters.fingerprint import (
            is_verifiable,
            note_unverified,
            unverified_meta,
            unverified_refusal,
        )

        if name in self.entries:
            raise PeftkitError(
                f"swap: adapter name '{name}' is used twice. Give each --adapter a distinct name."
            )
        adapter_dir = resolve_adapter_dir(path)
        meta, shapes = check_bundle(adapter_dir)
        if is_verifiable(meta):
            check_expected(adapter_dir, meta, task=None, labels=labels)
            meta = {**meta, "verified": True}
        elif allow_unverified:
            config = read_adapter_config(adapter_dir)
            meta = unverified_meta(adapter_dir, config, head_rows(shapes), meta, labels=labels)
            note_unverified(adapter_dir, meta)
        else:
            raise unverified_refusal(adapter_dir, meta)
        if self.base is None:
            self._load_base(meta)
        assert self.base is not None and self.task is not None, "_load_base sets both"
        self._check_fingerprint(adapter_dir, meta)
        skeleton = shared_copy(self.base)
        labels = meta.get("labels")
        if self.task == "classification" and labels and len(labels) != self.base.config.num_labels:
            _resize_head(skeleton, len(labels), labels)
        elif self.task == "classification" and labels:
            skeleton.config.id2label = dict(enumerate(labels))
            skeleton.config.label2id = {lab: i for i, lab in enumerate(labels)}
        model = attach_adapter(skeleton, adapter_dir, self.base_spec, task=self.task)
        model.eval()
        _check_weights_loaded(model, adapter_dir)
        entry = SwapEntry(name, model, labels, meta, adapter_dir)
        self.entries[name] = entry
        self.active = self.active or name
        _return_freed_memory()
        return entry

    def remove(self, name: str) -> SwapEntry:
        """Drop adapter `name` from the set (its memory is freed once nothing else holds its entry)."""
        if name not in self.entries:
            self.activate(name)  # raises the unknown-name error
        entry = self.entries.pop(name)
        if self.active == name:
            self.active = next(iter(self.entries), None)
        return entry

    def activate(self, name: str):
        """Make `name` the active adapter (the swap) and return its model."""
        entry = self.entries.get(name)
        if entry is None:
            raise PeftkitError(
                f"swap: no adapter named '{name}' (loaded: {', '.join(self.entries) or 'none'}). "
                f"Name one of them, or add it with --adapter {name}=PATH."
            )
        self.active = name
        return entry.model

    def logits(self, name: str, texts: list[str], *, batch_size: int = 64):
        """Classification logits of `texts` through adapter `name` (numpy, input order)."""
        from peftkit.data.prepare import tokenize_texts
        from peftkit.inference.forward import forward_split

        model = self.activate(name)
        assert self.tokenizer is not None, "an adapter is loaded, so the base and its tokenizer are"
        ids = tokenize_texts(self.tokenizer, texts, self.entries[name].meta.get("max_length", 512))
        logits, _ = forward_split(
            model,
            ids,
            None,
            pad_token_id=self.tokenizer.pad_token_id,
            padding_side=self.tokenizer.padding_side,
            batch_size=batch_size,
        )
        return logits

    def predict(self, name: str, texts: list[str], *, batch_size: int = 64) -> list[dict]:
        """One dict per text: `adapter`, `label`, `probabilities` under adapter `name`'s own label set."""
        import numpy as np

        if self.task != "classification":
            raise PeftkitError(
                f"predict: the loaded adapters are {self.task} adapters; predict needs classification."
            )
        logits = self.logits(name, texts, batch_size=batch_size)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        labels = self.entries[name].labels
        assert labels is not None, "a classification adapter's metadata names its labels"
        mark = {} if self.entries[name].meta.get("verified", True) else {"unverified": True}
        return [
            {
                "adapter": name,
                "label": labels[int(p.argmax())],
                "probabilities": {lab: round(float(v), 6) for lab, v in zip(labels, p, strict=True)},
                **mark,
            }
            for p in probs
        ]

    def route(self, rows: list[tuple[str, str]], *, batch_size: int = 64) -> list[dict]:
        """Predict (adapter name, text) rows: grouped per adapter for batching, answered in input order."""
        out: dict[int, dict] = {}
        for name in dict.fromkeys(n for n, _ in rows):
            idx = [i for i, (n, _) in enumerate(rows) if n == name]
            for i, res in zip(
                idx, self.predict(name, [rows[i][1] for i in idx], batch_size=batch_size), strict=True
            ):
                out[i] = res
        return [out[i] for i in range(len(rows))]

    # -- loading -------------------------------------------------------------------------------------------------

    def _load_base(self, meta: dict) -> None:
        from peftkit.models.load import load_model_and_tokenizer, load_tokenizer, tokenizer_hash
        from peftkit.models.sources import content_hash, resolve_source

        source = resolve_source(self.base_source or meta["base_model"]["source"])
        cache_dir = meta["base_model"].get("cache_dir")
        self.tokenizer = tokenizer = load_tokenizer(source, cache_dir)
        self.task = task = meta["task"]
        self.base_hash, self.tok_hash = content_hash(source), tokenizer_hash(tokenizer)
        self.base_spec = source.spec
        self.base, _ = load_model_and_tokenizer(
            source,
            task=task,
            labels=meta.get("labels"),
            pooling=meta.get("pooling", "model"),
            dtype=self.dtype,
            device=self.device,
            quantization=self.quantization,
            cache_dir=cache_dir,
            tokenizer=tokenizer,
        )
        self.pooling = meta.get("pooling", "model")
        self.base.eval()

    def _check_fingerprint(self, adapter_dir: Path, meta: dict) -> None:
        from peftkit.adapters.bundle import fingerprint_differences

        assert self.base_hash is not None and self.tok_hash is not None, "_load_base ran before"
        diffs = (
            fingerprint_differences(meta, base_hash=self.base_hash, tok_hash=self.tok_hash)
            if meta["verified"]
            else []  # nothing recorded to compare: the caller accepted that (allow_unverified)
        )
        if meta["task"] != self.task:
            diffs.append(f"task: expected {self.task}, found {meta['task']}")
        if meta.get("pooling", "model") != self.pooling:
            diffs.append(f"model.pooling: expected {self.pooling}, found {meta.get('pooling', 'model')}")
        if diffs:
            raise AdapterMismatch(
                f"adapter '{adapter_dir}' does not fit the loaded base '{self.base_spec}': "
                + "; ".join(diffs)
                + ". Serve it with the base it was trained on, in a separate set."
            )


def _check_weights_loaded(model, adapter_dir: Path) -> None:
    """Every tensor of the adapter's files must be in the loaded model, unchanged: a file whose keys name layers
    the base does not have would otherwise load as a no-op, and the bare base would answer in its name."""
    import torch
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    if not isinstance(
        model, PeftModel
    ):  # peftkit's own implementation of a method loads (and checks) its weights
        return
    loaded = get_peft_model_state_dict(model, adapter_name="default")
    for weights in sorted(adapter_dir.glob("*.safetensors")):
        for key, tensor in load_file(str(weights)).items():
            found = loaded.get(key)
            if (
                found is None
                or found.shape != tensor.shape
                or not torch.equal(found.to(tensor.dtype), tensor)
            ):
                raise AdapterDoesNotApply(
                    f"adapter '{adapter_dir}': weight '{key[:120]}' in {weights.name} did not load into the "
                    f"base ({'no such layer' if found is None else 'different shape or values'}), so the "
                    f"adapter would not act as trained. Use an adapter trained on this base."
                )


def parse_adapter_specs(specs: list[str]) -> list[tuple[str, str]]:
    """`name=path` pairs from --adapter options."""
    pairs = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise PeftkitError(
                f"--adapter: expected NAME=PATH (e.g. sentiment=runs/a/adapter), found '{spec}'."
            )
        pairs.append((name, path))
    return pairs


def read_routed(path: str, names: list[str]) -> list[tuple[str, str]]:
    """(adapter, text) rows from a JSONL file whose lines have 'adapter' and 'text' fields."""
    p = Path(path)
    if not p.is_file():
        raise PeftkitError(
            f"--file: '{path}' does not exist. Give a JSONL file with 'adapter' and 'text' fields."
        )
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            row = (obj["adapter"], obj["text"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PeftkitError(
                f"--file {path}:{n}: expected a JSON object with 'adapter' and 'text' fields, found "
                f"{line[:60]!r}."
            ) from None
        if row[0] not in names:
            raise PeftkitError(
                f"--file {path}:{n}: adapter '{row[0]}' was not given (loaded: {', '.join(names)}). "
                f"Add --adapter {row[0]}=PATH."
            )
        rows.append(row)
    return rows
