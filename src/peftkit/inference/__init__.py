"""Using adapters: batched forward passes, metrics, predict, generate, several adapters on one base
(`adapter_set`) and merging into the base."""
