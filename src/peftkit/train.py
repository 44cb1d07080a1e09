"""The training workflow, top to bottom: recipe → model + data → method → loop → run folder.

Everything that can fail on bad input (data card, data, model source, method settings, lengths) runs before
the run folder is touched, so a refused recipe leaves nothing on disk. The loop is plain PyTorch under
accelerate (one process here; `accelerate launch` for several), seeded so that a resumed run reproduces the
uninterrupted one: batches come from a (seed, epoch)-keyed order and the RNG state is checkpointed.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from peftkit.errors import PeftkitError
from peftkit.fileio import atomic_write_json, atomic_write_text
from peftkit.recipe import Recipe, recipe_to_yaml

LOG_FILE = "train_log.jsonl"


@dataclass
class Split:
    """A tokenized split: token ids per example and label ids (None for causal LM)."""

    ids: list[list[int]]
    labels: list[int] | None

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def train(recipe: Recipe, *, overwrite: bool = False, resume: bool = False, progress: bool = True,
          stop_after_step: int | None = None) -> Path:
    """Train `recipe`; return the run folder. `stop_after_step` simulates an interruption (tests of --resume)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from peftkit.checkpoints import restore_checkpoint, save_checkpoint
    from peftkit.data.cards import load_card
    from peftkit.data.sources import load_splits
    from peftkit.methods.apply import apply_method
    from peftkit.models.load import load_base_model, load_config, load_tokenizer
    from peftkit.models.sources import resolve_source

    rc, tc = recipe.model, recipe.train
    out = Path(tc.output_dir)
    _check_output_dir(out, overwrite=overwrite, resume=resume)

    # 1. Data and model source, checked before anything is written.
    card = load_card(recipe.data.card)
    if card.task != rc.task:
        raise PeftkitError(
            f"data.card: card '{card.name}' ({card.path}) is a {card.task} card but model.task is {rc.task}. "
            f"Use a {rc.task} data card, or set model.task: {card.task}."
        )
    splits = load_splits(card)
    source = resolve_source(rc.source, rc.revision)
    tokenizer = load_tokenizer(source, rc.cache_dir)
    _check_max_length(recipe.data.max_length, load_config(source, rc.cache_dir), rc.source)
    data = {name: _tokenize(splits[name], tokenizer, recipe, limit) for name, limit in (
        ("train", recipe.data.max_train_examples), ("validation", recipe.data.max_eval_examples),
        ("test", recipe.data.max_test_examples))}
    if not data["train"].ids:
        raise PeftkitError(f"data.card: card '{card.name}' gives an empty training split. Check its split settings.")

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(tc.seed)
    labels = card.labels if rc.task == "classification" else None
    quant = recipe.quantization.model_dump() if recipe.quantization else None
    model = load_base_model(source, task=rc.task, labels=labels, pad_token_id=tokenizer.pad_token_id,
                            dtype=rc.dtype, device=str(accelerator.device), quantization=quant, cache_dir=rc.cache_dir)
    steps_per_epoch = math.ceil(len(data["train"].ids) / (tc.batch_size * accelerator.num_processes * tc.grad_accum_steps))
    total_steps = tc.max_steps or max(1, math.ceil(steps_per_epoch * tc.epochs))
    if quant:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=tc.gradient_checkpointing)
    elif tc.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_method(model, name=recipe.method.name, settings=recipe.method.settings(), task=rc.task,
                         total_steps=total_steps)

    # 2. The run folder: from here on, files appear (each atomically).
    if accelerator.is_main_process:
        if overwrite and out.exists() and not resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "recipe.resolved.yaml", recipe_to_yaml(recipe))

    optimizer = _optimizer(model, tc)
    scheduler = _scheduler(optimizer, tc, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    start_step = restore_checkpoint(out, model, optimizer, scheduler) if resume else 0
    logger = _Logger(out, tc.report_to, start_step, accelerator.is_main_process)

    # 3. The loop.
    from tqdm.auto import tqdm

    padding_side = tokenizer.padding_side
    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc="train", unit="step")
    step, t0, examples, tokens = start_step, time.perf_counter(), 0, 0
    model.train()
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        batches = _epoch_batches(data["train"], tc, recipe.data.group_by_length, epoch, accelerator)
        for micro in batches[offset:]:
            loss_sum = 0.0
            for idx in micro:
                batch = _collate(data["train"], idx, tokenizer.pad_token_id, padding_side, rc.task, accelerator.device)
                with accelerator.autocast():
                    loss = model(**batch).loss / len(micro)
                accelerator.backward(loss)
                loss_sum += loss.item()
                examples += len(idx)
                tokens += int(batch["attention_mask"].sum())
            if tc.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            _adalora_update(model, step)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}")
            if step % tc.log_every == 0 or step == total_steps:
                logger.log(step, {"loss": loss_sum, "lr": scheduler.get_last_lr()[0]})
            if tc.eval_every and step % tc.eval_every == 0 and data["validation"].ids:
                logger.log(step, _evaluate(model, data["validation"], recipe, tokenizer, labels, "eval"))
            if tc.save_every and step % tc.save_every == 0 or step == stop_after_step:
                save_checkpoint(out, step, model, optimizer, scheduler, tc.keep_checkpoints, accelerator.is_main_process)
            if step == stop_after_step:
                bar.close()
                logger.close()
                return out
            if step >= total_steps:
                break
        else:
            if not tc.eval_every and data["validation"].ids:
                logger.log(step, _evaluate(model, data["validation"], recipe, tokenizer, labels, "eval"))
    bar.close()
    seconds = time.perf_counter() - t0

    # 4. Final evaluation, adapter, metrics.
    results = {"train": {"steps": step, "examples": examples, "tokens": tokens, "seconds": round(seconds, 2),
                         "examples_per_second": round(examples / max(seconds, 1e-9), 2),
                         "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
                         "final_loss": logger.last_loss}}
    for name in ("validation", "test"):
        if data[name].ids:
            results[name] = _evaluate(model, data[name], recipe, tokenizer, labels, name, full=True)
    logger.close()
    if accelerator.is_main_process:
        _save_bundle(accelerator.unwrap_model(model), out / "adapter", recipe, source, tokenizer, labels)
        atomic_write_json(out / "metrics.json", results)
    accelerator.wait_for_everyone()
    return out


def _check_output_dir(out: Path, *, overwrite: bool, resume: bool) -> None:
    if resume:
        if not any((out / "checkpoints").glob("step-*")):
            raise PeftkitError(f"--resume: run folder '{out}' has no checkpoint to resume from. Start the run without "
                               f"--resume (add --overwrite to replace the folder).")
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PeftkitError(
            f"train.output_dir: run folder '{out}' already exists and is not empty. Pass --overwrite to replace it, "
            f"--resume to continue it, or choose another folder with train.output_dir=PATH."
        )


def _check_max_length(max_length: int, config, source_spec: str) -> None:
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and max_length > limit:
        raise PeftkitError(
            f"data.max_length: {max_length} is above the model's limit of {limit} positions ({source_spec}). "
            f"Set data.max_length to {limit} or less."
        )


def _tokenize(dataset, tokenizer, recipe: Recipe, limit: int | None) -> Split:
    from peftkit.data.prepare import tokenize_texts

    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    ids = tokenize_texts(tokenizer, dataset["text"], recipe.data.max_length)
    labels = list(dataset["label"]) if "label" in dataset.column_names else None
    return Split(ids, labels)


def _epoch_batches(split: Split, tc, group_by_length: bool, epoch: int, accelerator) -> list[list[list[int]]]:
    """Optimizer steps of this epoch: each a list of micro-batches (index lists) for this process."""
    from peftkit.data.prepare import batch_order

    world, rank = accelerator.num_processes, accelerator.process_index
    global_batches = batch_order(split.lengths, tc.batch_size * world, seed=tc.seed, epoch=epoch,
                                 group_by_length=group_by_length)
    mine = [b[rank::world] for b in global_batches]
    mine = [b for b in mine if b]
    k = tc.grad_accum_steps
    return [mine[i:i + k] for i in range(0, len(mine), k)]


def _collate(split: Split, idx: list[int], pad_id: int, padding_side: str, task: str, device) -> dict:
    from peftkit.data.prepare import collate

    labels = [split.labels[i] for i in idx] if split.labels is not None else None
    batch = collate([split.ids[i] for i in idx], pad_id, padding_side, labels=labels if task == "classification" else None)
    if task == "causal_lm":
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {k: v.to(device) for k, v in batch.items()}


def _optimizer(model, tc):
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.optimizer == "adamw":
        import torch

        return torch.optim.AdamW(params, lr=tc.learning_rate, weight_decay=tc.weight_decay)
    from peftkit.models.quant import bnb_optimizer

    return bnb_optimizer(tc.optimizer, params, lr=tc.learning_rate, weight_decay=tc.weight_decay)


def _scheduler(optimizer, tc, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=int(tc.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def _adalora_update(model, step: int) -> None:
    """AdaLoRA reallocates ranks between backward and the optimizer step."""
    base = getattr(model, "base_model", None)
    if hasattr(base, "update_and_allocate"):
        base.update_and_allocate(step)


def _evaluate(model, split: Split, recipe: Recipe, tokenizer, labels, prefix: str, full: bool = False) -> dict:
    """Loss and metrics on a split; `full` adds per-class scores and the confusion matrix."""
    from peftkit.evaluation import classification_metrics
    from peftkit.inference import forward_split

    was_training = model.training
    model.eval()
    logits, loss = forward_split(model, split.ids, split.labels, pad_token_id=tokenizer.pad_token_id,
                                 padding_side=tokenizer.padding_side, batch_size=recipe.eval.batch_size,
                                 task=recipe.model.task)
    model.train(was_training)
    if recipe.model.task != "classification":
        res = {"loss": loss, "perplexity": math.exp(min(loss, 50))}
    else:
        res = classification_metrics(split.labels, logits.argmax(-1), labels, recipe.eval.metrics)
        res["loss"] = loss
        if not full:
            res = {k: v for k, v in res.items() if isinstance(v, float)}
    return res if full else {f"{prefix}/{k}": v for k, v in res.items()}


def _save_bundle(model, adapter_dir: Path, recipe: Recipe, source, tokenizer, labels) -> None:
    import hashlib

    from peftkit.adapters import save_adapter
    from peftkit.models.load import tokenizer_hash
    from peftkit.models.sources import content_hash

    resolved = recipe_to_yaml(recipe)
    meta = {
        "base_model": {"source": recipe.model.source, "content_hash": content_hash(source),
                       "model_type": model.config.model_type, "cache_dir": recipe.model.cache_dir},
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "task": recipe.model.task,
        "labels": labels,
        "method": recipe.method.name,
        "max_length": recipe.data.max_length,
        "data_card": recipe.data.card,
        "recipe_hash": "sha256:" + hashlib.sha256(resolved.encode()).hexdigest(),
    }
    save_adapter(model, adapter_dir, meta)


class _Logger:
    """Training curves: `train_log.jsonl` in the run folder always, plus tensorboard or wandb."""

    def __init__(self, out: Path, report_to: str, start_step: int, active: bool):
        self.active, self.path, self.last_loss = active, out / LOG_FILE, None
        self.writer = None
        if not active:
            return
        # A resumed run drops log lines written after its checkpoint, so the log reads like one run.
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "logs"), purge_step=start_step or None)
        elif report_to == "wandb":
            import wandb

            self.writer = wandb.init(project="peftkit", name=out.name, dir=str(out))

    def log(self, step: int, values: dict) -> None:
        if "loss" in values:
            self.last_loss = values["loss"]
        if not self.active:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is None:
            return
        if hasattr(self.writer, "add_scalar"):
            for key, value in values.items():
                self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)
        else:
            self.writer.log(values, step=step)

    def close(self) -> None:
        if self.writer is not None:
            (self.writer.close if hasattr(self.writer, "close") else self.writer.finish)()
