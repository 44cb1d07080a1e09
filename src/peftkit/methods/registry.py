"""Method registry: recipe `method.name` → a PEFT config, checked before any model loads.

Any PEFT method is reachable by its PEFT name (lower case: `lora`, `ia3`, `loha`, `prefix_tuning`, …) with its
settings passed through to PEFT's own config dataclass. A few names are presets over PEFT configs (`dora`,
`rslora`). Methods PEFT lacks live in their own folder and register here (see `register`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from peftkit.errors import PeftkitError, did_you_mean

# Keys peftkit fills in itself; a recipe must not set them.
_MANAGED = {
    "task_type",
    "peft_type",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "auto_mapping",
    "peft_version",
}


@dataclass
class MethodEntry:
    """How to build one method. `config_cls` is PEFT's config dataclass (or peftkit's, same shape)."""

    name: str
    config_cls: Callable[[], type]  # lazy: importing peft costs seconds
    presets: dict = field(default_factory=dict)
    mergeable: bool = True
    doc: str = ""


_REGISTRY: dict[str, MethodEntry] = {}


def register(entry: MethodEntry) -> None:
    """Add a method (peftkit's own folders call this at import)."""
    _REGISTRY[entry.name] = entry


def _peft_config(type_name: str):
    def get():
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
        from peft.utils import PeftType

        return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[type_name]]

    return get


def _peft_names() -> list[str]:
    from peft.utils import PeftType

    return [t.value.lower() for t in PeftType]


FULL = "full"  # full fine-tuning, the quality reference of `peftkit bench`: every parameter trains
_PROMPT_LEARNING = {
    "prompt_tuning",
    "p_tuning",
    "prefix_tuning",
    "multitask_prompt_tuning",
    "adaption_prompt",
    "cpt",
}

register(MethodEntry("lora", _peft_config("LORA"), doc="Low-rank adaptation (Hu et al. 2021)."))
register(
    MethodEntry(
        "dora",
        _peft_config("LORA"),
        presets={"use_dora": True},
        doc="Weight-decomposed LoRA (Liu et al. 2024).",
    )
)
register(
    MethodEntry(
        "rslora",
        _peft_config("LORA"),
        presets={"use_rslora": True},
        doc="Rank-stabilised LoRA: scaling alpha/sqrt(r) (Kalajievski 2023).",
    )
)


def _bottleneck_config():
    from peftkit.methods.bottleneck import BottleneckConfig  # registers the type with PEFT

    return BottleneckConfig


BOTTLENECK = {"bottleneck", "houlsby", "pfeiffer", "parallel"}
register(
    MethodEntry(
        "bottleneck",
        _bottleneck_config,
        mergeable=False,
        doc="Bottleneck adapters; choose `variant` (houlsby, pfeiffer, parallel).",
    )
)
register(
    MethodEntry(
        "houlsby",
        _bottleneck_config,
        presets={"variant": "houlsby"},
        mergeable=False,
        doc="Bottleneck adapters after attention and feed-forward (Houlsby et al. 2019).",
    )
)
register(
    MethodEntry(
        "pfeiffer",
        _bottleneck_config,
        presets={"variant": "pfeiffer"},
        mergeable=False,
        doc="One bottleneck adapter per layer after the feed-forward block (Pfeiffer et al. 2020).",
    )
)
register(
    MethodEntry(
        "parallel",
        _bottleneck_config,
        presets={"variant": "parallel"},
        mergeable=False,
        doc="Bottleneck adapter beside the feed-forward block (He et al. 2022).",
    )
)

_PROMPT_REFUSAL = (
    "{name} cannot be merged: it adds learned virtual tokens (or key/value prefixes) to every input "
    "instead of changing weights, so there is nothing to fold into the base model. Keep the adapter "
    "separate, or train a LoRA-family method if you need a merged model."
)


def merge_refusal_reason(name: str) -> str | None:
    """Why method `name` cannot be merged into its base weights, or None when it can (for `peftkit merge`)."""
    entry = get_method(name)
    if entry.mergeable:
        return None
    if entry.name in BOTTLENECK:
        from peftkit.methods.bottleneck.layer import MERGE_REFUSAL

        return MERGE_REFUSAL
    return _PROMPT_REFUSAL.format(name=entry.name)


def get_method(name: str) -> MethodEntry:
    """The registry entry for `name`; PEFT methods not listed explicitly are passed through by their PEFT name."""
    # peftkit's own method folders register on import.
    import peftkit.methods  # noqa: F401

    if name in _REGISTRY:
        return _REGISTRY[name]
    peft_names = _peft_names()
    if name in peft_names and name != "bottleneck":
        return MethodEntry(name, _peft_config(name.upper()), mergeable=name not in _PROMPT_LEARNING)
    choices = sorted(set(_REGISTRY) | set(peft_names) | {FULL})
    raise PeftkitError(
        f"method.name: unknown method '{name}'.{did_you_mean(name, choices)} Known methods: {', '.join(choices)}."
    )


def method_names() -> list[str]:
    """Every name `method.name` accepts."""
    import peftkit.methods  # noqa: F401

    return sorted(set(_REGISTRY) | set(_peft_names()) | {FULL})


def config_fields(entry: MethodEntry) -> dict[str, dataclasses.Field]:
    """The settable fields of a method's config (what a recipe may put under `method`)."""
    return {f.name: f for f in dataclasses.fields(entry.config_cls()) if f.init and f.name not in _MANAGED}


def check_method_settings(name: str, settings: dict) -> dict:
    """Check `method` settings against the method's config: unknown keys and wrong types are PeftkitErrors.

    Returns the settings with presets applied and values coerced to the declared types.
    """
    from pydantic import TypeAdapter, ValidationError

    if name == FULL:  # full fine-tuning: no PEFT config, no settings
        if settings:
            raise PeftkitError(
                f"method.{next(iter(settings))}: 'full' (full fine-tuning) takes no settings. "
                f"Remove them, or pick a PEFT method."
            )
        return {}
    entry = get_method(name)
    fields = config_fields(entry)
    cls = entry.config_cls()
    hints = typing.get_type_hints(cls)
    out = dict(entry.presets)
    for key, value in settings.items():
        if key not in fields:
            raise PeftkitError(
                f"method.{key}: '{name}' has no setting '{key}'.{did_you_mean(key, fields)} "
                f"Settings of {name}: {', '.join(sorted(fields))}."
            )
        if key in entry.presets and value != entry.presets[key]:
            raise PeftkitError(
                f"method.{key}: '{name}' fixes {key}: {entry.presets[key]!r}, so {value!r} contradicts it. Remove "
                f"method.{key}, or pick the method named for the {key} you want (e.g. lora instead of dora, "
                f"parallel instead of houlsby)."
            )
        try:
            out[key] = TypeAdapter(hints.get(key, typing.Any)).validate_python(value)
        except ValidationError as exc:
            expected = getattr(hints.get(key), "__name__", None) or str(hints.get(key)).replace("typing.", "")
            raise PeftkitError(
                f"method.{key}: expected {expected}, found {value!r} ({type(value).__name__}). "
                f"{exc.errors()[0]['msg']}."
            ) from None
    return out
