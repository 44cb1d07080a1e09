"""Prefix tuning for sequence classification: learned key/value prefixes in every attention layer.

Li & Liang (2021): each layer attends to `num_virtual_tokens` learned keys and values before the real tokens.
The prefixes reach attention the way PEFT's do — as a pre-filled `DynamicCache` handed to the transformer, with
the attention mask extended by ones for the virtual tokens — so the numbers are PEFT's (positions then start after
the prefix, as in PEFT). What differs is the route: PEFT 0.21 looks for a `past_key_values` argument in the
model's `forward` signature and refuses when it is missing, which it is from transformers 5.24 on (renamed
`cache`). Here a forward pre-hook on the transformer (`model.bert`, `model.transformer`, `model.model`) passes the
cache under whichever of the two names that transformer's `forward` declares, checked once when the prefix is
applied (`cache_argument`); a transformer that declares neither is refused there with the versions tested.

The adapter is saved in PEFT's folder format: `adapter_config.json` is PEFT's `PrefixTuningConfig` (peft_type
PREFIX_TUNING) and `adapter_model.safetensors` holds PEFT's keys — `prompt_embeddings` (the prefix, after the
optional projection, as PEFT saves it) and the trained head as `base_model.<module>.<param>` — so
`PeftModel.from_pretrained` reads it wherever PEFT's own prefix tuning works
(tests/methods/test_prefix.py checks the logits agree).
"""

from __future__ import annotations

import copy
import inspect
import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from peftkit.errors import PeftkitError
from peftkit.models.load import HEAD_MODULES

if TYPE_CHECKING:
    from transformers import PreTrainedModel

WEIGHTS_FILE = "adapter_model.safetensors"
# transformers versions whose transformers take the cache as `past_key_values` (≤ 5.23) or `cache` (5.24, 5.25);
# named in the refusal below and in tests/methods/test_prefix.py.
TESTED = "transformers 5.23–5.25"


def cache_argument(backbone: nn.Module) -> str:
    """The name under which `backbone.forward` takes a key/value cache: `cache` (transformers ≥ 5.24) or
    `past_key_values` (before). Refuses a transformer that takes neither."""
    params = inspect.signature(backbone.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise PeftkitError(
        f"method.name: prefix tuning needs the transformer to accept a key/value cache, but "
        f"{type(backbone).__name__}.forward takes neither `cache` nor `past_key_values` (peftkit's prefix tuning "
        f"was tested with {TESTED}). Use another method (lora, prompt_tuning), or install a tested "
        f"transformers version."
    )


def fill_model_shape(config, model_config) -> None:
    """Set the shape fields PEFT fills in when it applies prefix tuning (layers, key/value width, heads), so the
    saved adapter_config.json is what PEFT writes. Grouped-query attention: the prefix has the key/value heads."""
    get = model_config.to_dict().get
    config.num_layers = config.num_layers or get("num_hidden_layers") or get("n_layer")
    hidden = get("hidden_size") or get("n_embd")
    heads = get("num_attention_heads") or get("n_head")
    config.token_dim = config.token_dim or hidden
    config.num_attention_heads = config.num_attention_heads or heads
    kv_heads = get("num_key_value_heads")
    if kv_heads:
        head_dim = get("head_dim") or config.token_dim // config.num_attention_heads
        config.token_dim, config.num_attention_heads = head_dim * kv_heads, kv_heads
    config.encoder_hidden_size = config.encoder_hidden_size or config.token_dim
    config.num_transformer_submodules = 1


class PrefixEncoder(nn.Module):
    """The learned prefixes: one row per virtual token holding every layer's keys and values (PEFT's layout), or,
    with `prefix_projection`, a smaller embedding through a two-layer MLP (training only; saved as its output)."""

    def __init__(self, config):
        super().__init__()
        width = config.num_layers * 2 * config.token_dim
        self.projection = config.prefix_projection and not config.inference_mode
        if self.projection:
            self.embedding = nn.Embedding(config.num_virtual_tokens, config.token_dim)
            self.transform = nn.Sequential(
                nn.Linear(config.token_dim, config.encoder_hidden_size),
                nn.Tanh(),
                nn.Linear(config.encoder_hidden_size, width),
            )
        else:
            self.embedding = nn.Embedding(config.num_virtual_tokens, width)
        if config.init_weights == "zero":
            nn.init.zeros_((self.transform[-1] if self.projection else self.embedding).weight)

    def forward(self) -> torch.Tensor:
        """(num_virtual_tokens, num_layers · 2 · token_dim)."""
        rows = self.embedding.weight
        return self.transform(rows) if self.projection else rows


class PrefixTuningClassifier(nn.Module):
    """A transformers `*ForSequenceClassification` model with learned key/value prefixes; only the prefixes and
    the head (plus any `modules_to_save`) train. Called like the model it wraps."""

    def __init__(self, model: PreTrainedModel, config):
        super().__init__()
        fill_model_shape(config, model.config)
        config.base_model_name_or_path = getattr(model.config, "name_or_path", None)
        config.modules_to_save = [*(config.modules_to_save or []), *HEAD_MODULES]  # as PEFT writes it
        self.base_model = model
        self.peft_config = {"default": config}
        # on the base's device (a base loaded on a GPU, or placed there by bitsandbytes, is not moved again)
        device = next(model.parameters()).device
        self.prompt_encoder = nn.ModuleDict({"default": PrefixEncoder(config).to(device)})
        backbone = getattr(model, model.base_model_prefix)
        self._cache_name = cache_argument(backbone)
        self._pending_cache = None
        self._enabled = True
        # prepend: positions and pooling hooks registered at load (peftkit.models.decoder) must see the cache too
        backbone.register_forward_pre_hook(self._pass_cache, with_kwargs=True, prepend=True)
        model.requires_grad_(False)
        for name, module in self.saved_modules().items():
            # a private copy, as PEFT's ModulesToSaveWrapper keeps: the base's own head (which other adapters on
            # the same base may share, see peftkit.inference.adapter_set) is never written to
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, copy.deepcopy(module).requires_grad_(True))

    @property
    def config(self):
        return self.base_model.config

    def saved_modules(self) -> dict[str, nn.Module]:
        """Modules trained and saved in full: the head and the `modules_to_save` (matched as PEFT matches them)."""
        names = self.peft_config["default"].modules_to_save
        return {
            n: m
            for n, m in self.base_model.named_modules()
            if n and any(n == k or n.endswith("." + k) for k in names)
        }

    def prefix_cache(self, batch: int):
        """A fresh `DynamicCache` holding every layer's prefix keys and values for a batch of `batch` rows."""
        from transformers import DynamicCache

        config = self.peft_config["default"]
        rows = self.prompt_encoder["default"]().to(self.base_model.dtype)
        heads = config.num_attention_heads
        # (tokens, layers·2·heads·dim) → (layers·2, heads, tokens, dim): PEFT's order of keys and values
        kv = rows.view(config.num_virtual_tokens, config.num_layers * 2, heads, config.token_dim // heads)
        kv = kv.permute(1, 2, 0, 3).unsqueeze(1).expand(-1, batch, -1, -1, -1)
        cache = DynamicCache()
        for layer in range(config.num_layers):
            cache.update(kv[2 * layer], kv[2 * layer + 1], layer)
        return cache

    def _pass_cache(self, module, args, kwargs):
        if self._pending_cache is None:
            return None
        kwargs[self._cache_name], self._pending_cache = self._pending_cache, None
        return args, kwargs

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        if not self._enabled:
            return self.base_model(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        tokens = self.peft_config["default"].num_virtual_tokens
        if attention_mask is not None:  # the virtual tokens take part for every row
            attention_mask = torch.cat([attention_mask.new_ones(batch, tokens), attention_mask], dim=1)
        self._pending_cache = self.prefix_cache(batch)
        try:
            return self.base_model(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        finally:
            self._pending_cache = None

    @contextmanager
    def disable_adapter(self):
        """The base model without the prefixes (the trained head stays)."""
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = True

    def adapter_state(self, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
        """The tensors PEFT saves for prefix tuning, under PEFT's names. `state_dict`: this module's full state
        gathered from every process (FSDP / ZeRO-3), used for the head instead of the local shards."""
        out = {"prompt_embeddings": self.prompt_encoder["default"]().detach()}
        full = state_dict or {}
        for name, module in self.saved_modules().items():
            for key, tensor in module.state_dict().items():
                out[f"base_model.{name}.{key}"] = full.get(f"base_model.{name}.{key}", tensor).detach()
        return {k: v.cpu().contiguous() for k, v in out.items()}

    def save_pretrained(self, out_dir, safe_serialization: bool = True, state_dict: dict | None = None, **_):
        """Write adapter_config.json (PEFT's PrefixTuningConfig) and adapter_model.safetensors (PEFT's keys)."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = self.peft_config["default"]
        inference_mode, config.inference_mode = config.inference_mode, True  # as PEFT writes it
        try:
            config.save_pretrained(str(out_dir))
        finally:
            config.inference_mode = inference_mode
        save_file(self.adapter_state(state_dict), str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})


def apply(model: PreTrainedModel, config) -> PrefixTuningClassifier:
    """Prefix tuning on `model` (a `*ForSequenceClassification`) with PEFT's `PrefixTuningConfig` `config`."""
    return PrefixTuningClassifier(model, config)


def load(model: PreTrainedModel, adapter_dir: Path) -> PrefixTuningClassifier:
    """`model` with the prefix-tuning adapter saved in `adapter_dir` (by peftkit or by PEFT), in eval mode."""
    from safetensors.torch import load_file

    from peftkit.methods.peft_config import read_peft_config

    settings = json.loads((adapter_dir / "adapter_config.json").read_text())
    config = read_peft_config(adapter_dir)  # not from_pretrained: it refuses the mean-pooling mark on purpose
    config.inference_mode = True  # the saved prefix is the projection's output: a plain table
    config.modules_to_save = [
        m for m in dict.fromkeys(settings.get("modules_to_save") or []) if m not in HEAD_MODULES
    ]
    wrapped = PrefixTuningClassifier(model, config)
    tensors = load_file(str(adapter_dir / WEIGHTS_FILE))
    expected = set(wrapped.adapter_state())
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise PeftkitError(
            f"adapter '{adapter_dir}': {WEIGHTS_FILE} does not hold the prefix-tuning tensors this model needs "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'}). It was saved "
            f"for another model or method; load it with the base it was trained on."
        )
    try:
        with torch.no_grad():
            encoder = cast(PrefixEncoder, wrapped.prompt_encoder["default"])  # the only module it holds
            encoder.embedding.weight.copy_(tensors.pop("prompt_embeddings"))
            wrapped.base_model.load_state_dict(
                {k.removeprefix("base_model."): v for k, v in tensors.items()}, strict=False
            )
    except RuntimeError as exc:  # a shape that does not fit this model
        raise PeftkitError(
            f"adapter '{adapter_dir}': its prefix-tuning tensors do not fit this model ({str(exc)[:200]}). It was "
            f"saved for another model; load it with the base it was trained on."
        ) from None
    return wrapped.eval()
