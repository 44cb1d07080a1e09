"""Dropout with a cheaper mask on CPU: same distribution, far fewer passes over memory, no serial generator.

torch's CPU dropout draws one Bernoulli sample per element from its (serial) generator: profiled on the
quickstart (MiniLM + LoRA, 2 cores), the 51 dropout layers per step — BERT's hidden/embedding dropouts, the
classifier's, and one per LoRA layer — took ~24% of the training time, more than the attention.

With `peftkit.cpu.kernels` (built on first use with the machine's C compiler) a mask is a hash of one 64-bit key
drawn from torch's generator and the element index: computed in the pass that applies it, on torch's threads,
and recomputed in backward instead of kept. Without the kernels, one 64-bit draw of torch's generator yields four
16-bit uniforms, each compared with round(p·2¹⁶). Either way an element is kept with probability 1 − p (to within
2⁻¹⁷) and scaled by 1/(1 − p), as in `nn.Dropout`; the draws come from torch's global generator, so seeding,
checkpointed RNG state and resume behave as before. The streams differ from torch's own dropout (and from each
other), so runs are equal in distribution, not bit for bit.
"""

from __future__ import annotations

import functools
import math


def mask_key() -> int | None:
    """A key for one kernel-computed mask (one draw from torch's generator), or None where the kernels are not
    available: the caller then takes `keep_mask`'s pure-torch path, which draws from the generator itself."""
    from peftkit.cpu.kernels import draw_key, kernels

    return None if kernels() is None else draw_key()


def keep_mask(shape, p: float):
    """A float32 tensor of `shape`: 1/(1 − p) with probability 1 − p, else 0, independently per element.

    With the kernels: the mask of one fresh key, in one parallel pass. Without them: float arithmetic, not bool
    ops (a bool mask and `masked_fill` cost ~10x a float multiply on CPU), in four
    passes: each 16-bit lane of the 64-bit draws, read as a signed integer u (uniform on [−2¹⁵, 2¹⁵)), becomes a
    float, and with t = round(p·2¹⁶), u + 2¹⁵ − t + 1 is an integer (exact in float32) that clamps to 1 iff
    u + 2¹⁵ ≥ t, else to 0.
    """
    import torch

    key = mask_key()
    if key is not None:
        from peftkit.cpu.kernels import apply_mask

        return apply_mask(torch.empty(shape), None, key, p)
    n = math.prod(shape)
    # (from=-2⁶³, to=None): all 64 bits random (a plain random_() leaves the top bit 0, i.e. one lane 15-bit)
    draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    t = round(p * (1 << 16))
    floats = draws.view(torch.int16)[:n].to(torch.float32)
    return floats.add_(float((1 << 15) - t + 1)).clamp_(0.0, 1.0).mul_(1.0 / (1.0 - p)).view(shape)


def float_mask(keep, p: float, dtype):
    """`keep_mask`'s float mask again, exactly, from its 1-byte copy `keep` (`mask.bool()`): 1.0·(1/(1 − p)) is
    the very float the forward's mask holds (same op on the same value). uint8→float is the cheap cast on CPU."""
    import torch

    return keep.view(torch.uint8).to(dtype).mul_(1.0 / (1.0 - p))


def _draws_here(module, x) -> bool:
    """Whether a training `nn.Dropout` draws its mask with `keep_mask` on `x` (fp32 CPU, 0 < p < 1, not in place)."""
    import torch

    return (
        module.training
        and 0.0 < module.p < 1.0
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not module.inplace
    )


def _forward(self, x):
    import torch

    if not _draws_here(self, x):
        return torch.nn.Dropout.forward(self, x)
    return _masked_scale().apply(x, self.p)


@functools.cache
def _masked_scale():
    """The autograd function y = x·mask. With the kernels it keeps only the mask's key and recomputes the mask in
    backward; without them a 1-byte mask, like torch's own dropout.

    Plain `x * mask` would keep the float32 mask (4 bytes per element) until backward: with ~50 dropouts per
    step that raised the quickstart bench's peak RSS by ~100 MB, above the peer's. float→bool in forward and
    uint8→float in backward are the cheap casts on CPU (~50 µs each for 737k elements in warm memory; a mask costs
    ~1.6 ms). A cast whose output is 1 MB or more lands in fresh pages under `heap.py`'s opt-in threshold and costs
    ~1.3 ms (614k elements), page faults included.
    """
    import torch

    class MaskedScale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, p):
            ctx.p, ctx.key = p, mask_key()
            if ctx.key is not None:
                from peftkit.cpu.kernels import apply_mask

                x = x.contiguous()
                return apply_mask(torch.empty_like(x), x, ctx.key, p)
            mask = keep_mask(x.shape, p)
            if ctx.needs_input_grad[0]:
                ctx.save_for_backward(mask.bool())
            return mask.mul_(x)  # into the mask's own memory: one fresh full-size tensor fewer

        @staticmethod
        def backward(ctx, grad):
            if ctx.key is not None:
                from peftkit.cpu.kernels import apply_mask

                grad = grad.contiguous()
                return apply_mask(torch.empty_like(grad), grad, ctx.key, ctx.p), None
            (kept,) = ctx.saved_tensors
            return float_mask(kept, ctx.p, grad.dtype).mul_(grad), None

    return MaskedScale


def cpu_mask_p(module, x) -> float | None:
    """The drop probability with which `module` would draw its mask with `keep_mask` on input `x`: 0.0 when it
    drops nothing (an `nn.Identity`, p = 0, eval mode), None when it is not a patched dropout of this module."""
    import torch

    if isinstance(module, torch.nn.Identity) or (
        isinstance(module, torch.nn.Dropout) and (not module.training or module.p == 0.0)
    ):
        return 0.0
    if (
        type(module) is torch.nn.Dropout
        and getattr(module.forward, "__func__", None) is _forward
        and _draws_here(module, x)
    ):
        return module.p
    return None


def use_cpu_dropout(model) -> int:
    """Give every `nn.Dropout` of `model` the cheaper CPU mask (other devices keep torch's); returns how many."""
    import types

    import torch

    # As Modules: torch declares `forward` a replaceable attribute there (a Dropout's own is a method).
    dropouts: list[torch.nn.Module] = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    for module in dropouts:
        module.forward = types.MethodType(_forward, module)
    return len(dropouts)
