"""A leaner forward for PEFT's plain LoRA `Linear` layers: same numbers, fewer passes over the activations.

PEFT computes `result + lora_B(lora_A(dropout(x))) * scaling`: on top of the two small matmuls that is a
full-size scaled copy and a full-size sum, each a fresh tensor. On CPU, where these layers are memory-bound, that
made an active (unmerged) adapter 1.2–1.35× slower than the bare base. Here the low-rank product is accumulated
into the base output in one GEMM (`addmm_`, alpha = scaling), so no full-size temporary is made.

Training on a frozen fp32 base on CPU goes one step further: the whole layer (dropout mask, both products, base
GEMM) is one autograd function with a hand-written backward. Autograd's handling of the in-place update above
copied the full-size gradient two or three times per layer (`CopySlices`); this backward makes no full-size copy,
keeps the mask as 1 byte per element (like `peftkit.cpu.dropout`), and skips the input gradient where nothing below
needs it (the lowest layer, above frozen embeddings). Its mask is the one `peftkit.cpu.dropout` draws, from the same
generator at the same point, so a run gives the same losses. Measured on the quickstart (2,000 snippets, 2 cores):
39.9 → 43.6 ex/s with a 1 MB mmap threshold (`train.release_memory`), 47.7 → 49.7 without it (one run each).

With `peftkit.cpu.kernels` (compiled on first use; see there) the fused function goes further. After the base
GEMM, one pass over the rows of x and y applies the dropout mask, takes the A-product and adds bias and B-product.
In backward, after the input-gradient GEMM, one pass over the rows of x, the output gradient and the input gradient
gives all four rank-r products and the masked input-gradient term. What stays alive until backward is x itself (one
tensor for q, k and v), the rank-r product and the mask as bits (d/8 bytes a row), not a dropped copy and a byte
mask per layer. MKL ran the rank-r products at 14-50 GFLOP/s. Without the kernels the torch path below runs, with
`peftkit.cpu.dropout`'s masks.

Anything this path does not cover — DoRA and other variants, mixed-adapter batches (`adapter_names=`), merged or
disabled adapters, a dtype mismatch (autocast, quantized bases, which are a different class anyway) — falls
back to PEFT's own forward, call by call.
"""

from __future__ import annotations

import functools
import types


def _fast_forward(self, x, *args, **kwargs):
    import torch
    from peft.tuners.lora.layer import Linear

    active = [a for a in self.active_adapters if a in self.lora_A]
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or any(a in self.lora_variant for a in active)
        or any(x.dtype != self.lora_A[a].weight.dtype for a in active)
    ):
        return Linear.forward(self, x, *args, **kwargs)
    if len(active) == 1 and torch.is_grad_enabled():
        fused = _fused_args(self, active[0], x)
        if fused is not None:
            return _function().apply(x, *fused)
    result = self.base_layer(x)
    if result.dtype != x.dtype:
        return Linear.forward(self, x, *args, **kwargs)
    result = result.contiguous()
    flat = result.view(-1, result.shape[-1])
    for name in active:
        low = self.lora_A[name](self.lora_dropout[name](x))
        flat.addmm_(low.reshape(-1, low.shape[-1]), self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return result


def _fused_args(layer, name: str, x) -> tuple | None:
    """(A, B, W, bias, scaling, p) for the fused training function, or None where it does not apply."""
    import torch

    from peftkit.cpu.dropout import cpu_mask_p

    base, a, b = layer.base_layer, layer.lora_A[name], layer.lora_B[name]
    if (
        type(base) is not torch.nn.Linear
        or base.weight.requires_grad
        or (base.bias is not None and base.bias.requires_grad)
        or b.bias is not None
        or x.device.type != "cpu"
        or not x.dtype == base.weight.dtype == a.weight.dtype == torch.float32
        or not all(t is None or t.is_contiguous() for t in (a.weight, b.weight, base.bias))
    ):  # read in place
        return None
    p = cpu_mask_p(layer.lora_dropout[name], x)
    return None if p is None else (a.weight, b.weight, base.weight, base.bias, layer.scaling[name], p)


@functools.cache
def _function():
    """y = x·Wᵀ + bias + scaling·(dropout(x)·Aᵀ)·Bᵀ with W and bias frozen, as one autograd function."""
    import torch

    from peftkit.cpu import dropout  # looked up per call: one place draws every mask
    from peftkit.cpu.kernels import kernels, mask_args

    class LoraLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, a, b, weight, bias, scaling, p):
            x2 = x.reshape(-1, x.shape[-1])
            ctx.scaling, ctx.p = scaling, p
            ctx.kernel = kernels() is not None  # backward takes the same path, whatever changes in between
            ctx.key = dropout.mask_key() if p and ctx.kernel else None
            if ctx.kernel:
                # one pass over the rows of x and y for the mask, the A-product, bias and B-product; kept for
                # backward: x (shared by q/k/v), the rank-r product and the mask as bits
                x2 = x2.contiguous()
                y = torch.mm(x2, weight.t())
                low = x2.new_empty(x2.shape[0], a.shape[0])
                # d/8 bytes a row, so backward need not hash the mask again
                bits = torch.empty(x2.shape[0], (x2.shape[1] + 7) // 8, dtype=torch.uint8) if p else None
                _check_lora("lora_forward", x2, a, b, low, bias, bits, y=y)
                kernels().lora_forward(
                    x2.data_ptr(),
                    x2.shape[0],
                    x2.shape[1],
                    a.data_ptr(),
                    a.shape[0],
                    low.data_ptr(),
                    int(bool(p)),
                    *mask_args(ctx.key or 0, p or 0.0),
                    y.data_ptr(),
                    y.shape[1],
                    b.data_ptr(),
                    None if bias is None else bias.data_ptr(),
                    scaling,
                    None if bits is None else bits.data_ptr(),
                )
                ctx.save_for_backward(x2, low, a, b, weight, bits)
                return y.view(*x.shape[:-1], y.shape[-1])
            y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
            keep = None
            dropped = x2
            if p:
                mask = dropout.keep_mask(x2.shape, p)
                keep = mask.bool()  # 1 byte per element until backward
                dropped = mask.mul_(x2)  # into the mask's memory: one fresh full-size tensor fewer
            low = torch.mm(a, dropped.t()).t()  # (A·xᵀ)ᵀ: MKL's fast orientation for a rank-r product
            ctx.save_for_backward(dropped, low, a, b, weight, keep)
            y.addmm_(low, b.t(), alpha=scaling)
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx, grad):
            need_x, need_a, need_b = ctx.needs_input_grad[:3]
            g2 = grad.reshape(-1, grad.shape[-1])
            if ctx.kernel:
                x2, low, a, b, weight, bits = ctx.saved_tensors
                g2 = g2.contiguous()
                g_x = torch.mm(g2, weight) if need_x else None
                g_a, g_b = torch.empty_like(a), torch.empty_like(b)
                _check_lora("lora_backward", x2, a, b, low, None, bits, y=g2, g_x=g_x)
                kernels().lora_backward(
                    x2.data_ptr(),
                    g2.data_ptr(),
                    g2.shape[0],
                    x2.shape[1],
                    g2.shape[1],
                    a.data_ptr(),
                    b.data_ptr(),
                    low.data_ptr(),
                    a.shape[0],
                    ctx.scaling,
                    None if g_x is None else g_x.data_ptr(),
                    g_a.data_ptr(),
                    g_b.data_ptr(),
                    int(ctx.key is not None),
                    *mask_args(ctx.key or 0, ctx.p or 0.0),
                    None if bits is None else bits.data_ptr(),
                )
            else:
                dropped, low, a, b, weight, keep = ctx.saved_tensors
                # Rank-r products with the r-sized side on the left, transposed back as views: timed alone at
                # 384-1,088 tokens, 2-3x (g_low) and 3-5x (g_b) faster in MKL than g2·B and g2ᵀ·low.
                g_low = torch.mm(b.t(), g2.t()).t().mul_(ctx.scaling)  # gradient at the low-rank activations
                g_b = torch.mm(low.t(), g2).t().mul_(ctx.scaling) if need_b else None
                g_a = torch.mm(g_low.t(), dropped) if need_a else None
                g_x = None
                if need_x:
                    g_x = torch.mm(g2, weight)
                    if keep is None:
                        g_x.addmm_(g_low, a)
                    else:
                        g_x.addcmul_(torch.mm(g_low, a), dropout.float_mask(keep, ctx.p, g_x.dtype))
            if g_x is not None:
                g_x = g_x.view(*grad.shape[:-1], g_x.shape[-1])
            return g_x, g_a if need_a else None, g_b if need_b else None, None, None, None, None

    return LoraLinear


def use_fast_lora(model) -> int:
    """Give every plain PEFT LoRA `Linear` layer of `model` the lean forward; returns how many layers got it.

    Only the exact class `peft.tuners.lora.layer.Linear` is touched (bitsandbytes / other LoRA layer classes keep
    PEFT's forward). Safe to call twice. Where PEFT's layer lacks an attribute this forward reads, no layer is
    touched and a warning says which (`peftkit.cpu.upstream`).
    """
    import torch
    from peft.tuners.lora.layer import Linear

    from peftkit.cpu.upstream import LORA_ATTRIBUTES, warn_off

    # As Modules: torch declares `forward` a replaceable attribute there (PEFT's Linear's own is a method).
    layers: list[torch.nn.Module] = [m for m in model.modules() if type(m) is Linear]
    missing = [a for a in LORA_ATTRIBUTES if layers and not hasattr(layers[0], a)]
    if missing:
        warn_off("fused LoRA layer", f"peft's LoRA Linear has no attribute {missing[0]!r}")
        return 0
    for module in layers:
        module.forward = types.MethodType(_fast_forward, module)
    return len(layers)


def _check_lora(kernel: str, x, a, b, low, bias, bits, *, y, g_x=None) -> None:
    """The shapes the LoRA kernels index by: x (n, d), A (r, d), B (out, r), low (n, r), y (n, out), bias (out,),
    mask bits (n, ⌈d/8⌉) and the input gradient (n, d), all contiguous CPU tensors."""
    import torch

    from peftkit.cpu.kernels import expect

    (n, d), r, width = x.shape, a.shape[0], b.shape[0]
    for name, t, shape in (
        ("x", x, (n, d)),
        ("A", a, (r, d)),
        ("B", b, (width, r)),
        ("low", low, (n, r)),
        ("y", y, (n, width)),
        ("bias", bias, (width,)),
        ("input gradient", g_x, (n, d)),
    ):
        if t is not None:
            expect(kernel, name, t, shape)
    if bits is not None:
        expect(kernel, "mask bits", bits, (n, (d + 7) // 8), dtype=torch.uint8)
