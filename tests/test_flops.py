"""The FLOP formula on models whose FLOPs are known by hand, checked against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch

from peftkit.bench.flops import matmul_params, matmul_peak, train_flops


def _stack(freeze: str | None = None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    if freeze is not None:
        model[0 if freeze == "first" else 2].requires_grad_(False)
    return model


def test_counts_by_hand():
    assert matmul_params(_stack()) == (8 * 16 + 16 * 4, 8 * 16 + 16 * 4)  # biases are not matmul weights
    assert matmul_params(_stack("first")) == (192, 64)
    emb = torch.nn.Sequential(torch.nn.Embedding(100, 8), torch.nn.Linear(8, 8))
    assert matmul_params(emb) == (64, 64)  # embeddings are look-ups
    # Full fine-tuning: 6·N·T; 10 tokens through the 192-weight stack.
    assert train_flops(192, 192, 10) == 6 * 192 * 10
    # Frozen base: 4·N·T + 2·N_train·T.
    assert train_flops(192, 64, 10) == 4 * 192 * 10 + 2 * 64 * 10


def _counted(model, tokens: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(torch.randn(tokens, 8)).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("freeze", [None, "last"])
def test_formula_matches_torch_flop_counter(freeze):
    """torch counts exactly what ran. The formula also counts the lowest layer's input gradient (2·8·16 per
    token), which autograd skips because the input needs none: that is the only difference."""
    model, tokens = _stack(freeze), 10
    assert _counted(model, tokens) == train_flops(*matmul_params(model), tokens) - 2 * 8 * 16 * tokens


def test_frozen_layers_below_the_lowest_adapter_cost_no_backward():
    """With only the top layer trainable, backward stops there: forward 2·192 + weight gradient 2·64 per token.
    The formula assumes input gradients all the way down (adapters in every layer), so it over-counts here."""
    model, tokens = _stack("first"), 10
    assert _counted(model, tokens) == (2 * 192 + 2 * 64) * tokens
    assert train_flops(*matmul_params(model), tokens) > _counted(model, tokens)


def test_matmul_peak_is_plausible():
    peak = matmul_peak(size=256, repeats=2)
    assert 1e8 < peak < 1e14  # FLOP/s of a CPU core or several
