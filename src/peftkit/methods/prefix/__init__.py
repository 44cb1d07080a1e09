"""Prefix tuning (Li & Liang 2021): PEFT's config and folder format, peftkit's own implementation for sequence
classification (`model`), which works on every supported transformers version; causal-LM prefix tuning stays
PEFT's. Registered here as the `prefix_tuning` entry of peftkit's method registry."""

from peftkit.methods.registry import PROMPT_REFUSAL, MethodEntry, Suggestion, register


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
