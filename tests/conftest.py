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
