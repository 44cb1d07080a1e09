"""A leaner forward for PEFT's plain LoRA `Linear` layers: same numbers, fewer passes over the activations.

PEFT computes `result + lora_B(lora_A(dropout(x))) * scaling`: on top of the two small matmuls that is a
full-size scaled copy and a full-size sum, each a fresh tensor. On CPU, where these layers are memory-bound, that
made an active (unmerged) adapter 1.2–1.35× slower than the bare base. Here the low-rank product is accumulated
into the base output in one GEMM (`addmm_`, alpha = scaling), so no full-size temporary is made. Autograd
handles the in-place update (the base output is not saved for backward), so training uses it too.

Anything this path does not cover — DoRA and other variants, mixed-adapter batches (`adapter_names=`), merged or
disabled adapters, a dtype mismatch (autocast, quantized bases, which are a different class anyway) — falls
back to PEFT's own forward, call by call.
"""

from __future__ import annotations

import types


def _fast_forward(self, x, *args, **kwargs):
    from peft.tuners.lora.layer import Linear

    active = [a for a in self.active_adapters if a in self.lora_A]
    if (args or kwargs or self.disable_adapters or self.merged or any(a in self.lora_variant for a in active)
            or any(x.dtype != self.lora_A[a].weight.dtype for a in active)):
        return Linear.forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    if result.dtype != x.dtype:
        return Linear.forward(self, x, *args, **kwargs)
    result = result.contiguous()
    flat = result.view(-1, result.shape[-1])
    for name in active:
        low = self.lora_A[name](self.lora_dropout[name](x))
        flat.addmm_(low.reshape(-1, low.shape[-1]), self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return result


def use_fast_lora(model) -> int:
    """Give every plain PEFT LoRA `Linear` layer of `model` the lean forward; returns how many layers got it.

    Only the exact class `peft.tuners.lora.layer.Linear` is touched (bitsandbytes / other LoRA layer classes keep
    PEFT's forward). Safe to call twice.
    """
    from peft.tuners.lora.layer import Linear

    n = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = types.MethodType(_fast_forward, module)
            n += 1
    return n
