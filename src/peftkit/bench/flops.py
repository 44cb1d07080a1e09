"""Training FLOPs of a (possibly adapted) model, and this machine's measured fp32 matmul peak.

The formula (stated in every bench table), with T the real, non-pad tokens processed:

    FLOPs = (4·N + 2·N_train) · T

- N: weights of every matmul layer (`nn.Linear`, GPT-2's `Conv1D`), adapter layers included. Embeddings are
  look-ups, not matmuls, so they are left out. A forward pass costs 2·N multiply-adds per token.
- Backward costs 2·N per token for the gradients with respect to layer inputs (needed to reach any trainable
  parameter below) plus 2·N_train for the weight gradients, N_train being the *trainable* matmul weights.
- Full fine-tuning (N_train = N) gives the familiar 6·N·T; a frozen base with a small adapter ≈ 4·N·T.
- Left out, all small for short classification inputs: attention's score and mixing matmuls
  (4·layers·hidden·seq per token, ~1% at 30 tokens in MiniLM), element-wise work (norms, activations, IA³'s
  scaling, softmax), the input gradients of the lowest layer (not needed when the embeddings are frozen), and
  the fact that the pooler and classifier act on one token per sequence, not every token.
- Only real tokens count, so the MFU is *useful* work: compute spent on padding lowers it.
"""

from __future__ import annotations

import time


def matmul_params(model) -> tuple[int, int]:
    """(N, N_train): weights of all matmul layers, and of the trainable ones."""
    import torch
    from transformers.pytorch_utils import Conv1D

    total = trainable = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            n = module.weight.numel()
            total += n
            trainable += n if module.weight.requires_grad else 0
    return total, trainable


def train_flops(n_matmul: int, n_trainable: int, tokens: int) -> float:
    """Training FLOPs for `tokens` real tokens: (4·N + 2·N_train)·T (see the module docstring)."""
    return float((4 * n_matmul + 2 * n_trainable) * tokens)


FORMULA = (
    "train FLOPs = (4·N + 2·N_train)·T: N = matmul weights (Linear layers, adapters included, embeddings "
    "excluded), N_train = the trainable ones, T = real (non-pad) training tokens; forward 2N, input-gradient "
    "backward 2N, weight gradients 2·N_train (full fine-tuning: 6·N·T). Attention score/mix matmuls and "
    "element-wise ops are left out (~1% here)."
)


def matmul_peak(size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best matmul throughput (FLOP/s) of a `size`² × `size`² product: fp32 with torch's current thread setting on
    CPU, bf16 on a GPU (what training there computes in)."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.mm(a, b)  # warm-up: first call allocates and picks kernels
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best
