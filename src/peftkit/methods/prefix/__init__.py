"""Prefix tuning (Li & Liang 2021): PEFT's config and folder format, peftkit's own implementation for sequence
classification (`model`), which works on every supported transformers version; causal-LM prefix tuning stays
PEFT's. Registered here as the `prefix_tuning` entry of peftkit's method registry."""

from importlib.metadata import version

from peftkit.methods.registry import PROMPT_REFUSAL, MethodEntry, Suggestion, register


def peft_generation_drops_prefix() -> bool:
    """Whether PEFT's causal-LM prefix tuning generates without its prefixes on the installed stack.

    From transformers 5.24 the models take their cache as `cache`; peft 0.21 still hands the prefixes to `generate`
    as `past_key_values`, which transformers then ignores for the `cache` generate builds itself (a FutureWarning
    says "Using `cache` ... ignoring deprecated `past_key_values`"): the text comes from the base model alone.
    Training and evaluation (the forward pass) are not affected. Checked on transformers 5.23.0-5.25.0 with peft
    0.21.2; tests/methods/test_prefix.py fails once a peft release fixes it, so this can name that release.
    """
    from packaging.version import Version

    return Version(version("transformers")) >= Version("5.24") and Version(version("peft")) < Version("0.22")


def _implementation():
    from peftkit.methods.prefix import model

    return model


register(
    MethodEntry(
        "prefix_tuning",
        "PREFIX_TUNING",
        "Learned key/value prefixes in every attention layer (Li & Liang 2021).",
        prompt_learning=True,
        merge_refusal=PROMPT_REFUSAL,
        gradient_checkpointing_refusal="the learned key/value prefixes travel through the model's cache, which "
        "checkpointed layers drop",
        # Measured on MiniLM, 1,281 validation snippets, 2,000-example budget, seeds 42 / 7: with mean pooling, 20
        # prefixes at lr 3e-2 reached 0.767 / 0.765 (at 1e-2 0.754 / 0.744; 128 prefixes at 1e-2 0.753 / 0.759).
        # With the [CLS] pooler, which mean-pooling encoders never trained, 20 prefixes stay at the majority class
        # (0.578), so there prefix tuning also trains the pooler and takes 128 prefixes: 0.717 / 0.716.
        suggested=Suggestion({"num_virtual_tokens": 20}, learning_rate=3e-2),
        suggested_cls_pooler=Suggestion(
            {"num_virtual_tokens": 128, "modules_to_save": ["pooler"]}, learning_rate=1e-2
        ),
        implementation=_implementation,
        implementation_tasks=("classification",),
    )
)
