"""Apply a method to a loaded model (build its config from the registry entry, wrap the model), and attach a saved
adapter to a loaded base (the same choice between PEFT and peftkit's own implementation)."""

from __future__ import annotations

import json
from pathlib import Path

from peftkit.errors import PeftkitError
from peftkit.methods.registry import FULL, TASK_TYPES, MethodEntry, check_method_settings, get_method


def build_peft_config(
    name: str, settings: dict, *, task: str, model_type: str, total_steps: int | None = None
):
    """PEFT config for `name` with the recipe's settings, peftkit's defaults filling what the recipe leaves out."""
    kwargs = check_method_settings(name, settings)
    if name == FULL:
        return None
    entry = get_method(name)
    if entry.targets and "target_modules" not in kwargs and model_type in entry.targets:
        kwargs["target_modules"] = entry.targets[model_type]
    if entry.defaults:
        entry.defaults(kwargs, total_steps)
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
    own = get_method(name).own_implementation(task)
    try:
        return own.apply(model, config) if own else get_peft_model(model, config)
    except ValueError as exc:
        raise PeftkitError(
            f"method: PEFT could not apply {name} to this {model.config.model_type} model: {exc} "
            f"Set method.target_modules, or choose another method."
        ) from None


def entry_for_adapter(adapter_dir: Path, method: str | None = None) -> MethodEntry | None:
    """The registry entry of a saved adapter: by its recorded method name, else by PEFT type; None if unknown."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    for name in (method, str(config.get("peft_type", "")).lower()):
        if name:
            try:
                return get_method(name)
            except PeftkitError:
                continue
    return None


def attach_adapter(model, adapter_dir: str | Path, *, task: str):
    """`model` with the adapter saved in `adapter_dir`: PEFT's `PeftModel.from_pretrained`, or peftkit's own
    implementation where the method's entry has one for `task` (the folder is PEFT's format either way)."""
    from peft import PeftModel

    from peftkit.methods.peft_config import read_peft_config

    entry = entry_for_adapter(Path(adapter_dir))
    own = entry.own_implementation(task) if entry else None
    if own:
        return own.load(model, Path(adapter_dir))
    # The config object, not the file: a mean-pooled classifier's file carries a task type PEFT refuses on purpose.
    return PeftModel.from_pretrained(model, str(adapter_dir), config=read_peft_config(Path(adapter_dir)))
