#!/usr/bin/env python
"""QLoRA checks on one CUDA GPU (H100/H200), offline, in well under 8 minutes; run by tests/gpu/test_gpu_checks.py
(`pytest -m gpu`). Models are built from configs with random weights (nothing is downloaded): memory and parity do
not depend on the weights being pretrained.
  1. peak GPU memory of QLoRA (4-bit NF4 base, double quant, bf16 compute, peftkit's prepare_quantized_for_training,
     LoRA r=16 on every linear layer, gradient checkpointing, 8-bit AdamW) against 16-bit LoRA (bf16 base,
     same LoRA, same batch) on Llama-2-7B's shape: target ≤ 0.35×; QLoRA's loss must fall on a repeated batch.
     Peak = torch.cuda.max_memory_allocated from load to the last step (8-bit AdamW, not paged, so its state is
     counted).
  2. merge parity through peftkit's own merge (`merge_adapter`) on a ~150M Llama: a QLoRA-trained adapter merged
     into a float32 reload of the base; max |logit diff| vs the adapter on the float32 base ≤ 1e-3 and top-1
     agreement 1.0; agreement with the adapter on the 4-bit base it was trained on is reported.
With DEVICE = "cpu" the same checks run on the CPU with a tiny model (a check of this code where there is no GPU).
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import time
from pathlib import Path

SIZES = {  # hidden, intermediate, layers, heads, kv heads, tied embeddings; vocab 32000
    "tiny": (64, 128, 2, 4, 2, True),  # --smoke-cpu only
    "150m": (768, 2048, 12, 12, 4, True),
    "1b": (2048, 5632, 16, 16, 8, True),
    "3b": (3072, 8192, 26, 24, 8, True),
    "7b": (4096, 11008, 32, 32, 32, False),  # Llama-2-7B's shape
}
VOCAB = 32000
MEM_TARGET = 0.35
DEVICE = "cuda"  # "cpu" only in the CPU dry run (a logic check of this code where there is no GPU)


def versions() -> None:
    import torch

    print(f"python {sys.version.split()[0]}  torch {torch.__version__}  cuda {torch.version.cuda}")
    for name in ("transformers", "peft", "bitsandbytes", "accelerate", "safetensors"):
        try:
            mod = __import__(name)
            print(f"{name} {mod.__version__}")
        except ImportError as exc:
            print(f"SETUP: {name} is not importable ({exc}); install its wheel and rerun.")
            sys.exit(2)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("SETUP: no CUDA device visible.")
        sys.exit(2)
    if DEVICE == "cpu":
        return
    props = torch.cuda.get_device_properties(0)
    print(f"GPU {props.name}, {props.total_memory / 2**30:.1f} GiB, bf16 {torch.cuda.is_bf16_supported()}")


def build_base(folder: Path, size: str) -> int:
    """A random-weight Llama of `size` saved in bf16 with a word-level tokenizer ('w0'…); returns its params."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hidden, inter, layers, heads, kv, tied = SIZES[size]
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=2048,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(
        torch.bfloat16 if DEVICE == "cuda" else torch.float32
    )  # a 7B never exists in fp32
    try:
        with torch.device(DEVICE):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    core = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(VOCAB)}, unk_token="w2"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="w2", eos_token="w0", pad_token="w0", bos_token="w1"
    ).save_pretrained(folder)
    del model
    _free()
    return n


def _free() -> None:
    import torch

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train_steps(folder: Path, *, quantized: bool, steps: int, batch: int, seq: int, lr: float = 1e-3):
    """Load (bf16 or NF4), LoRA on every linear, gradient checkpointing; train `steps` on one repeated batch.

    Returns (peak GiB from load to last step, losses, seconds per step, the PEFT model, GiB once loaded)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _free()
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    kwargs = {"dtype": dtype, "device_map": {"": 0 if DEVICE == "cuda" else "cpu"}}
    if quantized:
        from peftkit.models.quant import bnb_config

        kwargs["quantization_config"] = bnb_config(
            task="causal_lm", device=DEVICE, bits=4, quant_type="nf4", double_quant=True, compute_dtype="auto"
        )
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if quantized:
        from peftkit.models.quant import prepare_quantized_for_training

        model = prepare_quantized_for_training(model, gradient_checkpointing=True)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(model, lora)
    loaded = torch.cuda.memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
    params = [p for p in model.parameters() if p.requires_grad]
    if quantized:
        from peftkit.models.quant import bnb_optimizer

        opt = bnb_optimizer(
            "adamw_8bit", params, lr=lr, weight_decay=0.0
        )  # paged state would escape the count
    else:
        opt = torch.optim.AdamW(params, lr=lr)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=g).to(DEVICE)
    losses = []
    model.train()
    t0 = None
    for step in range(steps):
        if step == 1:
            _sync()
            t0 = time.perf_counter()
        with torch.autocast(DEVICE, dtype=dtype, enabled=DEVICE == "cuda"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    _sync()
    per_step = (time.perf_counter() - t0) / max(1, steps - 1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
    return peak, losses, per_step, model, loaded


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def memory_check(work: Path, size: str, steps: int, batch: int, seq: int) -> list[str]:
    folder = work / f"llama-{size}"
    t0 = time.perf_counter()
    n = build_base(folder, size)
    print(
        f"\n[1] memory: Llama {size} ({n / 1e9:.2f}B params, random weights) built in {time.perf_counter() - t0:.0f} s;"
        f" batch {batch}×{seq}, {steps} steps, LoRA r=16 on all linear layers, gradient checkpointing"
    )
    rows = {}
    for name, quantized in (("16-bit LoRA (bf16)", False), ("QLoRA (NF4, double quant)", True)):
        peak, losses, per_step, model, loaded = train_steps(
            folder, quantized=quantized, steps=steps, batch=batch, seq=seq
        )
        rows[name] = (peak, losses)
        print(
            f"  {name:28s} peak {peak:6.2f} GiB (model + LoRA loaded {loaded:6.2f} GiB)   "
            f"{per_step * 1000:7.1f} ms/step   loss {losses[0]:.3f} → {losses[-1]:.3f}"
        )
        del model
        _free()
    shutil.rmtree(folder, ignore_errors=True)
    (lora_peak, _), (q_peak, q_losses) = rows.values()
    ratio = q_peak / lora_peak
    print(f"  QLoRA / 16-bit LoRA peak memory: {ratio:.3f}× (target ≤ {MEM_TARGET}×)")
    fails = []
    if ratio > MEM_TARGET and DEVICE == "cuda":
        fails.append(f"QLoRA peak memory {ratio:.3f}× of 16-bit LoRA (target ≤ {MEM_TARGET}×)")
    if not q_losses[-1] < q_losses[0]:
        fails.append(f"QLoRA loss did not fall ({q_losses[0]:.3f} → {q_losses[-1]:.3f})")
    return fails


def merge_check(work: Path, size: str = "150m") -> list[str]:
    import torch

    from peftkit.adapters.bundle import save_adapter
    from peftkit.inference.merge import merge_adapter
    from peftkit.models.load import load_tokenizer, tokenizer_hash
    from peftkit.models.sources import content_hash, resolve_source

    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 parity must be float32 arithmetic
    folder = work / f"llama-{size}"
    build_base(folder, size)
    print(
        f"\n[2] merge parity: QLoRA-trained adapter on a {size} Llama, merged by peftkit into a float32 reload"
    )
    _, losses, _, model, _ = train_steps(folder, quantized=True, steps=8, batch=2, seq=64, lr=3e-3)
    lora_b = max(float(p.abs().max()) for n, p in model.named_parameters() if "lora_B" in n)
    source = resolve_source(str(folder))
    meta = {
        "base_model": {
            "source": str(folder),
            "content_hash": content_hash(source),
            "model_type": "llama",
            "cache_dir": None,
        },
        "tokenizer_hash": tokenizer_hash(load_tokenizer(source)),
        "task": "causal_lm",
        "labels": None,
        "method": "lora",
        "max_length": 64,
        "quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "auto"},
    }
    adapter = save_adapter(model, work / "adapter", meta)
    del model
    _free()
    g = torch.Generator().manual_seed(1)
    texts = [" ".join(f"w{int(i)}" for i in torch.randint(3, VOCAB, (24,), generator=g)) for _ in range(16)]
    t0 = time.perf_counter()
    report = merge_adapter(adapter, work / "merged", texts=texts, progress=lambda m: print(f"  merge: {m}"))
    print(f"  merge took {time.perf_counter() - t0:.0f} s; largest |lora_B| {lora_b:.2e}; report:")
    print("  " + json.dumps(report, indent=2).replace("\n", "\n  "))
    # the merged folder in plain transformers (a child process) against the adapter on the float32 base
    fp = next(c for c in report["plain_loaders"] if c["loader"] == "transformers")
    fails = []
    if lora_b == 0:
        fails.append("LoRA B stayed zero: the merge would be trivially exact")
    if fp["outcome"] != "parity":
        fails.append(f"merged model in plain transformers: {fp['outcome']} ({fp.get('error', '')[:200]})")
    elif not fp["max_abs_logit_diff"] <= 1e-3:
        fails.append(
            f"merged vs adapter-on-float32-base max |logit diff| {fp['max_abs_logit_diff']:.2e} > 1e-3"
        )
    elif fp["agree"] < fp["n"]:
        fails.append(f"merged vs adapter-on-float32-base top-1 agreement {fp['agree']}/{fp['n']}")
    return fails
