"""Load a base model and its tokenizer from a resolved source, for a task, on the right device and dtype."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from typing import Any

from peftkit.errors import PeftkitError, shorten
from peftkit.fileio import safetensors_header
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


def check_model_folder(source: ModelSource) -> None:
    """A local model folder must hold a config.json that is a JSON object naming an architecture transformers knows
    (peftkit never runs a model's own code), and complete weight files. Reads no weights."""
    folder = source.path
    if source.kind not in ("path", "package") or folder is None:
        return
    from transformers import CONFIG_MAPPING, __version__

    where = f"model source '{source.spec}'"
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PeftkitError(
            f"{where}: {config_file} is not valid JSON ({shorten(exc, 120)}). The model folder is damaged: copy it "
            f"again."
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in CONFIG_MAPPING:
        custom = (
            "; its auto_map names the model's own code, which peftkit never runs (trust_remote_code stays off)"
            if isinstance(config, dict) and "auto_map" in config
            else ""
        )
        raise PeftkitError(
            f"{where}: {config_file} names model_type {str(model_type)[:60]!r}, an architecture transformers "
            f"{__version__} does not know{custom}. Use a model of an architecture transformers supports."
        )
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not weights:
        raise PeftkitError(
            f"{where}: folder {folder} has a config.json but no weights (model.safetensors, or sharded "
            f"model-0000K-of-0000N.safetensors). Copy the weight files into it, or point model.source at the "
            f"folder that has them."
        )
    for f in weights:
        if f.suffix == ".safetensors":
            try:
                safetensors_header(f)
            except ValueError as exc:
                raise PeftkitError(
                    f"{where}: weight file {f} is truncated or corrupt ({exc}). Copy the model folder again."
                ) from None


@contextmanager
def _transformers_errors(source: ModelSource, what: str):
    """Turn whatever transformers raises while reading a model's `what` into one paragraph."""
    try:
        yield
    except PeftkitError:
        raise
    except (
        Exception
    ) as exc:  # OSError, ValueError, JSONDecodeError, SafetensorError, ... all mean a bad folder
        raise PeftkitError(
            f"model source '{source.spec}': transformers could not load its {what} ({type(exc).__name__}: "
            f"{shorten(exc, 300)}). Check that the folder is a complete transformers model, or copy it again."
        ) from None


def load_config(source: ModelSource, cache_dir: str | None = None):
    """The model's transformers config (a local folder is checked first: `check_model_folder`)."""
    from transformers import AutoConfig

    check_model_folder(source)
    with _transformers_errors(source, "config.json"):
        return AutoConfig.from_pretrained(
            hf_folder(source, cache_dir), revision=source.revision, trust_remote_code=False
        )


def load_tokenizer(source: ModelSource, cache_dir: str | None = None):
    """The tokenizer, with a pad token guaranteed (decoders reuse eos: classification pools the last real token)."""
    from transformers import AutoTokenizer

    with _transformers_errors(source, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(
            hf_folder(source, cache_dir), revision=source.revision, trust_remote_code=False
        )
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
    kwargs: dict = {"revision": source.revision, "dtype": torch_dtype, "trust_remote_code": False}
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
    check_model_folder(source)
    with _transformers_errors(source, "weights"):
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
