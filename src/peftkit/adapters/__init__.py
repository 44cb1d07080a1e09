"""Adapter bundles: PEFT's folder format plus peftkit's fingerprint (`bundle`), the adapter card (`card`) and
publishing a run (`publish`)."""
