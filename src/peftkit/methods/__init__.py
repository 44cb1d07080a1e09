"""PEFT methods: the registry (`registry`), applying a method to a model (`apply`), peftkit's own methods as folders."""

from peftkit.methods.registry import check_method_settings, get_method, method_names

__all__ = ["check_method_settings", "get_method", "method_names"]
