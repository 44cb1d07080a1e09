"""Apply a method to a loaded model: build its config (with per-architecture defaults) and wrap the model."""

from __future__ import annotations

from peftkit.methods.registry import FULL, check_method_settings, get_method

# Where the LoRA family goes by default: every linear layer in attention and the feed-forward block, and for
# BERT the pooler too ("dense" matches it). The PEFT docs' query/value-only default leaves MiniLM, a mean-pooling
# sentence embedder whose [CLS]/pooler path was never trained, stuck on the majority class (0.58 accuracy).
DEFAULT_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
TARGETED = {"lora", "dora", "rslora", "adalora", "loha", "lokr", "vera", "oft", "boft", "ia3"}
TASK_TYPES = {"classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


def build_peft_config(name: str, settings: dict, *, task: str, model_type: str, total_steps: int | None = None):
    """PEFT config for `name` with the recipe's settings, peftkit's defaults filling what the recipe leaves out."""
    kwargs = check_method_settings(name, settings)
    if name == FULL:
        return None
    entry = get_method(name)
    if name in TARGETED and "target_modules" not in kwargs and model_type in DEFAULT_TARGETS:
        kwargs["target_modules"] = DEFAULT_TARGETS[model_type]
    if name in {"lora", "dora", "rslora"}:
        kwargs.setdefault("r", 16)
        kwargs.setdefault("lora_alpha", 2 * kwargs["r"])
        kwargs.setdefault("lora_dropout", 0.1)
    if name == "adalora" and total_steps:
        kwargs.setdefault("total_step", total_steps)
    return entry.config_cls()(task_type=TASK_TYPES[task], **kwargs)


def apply_method(model, *, name: str, settings: dict, task: str, total_steps: int | None = None):
    """Wrap `model` with method `name`. Only the adapter (and, for classification, the head) trains."""
    from peft import get_peft_model

    if name == FULL:  # full fine-tuning: the plain model, every parameter trainable
        check_method_settings(name, settings)
        return model.requires_grad_(True)
    config = build_peft_config(name, settings, task=task, model_type=model.config.model_type, total_steps=total_steps)
    return get_peft_model(model, config)
