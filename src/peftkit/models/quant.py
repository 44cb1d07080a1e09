"""bitsandbytes quantization: the load config for a quantized base and the 8-bit / paged optimizers.

The only module that imports bitsandbytes, and only inside functions. Classification heads (`classifier`,
`score`) stay out of quantization: they are trained in full and saved with the adapter, and a 4-bit head cannot
take gradients. So do the layers that feed a head one pooled vector (BERT's pooler, DistilBERT's pre-classifier):
they act on one token per sequence, so full precision costs nothing measurable, and NF4 there cost MiniLM-L6
5 points of test accuracy on Rotten Tomatoes (0.768 vs 0.817 with the pooler kept in float32; fp32 LoRA 0.826).
bitsandbytes >= 0.45 runs NF4/FP4 and int8 on CPU too, so this works without a GPU.
"""

from __future__ import annotations

from peftkit.errors import PeftkitError
from peftkit.models.load import HEAD_MODULES

# Modules never quantized besides the classification heads (HEAD_MODULES): the LM head, which transformers keeps
# in full precision anyway.
LM_HEAD_MODULES = ["lm_head"]
# The pooling layers in front of a classification head. transformers matches these as a prefix or a suffix of
# the Linear's full name, so "pooler.dense" (BERT, "bert.pooler.dense") — a bare "pooler" would not match it.
POOLER_MODULES = ["pooler.dense", "pre_classifier"]


def compute_dtype(name: str, device: str):
    """`auto` → bfloat16 on a GPU that supports it, float32 elsewhere (bf16 matmuls are very slow on CPUs)."""
    import torch

    if name == "auto":
        gpu = str(device).startswith("cuda")
        return torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32
    if str(device) == "cpu" and name in ("bfloat16", "float16"):
        raise PeftkitError(
            f"quantization.compute_dtype: {name} on CPU is many times slower than float32 here and loses precision. "
            f"Set quantization.compute_dtype: auto (float32 on CPU, bfloat16 on a capable GPU)."
        )
    return getattr(torch, name)


def _require_bnb():
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise PeftkitError(
            "quantization: bitsandbytes is not installed, so the base cannot be loaded in 4/8 bits. "
            "Install it (pip install 'bitsandbytes>=0.45'), or remove the quantization block from the recipe."
        ) from None
    return bnb


def bnb_config(
    *,
    task: str,
    device: str,
    bits: int = 4,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: str = "auto",
):
    """transformers' BitsAndBytesConfig for the recipe's quantization block; heads and poolers stay unquantized."""
    from transformers import BitsAndBytesConfig

    _require_bnb()
    skip = [*HEAD_MODULES, *POOLER_MODULES, *LM_HEAD_MODULES] if task == "classification" else LM_HEAD_MODULES
    dtype = _compute_dtype(compute_dtype, device)
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


_compute_dtype = compute_dtype  # the keyword argument of bnb_config shadows the function's name


def bnb_optimizer(name: str, params, *, lr: float, weight_decay: float):
    """bitsandbytes' AdamW8bit (`adamw_8bit`) or PagedAdamW8bit (`paged_adamw_8bit`, pages state to CPU on a GPU)."""
    bnb = _require_bnb()
    classes = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}
    if name not in classes:
        raise PeftkitError(
            f"train.optimizer: '{name}' is not a bitsandbytes optimizer (choose from {', '.join(classes)})."
        )
    return classes[name](params, lr=lr, weight_decay=weight_decay)


def keep_plain_cpu_4bit_path(model) -> int:
    """Keep bitsandbytes' 4-bit layers of `model` on their plain dequantize-and-matmul CPU path; returns how many.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight on the first eval-mode forward (absmax in
    bfloat16, a tiled layout) and keeps it repacked. Checked on 0.50.2: a layer narrower than one quantization
    block (in_features < 64) then fails to reshape, training after an in-loop evaluation fails in the repacked
    matmul's in-place bias add, and predictions differ from those of a CPU without AVX512-BF16. The plain path
    gives the same numbers on every CPU. Set on this model's layers only.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def quantized_modules(model) -> dict[str, str]:
    """Name → class of every bitsandbytes layer in `model` (to check what was and wasn't quantized)."""
    return {
        n: type(m).__name__
        for n, m in model.named_modules()
        if type(m).__name__ in ("Linear4bit", "Linear8bitLt")
    }


def prepare_quantized_for_training(model, *, gradient_checkpointing: bool):
    """PEFT's k-bit preparation, minus its fp32 copy of the frozen vocabulary matrices on a 16-bit GPU run.

    `prepare_model_for_kbit_training` upcasts every non-quantized weight to float32. For norms that is worth it;
    for the frozen input embeddings and lm_head it only doubles their size (0.5 GiB on a 7B Llama, which took
    QLoRA's peak from 0.38x to under 0.35x of 16-bit LoRA on an H200), so they go back to the compute dtype.
    """
    import torch
    from peft import prepare_model_for_kbit_training

    qc = getattr(model.config, "quantization_config", None)
    dtype = (
        qc.get("bnb_4bit_compute_dtype")
        if isinstance(qc, dict)
        else getattr(qc, "bnb_4bit_compute_dtype", None)
    )
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    if dtype in (torch.bfloat16, torch.float16):
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None and not any(p.requires_grad for p in module.parameters()):
                module.to(dtype)
    return model
