"""The peer pipeline for `peftkit bench --peer`: what a user writes by hand with the same libraries.

transformers `Trainer` + peft `get_peft_model`, on the same model, data subset, epochs, batch size, learning
rate, schedule and PEFT config as the peftkit row. Two padding styles:
- `pad128`: transformers' text-classification example defaults (every example padded to `max_length`);
- `dynamic`: the PEFT docs' `DataCollatorWithPadding` (each batch padded to its longest member), with the recipe's
  length grouping (`train_sampling_strategy="group_by_length"`) when the recipe groups by length.
A recipe with `model.pooling: mean` gets the same mean pooling in the peer (peftkit's pooler swap). On a GPU the
peer is what a careful user writes there: the weights in the recipe's dtype (bf16 by default) with `bf16=True`,
SDPA attention (transformers' default), the fused AdamW (`adamw_torch_fused`, as peftkit), and for a recipe with a
`quantization` block the same bitsandbytes 4-bit base, `prepare_model_for_kbit_training` and 8-bit optimizer.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

# peftkit's `train.optimizer` → the Trainer's `optim` for the same optimizer.
TRAINER_OPTIMIZERS = {
    "adamw": "adamw_torch_fused",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
}


def run_peer(recipe, padding: str, train_limit: int | None, device: str = "cpu") -> dict:
    """Train and evaluate the peer pipeline for `recipe`'s method; return the bench row's measured values."""
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from peftkit.data.cards import load_card
    from peftkit.data.sources import load_splits
    from peftkit.inference.metrics import classification_metrics
    from peftkit.methods.apply import apply_method
    from peftkit.models.load import hf_folder, quant_device_map, resolve_dtype
    from peftkit.models.sources import resolve_source

    rc, tc, dc = recipe.model, recipe.train, recipe.data
    card = load_card(dc.card)
    splits = load_splits(card)
    train_ds = splits["train"].select(range(min(train_limit or len(splits["train"]), len(splits["train"]))))
    val_ds = splits["validation"]
    val_ds = val_ds.select(range(min(dc.max_eval_examples or len(val_ds), len(val_ds))))
    folder = hf_folder(resolve_source(rc.source, rc.revision), rc.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:  # decoders: pad with eos, as every decoder classification example does
        tokenizer.pad_token = tokenizer.eos_token

    def tokenize(batch):
        if padding == "pad128":
            return tokenizer(batch["text"], truncation=True, max_length=dc.max_length, padding="max_length")
        return tokenizer(batch["text"], truncation=True, max_length=dc.max_length)

    train_tok = train_ds.map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels")
    val_tok = val_ds.map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels")
    real_tokens = int(sum(int(np.sum(m)) for m in train_tok["attention_mask"]))
    padded_tokens = int(sum(len(m) for m in train_tok["attention_mask"]))

    torch.manual_seed(tc.seed)
    dtype = resolve_dtype(rc.dtype, device)
    load_kwargs = {}
    if recipe.quantization:
        from peftkit.models.quant import bnb_config

        q = recipe.quantization
        load_kwargs = {
            "quantization_config": bnb_config(
                task=rc.task,
                device=device,
                bits=q.bits,
                quant_type=q.quant_type,
                double_quant=q.double_quant,
                compute_dtype=q.compute_dtype,
            ),
            "device_map": quant_device_map(device),
        }
    model = AutoModelForSequenceClassification.from_pretrained(
        folder,
        num_labels=len(card.labels),
        id2label=dict(enumerate(card.labels)),
        label2id={name: i for i, name in enumerate(card.labels)},
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
        **load_kwargs,
    )
    if (
        rc.pooling != "model"
    ):  # by hand this is a pooler swap of a few lines; the same one, so both compute the same
        from peftkit.models.pooling import apply_pooling

        apply_pooling(model, rc.pooling)
    if recipe.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=tc.gradient_checkpointing)
    # The same PEFT config peftkit builds (get_peft_model inside apply_method), so the two compute the same thing.
    model = apply_method(model, name=recipe.method.name, settings=recipe.method.settings(), task=rc.task)
    steps = math.ceil(len(train_tok) / tc.batch_size) * tc.epochs
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=tc.batch_size,
            per_device_eval_batch_size=recipe.eval.batch_size,
            num_train_epochs=tc.epochs,
            learning_rate=tc.learning_rate,
            weight_decay=tc.weight_decay,
            warmup_steps=int(tc.warmup_ratio * steps),
            lr_scheduler_type=tc.lr_scheduler,
            max_grad_norm=tc.max_grad_norm or 0.0,
            seed=tc.seed,
            report_to="none",
            save_strategy="no",
            logging_steps=tc.log_every,
            use_cpu=device == "cpu",
            bf16=dtype == torch.bfloat16,
            optim=TRAINER_OPTIMIZERS[tc.optimizer],
            # (a quantized base gets it from prepare_model_for_kbit_training above)
            activation_checkpointing=tc.gradient_checkpointing and not recipe.quantization,
            train_sampling_strategy="group_by_length"
            if dc.group_by_length and padding == "dynamic"
            else "random",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_tok,
            eval_dataset=val_tok,
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        pred = trainer.predict(val_tok)
        adapter = Path(tmp) / "adapter"
        model.save_pretrained(adapter, safe_serialization=True)  # trained in place: the Trainer's own model
        adapter_bytes = sum(p.stat().st_size for p in adapter.rglob("*.safetensors"))
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    if not isinstance(pred.predictions, np.ndarray) or pred.metrics is None:
        raise RuntimeError("the peer's Trainer.predict gave no single logits array or no metrics")
    metrics = classification_metrics(
        pred.label_ids, pred.predictions.argmax(-1), card.labels, ["accuracy", "macro_f1"]
    )
    examples = len(train_tok) * tc.epochs
    return {
        "examples": examples,
        "seconds": seconds,
        "examples_per_second": examples / seconds,
        "real_tokens": real_tokens * tc.epochs,
        "tokens_per_second": real_tokens * tc.epochs / seconds,
        "pad_share": 1 - real_tokens / max(padded_tokens, 1) if padding == "pad128" else None,
        "final_loss": losses[-1] if losses else None,
        "eval_loss": float(pred.metrics["test_loss"]),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "adapter_bytes": adapter_bytes,
    }
