"""Shared fixtures (the builders behind them are in tests/helpers.py). No network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import (
    build_pretrained_decoder,
    build_tiny_bert,
    build_tiny_decoder,
    make_texts,
    train_tiny,
    write_card,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    # Tiny models gain nothing from threads, and two threaded processes on 2 cores slow each other down badly.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(params=["kernels", "torch"])
def mask_backend(request, monkeypatch) -> str:
    """Run a test on both CPU back ends: peftkit's compiled kernels, and the pure-torch path used without them."""
    from peftkit.cpu.kernels import kernels

    if request.param == "torch":
        monkeypatch.setenv("PEFTKIT_CPU_KERNELS", "0")
    elif kernels() is None:
        pytest.skip("no C compiler with OpenMP here: peftkit runs its pure-torch paths")
    return request.param


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("models") / "tiny-gpt2", "gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def pretrained_gpt2(tmp_path_factory) -> Path:
    return build_pretrained_decoder(tmp_path_factory.mktemp("models") / "pretrained-gpt2", "gpt2")


@pytest.fixture(scope="session")
def pretrained_llama(tmp_path_factory) -> Path:
    return build_pretrained_decoder(tmp_path_factory.mktemp("models") / "pretrained-llama", "llama")


@pytest.fixture(scope="session")
def tiny_card(tmp_path_factory) -> Path:
    return write_card(tmp_path_factory.mktemp("data"), make_texts(200))


@pytest.fixture(scope="session")
def adapter_runs(tiny_bert, tiny_card, tmp_path_factory) -> dict:
    """Tiny adapters on tiny BERT for the mixed-batch and serving tests (one epoch each): LoRA on query/value
    r=4 (2 labels), LoRA on every linear layer r=8 (3 labels), DoRA, prefix tuning."""
    tmp = tmp_path_factory.mktemp("adapter-runs")
    three = write_card(
        tmp / "data3",
        [(t, ["neg", "pos", "meh"][i % 3]) for i, (t, _) in enumerate(make_texts(120))],
        name="three",
        labels=("neg", "pos", "meh"),
    )
    methods = {
        "lora": ({"name": "lora", "r": 4, "target_modules": ["query", "value"]}, tiny_card),
        "lora3": ({"name": "lora", "r": 8, "target_modules": ["query", "key", "value", "dense"]}, three),
        "dora": ({"name": "lora", "use_dora": True}, tiny_card),
        "prefix": ({"name": "prefix_tuning", "num_virtual_tokens": 4}, tiny_card),
    }
    return {
        name: train_tiny(tmp, name, model=tiny_bert, card=card, epochs=1, method=method)
        for name, (method, card) in methods.items()
    }
