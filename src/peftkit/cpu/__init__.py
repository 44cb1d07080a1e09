"""The optional CPU training fast path, behind one call: `enable(model)`.

Training on CPU (and only there) calls `enable` on the model it is about to train. It gives that one model
object the cheaper dropout masks (`dropout`), the lean training attention for encoders (`attention`) and the
fused LoRA layer (`lora`), each with compiled kernels (`kernels` + `csrc/`) where a C compiler is available and a
pure-torch path otherwise. Nothing here is applied at adapter load, in inference, on a GPU, or to any class:
each change is an attribute of one module instance, and each falls back to the stock forward call by call
whenever its conditions (training, fp32, CPU, ...) do not hold.
"""

from __future__ import annotations


def enable(model) -> dict[str, int]:
    """Switch `model` (about to train on CPU) to the CPU fast path; returns how many modules each part took."""
    from peftkit.cpu.attention import use_cpu_attention
    from peftkit.cpu.dropout import use_cpu_dropout
    from peftkit.cpu.lora import use_fast_lora

    return {
        "dropout": use_cpu_dropout(model),
        "attention": int(use_cpu_attention(model)),
        "lora": use_fast_lora(model),
    }
