"""Method × model checks that run before any weights load: the model skeleton is built on the meta device
(no memory, no weights) so target modules and layer types can be checked against the real architecture.

Refused here, each with the reason and a fix: settings out of range (rank ≤ 0, a bottleneck wider than the
hidden size), prefix tuning with gradient checkpointing, a target module that matches nothing (with close
names), and a method that cannot wrap a layer type (LoHa, LoKr, OFT, BOFT, … on GPT-2's Conv1D layers).
"""

from __future__ import annotations

import re

from peftkit.errors import PeftkitError, did_you_mean
from peftkit.methods.registry import FULL, MethodEntry, get_method, registered

# Settings that are a size and must be ≥ 1.
_POSITIVE = (
    "r",
    "init_r",
    "target_r",
    "num_virtual_tokens",
    "bottleneck_size",
    "reduction_factor",
    "boft_block_size",
    "oft_block_size",
    "encoder_hidden_size",
)


def model_skeleton(config, task: str):
    """The model for `task` built from `config` on the meta device: module names and types, no weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(config)


def check_method_for_model(
    name: str, settings: dict, config, task: str, gradient_checkpointing: bool = False
):
    """Refuse `method` settings that cannot work on the model `config` describes; return the PEFT config.

    `config` is the base model's transformers config (no weights needed). Raises PeftkitError with a fix.
    """
    from peftkit.methods.apply import build_peft_config

    _check_ranges(name, settings, config)
    entry = None if name == FULL else get_method(name)
    if entry and entry.gradient_checkpointing_refusal and gradient_checkpointing:
        raise PeftkitError(
            f"method.name: {name} cannot be combined with train.gradient_checkpointing: true "
            f"({entry.gradient_checkpointing_refusal}). Set train.gradient_checkpointing: false, or use "
            f"prompt_tuning or lora if you need checkpointing."
        )
    peft_config = build_peft_config(name, settings, task=task, model_type=config.model_type)
    targets = getattr(peft_config, "target_modules", None)
    if targets:
        assert entry is not None  # only full fine-tuning has no entry, and it builds no PEFT config
        _check_targets(entry, targets, model_skeleton(config, task), config.model_type)
    return peft_config


def _check_ranges(name: str, settings: dict, config) -> None:
    for key in _POSITIVE:
        value = settings.get(key)
        if isinstance(value, int | float) and value <= 0:
            raise PeftkitError(
                f"method.{key}: {value} is not a valid size for {name}; it must be 1 or more (e.g. {key}: 8)."
            )
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    selected = settings.get("layers_to_transform")
    selected = [selected] if isinstance(selected, int) else selected or []
    bad = [i for i in selected if not isinstance(i, int) or i < 0 or (layers and i >= layers)]
    if bad:
        # without a layer count (no num_hidden_layers / n_layer) only negative or non-integer indices are bad
        fix = (
            f", which has layers 0–{layers - 1}. Pick indices in that range" if layers else ". Use 0 or more"
        )
        raise PeftkitError(
            f"method.layers_to_transform: {bad} {'is' if len(bad) == 1 else 'are'} not layers of this "
            f"model{fix}."
        )
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if hidden is None:
        return
    for key in ("reduction_factor", "bottleneck_size", "r"):
        value = settings.get(key)
        if isinstance(value, int) and value > hidden:
            what = (
                "bottleneck of less than one unit"
                if key == "reduction_factor"
                else "rank wider than the layers"
            )
            raise PeftkitError(
                f"method.{key}: {value} is larger than the model's hidden size ({hidden}), which gives a {what}. "
                f"Use a value of at most {hidden} (typical: reduction_factor 16, bottleneck_size or r 8–64)."
            )


def _matches(targets, module_name: str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def _check_targets(entry: MethodEntry, targets, model, model_type: str) -> None:
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    leaf_names = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if n and not list(m.children())})
    if isinstance(targets, str):
        if not any(_matches(targets, n) for n in modules):
            raise PeftkitError(
                f"method.target_modules: the pattern '{targets}' matches no module of this {model_type} model. "
                f"Its layer names include: {', '.join(leaf_names)}."
            )
    else:
        for t in sorted(targets):
            if not any(_matches([t], n) for n in modules):
                raise PeftkitError(
                    f"method.target_modules: '{t}' matches no module of this {model_type} model."
                    f"{did_you_mean(t, leaf_names)} Its layer names: {', '.join(leaf_names)}."
                )
    if entry.conv1d:
        return
    conv = sorted(
        {n.rsplit(".", 1)[-1] for n, m in modules.items() if _matches(targets, n) and isinstance(m, Conv1D)}
    )
    if conv:
        raise PeftkitError(
            f"method.name: {entry.name} does not support transformers' Conv1D layers, and on this {model_type} model "
            f"the targets {', '.join(conv)} are Conv1D. Use a method that does ({', '.join(_conv1d_methods())}), "
            f"or target other layers with method.target_modules."
        )


def _conv1d_methods() -> list[str]:
    """The common methods whose layers wrap Conv1D (the short list an error message can show)."""
    common = ("lora", "dora", "rslora", "adalora", "ia3", "vera", "houlsby", "pfeiffer", "parallel")
    return [e.name for e in registered() if e.conv1d and e.name in common]
