"""The server tests' app builder (the tiny adapters come from the session fixture `adapter_runs`)."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_app():
    """`make_app({name: path}, **settings)` → (FastAPI app, registry), adapters loaded, nothing listening yet."""

    def build(adapters: dict, **settings):
        from peftkit.serve.app import create_app
        from peftkit.serve.registry import AdapterRegistry
        from peftkit.serve.settings import ServeSettings

        config = ServeSettings(adapters={k: str(v) for k, v in adapters.items()}, **settings)
        registry = AdapterRegistry(
            config.base, adapter_root=config.adapter_root, allow_unchecked=config.allow_unchecked
        )
        registry.load_many(config.adapters)
        return create_app(registry, config), registry

    return build
