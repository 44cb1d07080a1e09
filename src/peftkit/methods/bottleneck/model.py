"""The bottleneck tuner: finds the modules a variant wraps, per architecture, and swaps in `BottleneckLayer`s."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTuner

from peftkit.methods.bottleneck.layer import BottleneckLayer, refuse_merge

# Regexes (full match on module names) per architecture family: where each variant's adapters sit. `{layers}`
# becomes `\d+` or the selected layer indices.
_TARGETS = {
    "bert": {
        "attn": r".*\.layer\.{layers}\.attention\.output\.dense",
        "ffn": r".*\.layer\.{layers}\.output\.dense",
        "ffn_block": r".*\.layer\.{layers}\.output",
    },
    "gpt2": {
        "attn": r".*\.h\.{layers}\.attn\.c_proj",
        "ffn": r".*\.h\.{layers}\.mlp\.c_proj",
        "ffn_block": r".*\.h\.{layers}\.mlp",
    },
    "llama": {
        "attn": r".*\.layers\.{layers}\.self_attn\.o_proj",
        "ffn": r".*\.layers\.{layers}\.mlp\.down_proj",
        "ffn_block": r".*\.layers\.{layers}\.mlp",
    },
}
_FAMILY = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "smollm3": "llama",
    "gemma": "llama",
}
_PLACES = {"houlsby": ("attn", "ffn"), "pfeiffer": ("ffn",), "parallel": ("ffn_block",)}


def default_targets(variant: str, model_type: str | None, layers: list[int] | None = None) -> str | None:
    """The target regex for `variant` on `model_type`, or None for an architecture peftkit has no map for."""
    family = _FAMILY.get(model_type) if model_type is not None else None
    if family is None:
        return None
    idx = r"\d+" if layers is None else "(" + "|".join(str(i) for i in layers) + ")"
    parts = [_TARGETS[family][p].format(layers=idx) for p in _PLACES[variant]]
    return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"


def hidden_size(model_config) -> int:
    """The residual-stream width the adapters read and write."""
    cfg = model_config if isinstance(model_config, dict) else model_config.to_dict()
    for key in ("hidden_size", "n_embd", "d_model"):
        if cfg.get(key):
            return int(cfg[key])
    raise ValueError("bottleneck adapters: the model config has no hidden_size / n_embd / d_model")


class BottleneckModel(BaseTuner):
    """Bottleneck adapters on a transformers model; PEFT's BaseTuner does injection, saving and disabling."""

    prefix: str = "bottleneck_"
    tuner_layer_cls = BottleneckLayer
    target_module_mapping: dict = {}

    def _prepare_adapter_config(self, peft_config, model_config: dict):
        if peft_config.target_modules is None:
            targets = default_targets(
                peft_config.variant, model_config.get("model_type"), peft_config.layers_to_transform
            )
            if targets is None:
                raise ValueError(
                    f"bottleneck adapters: no default placement for model type "
                    f"{model_config.get('model_type')!r}; set target_modules"
                )
            peft_config.target_modules = targets
        return peft_config

    def _create_and_replace(
        self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs
    ):
        hidden = hidden_size(self.model.config)
        opts = dict(
            hidden=hidden,
            bottleneck=peft_config.bottleneck_dim(hidden),
            non_linearity=peft_config.non_linearity,
            scaling=peft_config.scaling,
            parallel=peft_config.variant == "parallel",
        )
        if isinstance(target, BottleneckLayer):
            target.update_layer(adapter_name, **opts, inference_mode=peft_config.inference_mode)
            return
        new_module = BottleneckLayer(target, adapter_name, **opts, inference_mode=peft_config.inference_mode)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _check_merge_allowed(self):
        refuse_merge()

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        pass
