"""Method registry: one `MethodEntry` per method says what the method is; every consumer reads it.

Any PEFT method is reachable by its PEFT name (lower case: `lora`, `ia3`, `loha`, `prefix_tuning`, …) with its
settings passed through to PEFT's own config dataclass. The methods peftkit knows more about are described
below (default targets per architecture, mergeability, Conv1D support, suggested settings); a few names are
presets over PEFT configs (`dora`, `rslora`). peftkit's own methods live in their own folder under `methods/`
and register their entry when the folder is imported (see `_import_method_folders`). CONTRIBUTING.md lists the
steps for adding a method.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
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
FULL = "full"  # full fine-tuning, the quality reference of `peftkit bench`: every parameter trains
TASK_TYPES = {"classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}

PROMPT_REFUSAL = (
    "it adds learned virtual tokens (or key/value prefixes) to every input instead of changing weights, so there "
    "is nothing to fold into the base model"
)


@dataclass(frozen=True)
class Suggestion:
    """Settings and learning rate that work for a method when the recipe is written for another one (bench rows)."""

    settings: dict = field(default_factory=dict)
    learning_rate: float | None = None


@dataclass(frozen=True)
class MethodEntry:
    """Everything peftkit knows about one method, in one place."""

    name: str
    peft_type: str
    """PEFT's `PeftType` name, written as `peft_type` in adapter_config.json."""
    doc: str = ""
    config: Callable[[], type] | None = None
    """Lazy import of the config dataclass; None: PEFT's config for `peft_type` (importing peft costs seconds)."""
    presets: dict = field(default_factory=dict)
    """Settings the name fixes (dora = LoRA with use_dora: true)."""
    defaults: Callable[[dict, int | None], None] | None = None
    """Fills settings the recipe leaves out: `defaults(settings, total_steps)`, in place."""
    targets: dict[str, list[str]] | None = None
    """Default `target_modules` per model type; None (or a model type not listed): the method's own default."""
    prompt_learning: bool = False
    merge_refusal: str | None = None
    """Why the method cannot be merged into the base weights (a clause); None: it can."""
    conv1d: bool = False
    """Whether its layers wrap transformers' Conv1D (GPT-2's c_attn / c_proj / c_fc)."""
    gradient_checkpointing_refusal: str | None = None
    """Why it cannot train with gradient checkpointing; None: it can."""
    suggested: Suggestion = field(default_factory=Suggestion)
    suggested_cls_pooler: Suggestion | None = None
    """What it needs instead when a BERT-style classifier reads the [CLS] pooler (`model.pooling: model`)."""
    implementation: Callable[[], typing.Any] | None = None
    """Lazy import of peftkit's own implementation (an object with `apply(model, peft_config)` and
    `load(model, adapter_dir)`), used instead of PEFT's for the tasks in `implementation_tasks`."""
    implementation_tasks: tuple[str, ...] = ()

    @property
    def mergeable(self) -> bool:
        return self.merge_refusal is None

    def config_cls(self) -> type:
        """The config dataclass (PEFT's, or peftkit's of the same shape)."""
        if self.config is not None:
            return self.config()
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
        from peft.utils import PeftType

        return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType[self.peft_type]]

    def own_implementation(self, task: str):
        """peftkit's implementation of this method for `task`, or None where PEFT's is used."""
        return self.implementation() if self.implementation and task in self.implementation_tasks else None

    def suggestion(self, pooling: str) -> Suggestion:
        """The settings / learning rate to bench this method with on a classifier with `pooling`."""
        return (self.suggested_cls_pooler if pooling == "model" else None) or self.suggested


_REGISTRY: dict[str, MethodEntry] = {}


def register(entry: MethodEntry) -> None:
    """Add a method (peftkit's own method folders call this when imported)."""
    _REGISTRY[entry.name] = entry


def _lora_defaults(settings: dict, total_steps: int | None) -> None:
    settings.setdefault("r", 16)
    settings.setdefault("lora_alpha", 2 * settings["r"])
    settings.setdefault("lora_dropout", 0.1)


# AdaLoRA's schedule needs the run length; validation (before the data is read) uses this stand-in.
_VALIDATION_STEPS = 10_000


def _adalora_defaults(settings: dict, total_steps: int | None) -> None:
    settings.setdefault("total_step", total_steps or _VALIDATION_STEPS)


# Where the LoRA family goes by default: every linear layer in attention and the feed-forward block, and for
# BERT the pooler too ("dense" matches it). The PEFT docs' query/value-only default leaves MiniLM, a mean-pooling
# sentence embedder whose [CLS]/pooler path was never trained, stuck on the majority class (0.58 accuracy).
LINEAR_TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
# LayerNorm tuning where PEFT has no default for the architecture.
LAYERNORM_TARGETS = {"bert": ["LayerNorm"], "roberta": ["LayerNorm"], "gpt2": ["ln_1", "ln_2", "ln_f"]}


class _LoraShared(typing.TypedDict):
    """The `MethodEntry` fields the LoRA presets share."""

    targets: dict[str, list[str]]
    conv1d: bool
    defaults: Callable[[dict, int | None], None]


# Methods without an entry here keep PEFT's own per-architecture defaults, which follow their papers (IA3: keys,
# values and the feed-forward output). Conv1D support was probed on peft 0.21.2 (tests/methods/test_checks.py
# re-probes a few against PEFT itself).
_LORA: _LoraShared = {"targets": LINEAR_TARGETS, "conv1d": True, "defaults": _lora_defaults}
for _entry in (
    MethodEntry("lora", "LORA", "Low-rank adaptation (Hu et al. 2021).", **_LORA),
    MethodEntry(
        "dora", "LORA", "Weight-decomposed LoRA (Liu et al. 2024).", presets={"use_dora": True}, **_LORA
    ),
    MethodEntry(
        "rslora",
        "LORA",
        "Rank-stabilised LoRA: scaling alpha/sqrt(r) (Kalajievski 2023).",
        presets={"use_rslora": True},
        **_LORA,
    ),
    MethodEntry(
        "adalora",
        "ADALORA",
        "LoRA with ranks reallocated during training (Zhang et al. 2023).",
        targets=LINEAR_TARGETS,
        conv1d=True,
        defaults=_adalora_defaults,
    ),
    MethodEntry("loha", "LOHA", "Low-rank Hadamard product (Hyeon-Woo et al. 2022).", targets=LINEAR_TARGETS),
    MethodEntry("lokr", "LOKR", "Low-rank Kronecker product (Yeh et al. 2023).", targets=LINEAR_TARGETS),
    MethodEntry("oft", "OFT", "Orthogonal fine-tuning (Qiu et al. 2023).", targets=LINEAR_TARGETS),
    MethodEntry(
        "boft", "BOFT", "Butterfly orthogonal fine-tuning (Liu et al. 2024).", targets=LINEAR_TARGETS
    ),
    MethodEntry(
        "vera",
        "VERA",
        "Shared random projections, trained scaling vectors.",
        targets=LINEAR_TARGETS,
        conv1d=True,
    ),
    MethodEntry(
        "ia3",
        "IA3",
        "Learned rescaling of keys, values and feed-forward activations (Liu et al. 2022).",
        conv1d=True,
        suggested=Suggestion(learning_rate=1e-2),
    ),
    MethodEntry("ln_tuning", "LN_TUNING", "Train the LayerNorm weights only.", targets=LAYERNORM_TARGETS),
    MethodEntry(
        "prompt_tuning",
        "PROMPT_TUNING",
        "Learned virtual input tokens (Lester et al. 2021).",
        prompt_learning=True,
        merge_refusal=PROMPT_REFUSAL,
        suggested=Suggestion(learning_rate=3e-2),
    ),
    MethodEntry(
        "p_tuning",
        "P_TUNING",
        "Virtual tokens from a prompt encoder (Liu et al. 2021).",
        prompt_learning=True,
        merge_refusal=PROMPT_REFUSAL,
    ),
    *(
        MethodEntry(name, name.upper(), prompt_learning=True, merge_refusal=PROMPT_REFUSAL)
        for name in ("multitask_prompt_tuning", "adaption_prompt", "cpt")
    ),
    *(
        MethodEntry(name, name.upper(), conv1d=True)
        for name in (
            "frod",
            "pvera",
            "fourierft",
            "unilora",
            "randlora",
            "hira",
            "osf",
            "gralora",
            "tinylora",
            "deft",
        )
    ),
):
    register(_entry)


@functools.cache
def _import_method_folders() -> None:
    """Import every method folder under `peftkit/methods/` once: each registers its own entry."""
    import peftkit.methods

    for module in pkgutil.iter_modules(peftkit.methods.__path__):
        if module.ispkg:
            importlib.import_module(f"peftkit.methods.{module.name}")


def _peft_names() -> list[str]:
    from peft.utils import PeftType

    return [t.value.lower() for t in PeftType]


def _passthrough(name: str) -> MethodEntry:
    """An entry for a PEFT method peftkit has no entry for: PEFT's defaults, prompt learning as PEFT says."""
    from peft.config import PromptLearningConfig

    entry = MethodEntry(name, name.upper())
    if issubclass(entry.config_cls(), PromptLearningConfig):
        entry = dataclasses.replace(entry, prompt_learning=True, merge_refusal=PROMPT_REFUSAL)
    return entry


def get_method(name: str) -> MethodEntry:
    """The entry for `name`; PEFT methods without an entry are passed through by their PEFT name."""
    _import_method_folders()
    if name in _REGISTRY:
        return _REGISTRY[name]
    peft_names = _peft_names()
    if name in peft_names:
        return _passthrough(name)
    choices = sorted(set(_REGISTRY) | set(peft_names) | {FULL})
    raise PeftkitError(
        f"method.name: unknown method '{name}'.{did_you_mean(name, choices)} Known methods: {', '.join(choices)}."
    )


def method_names() -> list[str]:
    """Every name `method.name` accepts."""
    _import_method_folders()
    return sorted(set(_REGISTRY) | set(_peft_names()) | {FULL})


def registered() -> list[MethodEntry]:
    """The methods peftkit has an entry for (not the PEFT pass-throughs)."""
    _import_method_folders()
    return list(_REGISTRY.values())


def merge_refusal_reason(name: str) -> str | None:
    """Why method `name` cannot be merged into its base weights, as a sentence, or None when it can."""
    entry = get_method(name)
    if entry.mergeable:
        return None
    return (
        f"{entry.name} cannot be merged: {entry.merge_refusal}. Keep the adapter separate (load it with "
        f"`peftkit eval`/`predict`), or train a LoRA-family method if you need a merged model."
    )


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
    hints = typing.get_type_hints(entry.config_cls())
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
