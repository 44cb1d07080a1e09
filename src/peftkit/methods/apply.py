"""Apply a method to a loaded model: build its config (with per-architecture defaults) and wrap the model."""

from __future__ import annotations

from peftkit.errors import PeftkitError
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
# Methods that get DEFAULT_TARGETS when the recipe names none. The others (ia3, ln_tuning, …) keep PEFT's own
# per-architecture defaults, which follow their papers (IA3: keys, values and the feed-forward output).
TARGETED = {"lora", "dora", "rslora", "adalora", "loha", "lokr", "vera", "oft", "boft"}
# LayerNorm tuning where PEFT has no default for the architecture.
LN_TARGETS = {"bert": ["LayerNorm"], "roberta": ["LayerNorm"], "gpt2": ["ln_1", "ln_2", "ln_f"]}
TASK_TYPES = {"classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}
# AdaLoRA's schedule needs the run length; validation (before the data is read) uses this stand-in.
_VALIDATION_STEPS = 10_000


def build_peft_config(
    name: str, settings: dict, *, task: str, model_type: str, total_steps: int | None = None
):
    """PEFT config for `name` with the recipe's settings, peftkit's defaults filling what the recipe leaves out."""
    kwargs = check_method_settings(name, settings)
    if name == FULL:
        return None
    entry = get_method(name)
    if name in TARGETED and "target_modules" not in kwargs and model_type in DEFAULT_TARGETS:
        kwargs["target_modules"] = DEFAULT_TARGETS[model_type]
    if name == "ln_tuning" and "target_modules" not in kwargs and model_type in LN_TARGETS:
        kwargs["target_modules"] = LN_TARGETS[model_type]
    if name in {"lora", "dora", "rslora"}:
        kwargs.setdefault("r", 16)
        kwargs.setdefault("lora_alpha", 2 * kwargs["r"])
        kwargs.setdefault("lora_dropout", 0.1)
    if name == "adalora":
        kwargs.setdefault("total_step", total_steps or _VALIDATION_STEPS)
    try:
        return entry.config_cls()(task_type=TASK_TYPES[task], **kwargs)
    except (ValueError, TypeError) as exc:
        raise PeftkitError(
            f"method: PEFT refuses these {name} settings: {exc} Fix the settings under `method`."
        ) from None


def apply_method(model, *, name: str, settings: dict, task: str, total_steps: int | None = None):
    """Wrap `model` with method `name`. Only the adapter (and, for classification, the head) trains."""
    from peft import get_peft_model

    if name == FULL:  # full fine-tuning: the plain model, every parameter trainable
        check_method_settings(name, settings)
        return model.requires_grad_(True)
    config = build_peft_config(
        name, settings, task=task, model_type=model.config.model_type, total_steps=total_steps
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:
        raise PeftkitError(
            f"method: PEFT could not apply {name} to this {model.config.model_type} model: {exc} "
            f"Set method.target_modules, or choose another method."
        ) from None
    return wrapped
