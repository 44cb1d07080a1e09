"""Load a base model and its tokenizer from a resolved source, for a task, on the right device and dtype."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from peftkit.errors import PeftkitError
from peftkit.models.decoder import install_decoder_hooks, is_decoder
from peftkit.models.sources import ModelSource

# Classification heads: every transformers *ForSequenceClassification names its head one of these.
HEAD_MODULES = ("classifier", "score")


def pick_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str):
    """`auto` → float32 on CPU (bf16 is ~48x slower on these CPUs), bfloat16 on a GPU that supports it."""
    import torch

    if name == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def quant_device_map(device: str) -> dict:
    """bitsandbytes places a quantized model at load time: on this process's own GPU (`cuda:3` → 3), so that N
    processes on one machine each fill their own device rather than all landing on GPU 0."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return {"": dev.index if dev.index is not None else torch.cuda.current_device()}
    return {"": "cpu"}


def hf_folder(source: ModelSource, cache_dir: str | None = None) -> str:
    """The id or folder `from_pretrained` reads; GGUF files are converted once into a cached HF folder."""
    if source.kind == "gguf":
        from peftkit.models.gguf import converted_folder

        assert source.path is not None  # a GGUF source is a local file
        return str(converted_folder(source.path, cache_dir=cache_dir))
    return source.load_id


def load_config(source: ModelSource, cache_dir: str | None = None):
    """The model's transformers config."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(hf_folder(source, cache_dir), revision=source.revision)


def load_tokenizer(source: ModelSource, cache_dir: str | None = None):
    """The tokenizer, with a pad token guaranteed (decoders reuse eos: classification pools the last real token)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_folder(source, cache_dir), revision=source.revision)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise PeftkitError(
                f"model source '{source.spec}': the tokenizer has neither a pad token nor an eos token, so batches "
                f'cannot be padded. Add a pad token to the tokenizer files (tokenizer_config.json: "pad_token").'
            )
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the vocabulary and special tokens: two tokenizers with equal hashes encode text the same way."""
    blob = json.dumps(
        {
            "vocab": sorted(tokenizer.get_vocab().items()),
            "special": tokenizer.special_tokens_map,
            "lower": getattr(tokenizer, "do_lower_case", None),
        },
        sort_keys=True,
        default=str,
    )
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def load_base_model(
    source: ModelSource,
    *,
    task: str,
    labels: list[str] | None = None,
    pad_token_id: int | None = None,
    dtype: str = "auto",
    device: str | None = None,
    quantization: dict | None = None,
    cache_dir: str | None = None,
    pooling: str = "model",
):
    """A transformers model for `task` (`classification` or `causal_lm`), on `device`, frozen weights untouched.

    `labels` sets num_labels and id2label/label2id so they travel in the model config. `quantization` is a dict of
    the recipe's quantization block (bits, quant_type, double_quant, compute_dtype), or None. `pooling`: how a
    classifier reads the sequence (`peftkit.models.pooling`); a folder merged with mean pooling keeps it.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    device = device or pick_device()
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict = {"revision": source.revision, "dtype": torch_dtype}
    cls: Any = AutoModelForCausalLM
    if task == "classification":
        if not labels:
            raise ValueError("load_base_model: a classification model needs its label names")
        cls = AutoModelForSequenceClassification
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    if pad_token_id is not None:
        kwargs["pad_token_id"] = pad_token_id
    if quantization:
        from peftkit.models.quant import bnb_config

        kwargs["quantization_config"] = bnb_config(task=task, device=device, **quantization)
        kwargs["device_map"] = quant_device_map(device)
    model = cls.from_pretrained(hf_folder(source, cache_dir), **kwargs)
    if is_decoder(model.config):
        install_decoder_hooks(model, pool_last_token=task == "classification")
    if task == "classification":
        from peftkit.models.pooling import apply_pooling

        apply_pooling(model, pooling, source=f"model source '{source.spec}'")
    if quantization:
        from peftkit.models.quant import keep_plain_cpu_4bit_path

        keep_plain_cpu_4bit_path(model)
    else:
        model.to(device)
    return model


def load_model_and_tokenizer(
    source: ModelSource,
    *,
    task: str,
    labels: list[str] | None = None,
    pooling: str = "model",
    dtype: str = "auto",
    device: str | None = None,
    quantization: dict | None = None,
    cache_dir: str | None = None,
    tokenizer=None,
):
    """(base model, tokenizer) for `task`: the one way every workflow loads a base. The model's pad id is the
    tokenizer's (decoders pad with eos); `tokenizer` skips loading it again when the caller has it already."""
    tokenizer = tokenizer or load_tokenizer(source, cache_dir)
    model = load_base_model(
        source,
        task=task,
        labels=labels,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
        device=device,
        quantization=quantization,
        cache_dir=cache_dir,
        pooling=pooling,
    )
    return model, tokenizer
