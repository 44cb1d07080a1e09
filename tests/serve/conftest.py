"""Tiny adapters for the server tests, trained once per session: two LoRA (2 and 3 labels), one prefix tuning."""

from __future__ import annotations

import pytest

from tests.helpers import make_texts, train_tiny, write_card


@pytest.fixture(scope="session")
def serve_runs(tiny_bert, tiny_card, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("serve-runs")
    three = write_card(
        tmp / "data3",
        [(t, ["neg", "pos", "meh"][i % 3]) for i, (t, _) in enumerate(make_texts(120))],
        name="three",
        labels=("neg", "pos", "meh"),
    )
    lora = {"name": "lora", "r": 4, "target_modules": ["query", "value"]}
    return {
        "lora": train_tiny(tmp, "lora", model=tiny_bert, card=tiny_card, epochs=1, method=lora),
        "lora3": train_tiny(
            tmp,
            "lora3",
            model=tiny_bert,
            card=three,
            epochs=1,
            method={"name": "lora", "r": 8, "target_modules": ["query", "key", "value", "dense"]},
        ),
        "prefix": train_tiny(
            tmp,
            "prefix",
            model=tiny_bert,
            card=tiny_card,
            epochs=1,
            method={"name": "prefix_tuning", "num_virtual_tokens": 4},
        ),
    }


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
