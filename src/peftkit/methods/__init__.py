"""PEFT methods: the registry (`registry`), applying a method to a model (`apply`), checks against a model's
architecture before it loads (`checks`), and peftkit's own methods as folders (`bottleneck/`)."""

from peftkit.methods.registry import check_method_settings, get_method, merge_refusal_reason, method_names

__all__ = ["check_method_settings", "get_method", "merge_refusal_reason", "method_names"]
