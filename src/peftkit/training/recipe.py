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
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass
from pathlib import Path

from peftkit import cpu
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


def train(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    stop_after_step: int | None = None,
) -> Path:
    """Train `recipe`; return the run folder. `stop_after_step` simulates an interruption (tests of --resume)."""
    import torch
    from accelerate.utils import DistributedType, set_seed

    from peftkit.data.cards import load_card
    from peftkit.data.sources import load_splits
    from peftkit.methods.apply import apply_method
    from peftkit.methods.checks import check_method_for_model
    from peftkit.models.load import load_base_model, load_config, load_tokenizer
    from peftkit.models.pooling import check_pooling
    from peftkit.models.sources import resolve_source
    from peftkit.training.checkpoints import restore_checkpoint, save_checkpoint
    from peftkit.training.distributed import (
        checkpoints_supported,
        gather_rng_states,
        make_accelerator,
        sharded_dtype,
    )

    rc, tc = recipe.model, recipe.train
    out = Path(tc.output_dir)
    _check_output_dir(out, overwrite=overwrite, resume=resume)
    check_report_to(tc.report_to)

    # 1. Data and model source, checked before anything is written.
    card = load_card(recipe.data.card)
    check_card_task(card, rc.task)
    splits = load_splits(card)
    source = resolve_source(rc.source, rc.revision)
    tokenizer = load_tokenizer(source, rc.cache_dir)
    model_config = load_config(source, rc.cache_dir)
    _check_max_length(recipe.data.max_length, model_config, rc.source)
    check_method_for_model(
        recipe.method.name, recipe.method.settings(), model_config, rc.task, tc.gradient_checkpointing
    )
    check_pooling(
        rc.pooling,
        task=rc.task,
        settings=recipe.method.settings(),
        config=model_config,
        source=f"model source '{rc.source}'",
    )
    data = {
        name: _tokenize(splits[name], tokenizer, recipe, limit)
        for name, limit in (
            ("train", recipe.data.max_train_examples),
            ("validation", recipe.data.max_eval_examples),
            ("test", recipe.data.max_test_examples),
        )
    }
    if not data["train"].ids:
        raise PeftkitError(
            f"data.card: card '{card.name}' gives an empty training split. Check its split settings."
        )

    dtype, mixed = sharded_dtype(recipe.distributed.strategy, rc.dtype)
    accelerator = make_accelerator(
        recipe.distributed.strategy,
        quantized=recipe.quantization is not None,
        mixed_precision=mixed,
        batch_size=tc.batch_size,
        grad_accum_steps=tc.grad_accum_steps,
        max_grad_norm=tc.max_grad_norm,
    )
    can_checkpoint = checkpoints_supported(accelerator, resume=resume, save_every=tc.save_every)
    set_seed(tc.seed)  # the same on every process: same initial adapter, same data order
    labels = card.labels if rc.task == "classification" else None
    quant = recipe.quantization.model_dump() if recipe.quantization else None
    model = load_base_model(
        source,
        task=rc.task,
        labels=labels,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
        device=str(accelerator.device),
        quantization=quant,
        cache_dir=rc.cache_dir,
        pooling=rc.pooling,
    )
    steps_per_epoch = math.ceil(
        len(data["train"].ids) / (tc.batch_size * accelerator.num_processes * tc.grad_accum_steps)
    )
    total_steps = tc.max_steps or max(1, math.ceil(steps_per_epoch * tc.epochs))
    if quant:
        from peftkit.models.quant import prepare_quantized_for_training

        model = prepare_quantized_for_training(model, gradient_checkpointing=tc.gradient_checkpointing)
    elif tc.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_method(
        model,
        name=recipe.method.name,
        settings=recipe.method.settings(),
        task=rc.task,
        total_steps=total_steps,
    )
    if accelerator.device.type == "cpu":
        cpu.enable(model)

    # 2. The run folder: from here on, files appear (each atomically).
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one fills it
    if accelerator.is_main_process:
        if overwrite and out.exists() and not resume:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "recipe.resolved.yaml", recipe_to_yaml(recipe))

    optimizer = _optimizer(model, tc)
    scheduler = _scheduler(optimizer, tc, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Clipping reads only parameters with gradients: listing the trainable ones skips ~1 ms a step of walking the
    # frozen base (accelerate's FSDP path needs the model's own parameter list).
    clip_params = (
        list(model.parameters())
        if accelerator.distributed_type == DistributedType.FSDP
        else [p for p in model.parameters() if p.requires_grad]
    )
    if (
        accelerator.num_processes > 1
    ):  # same initial weights above; from here each process draws its own dropout
        set_seed(tc.seed + accelerator.process_index)
    start_step = (
        restore_checkpoint(
            out,
            accelerator.unwrap_model(model),
            optimizer,
            scheduler,
            process_index=accelerator.process_index,
            processes=accelerator.num_processes,
        )
        if resume
        else 0
    )
    logger = _Logger(out, tc.report_to, start_step, accelerator.is_main_process)

    # 3. The loop.
    from tqdm.auto import tqdm

    padding_side = tokenizer.padding_side
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        disable=not (progress and accelerator.is_main_process),
        desc="train",
        unit="step",
    )
    step, t0, examples, tokens = start_step, time.perf_counter(), 0, 0
    eval_seconds = 0.0  # in-loop evaluations (epoch ends, eval_every) are not training time
    model.train()
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        batches = _epoch_batches(data["train"], tc, recipe.data.group_by_length, epoch, accelerator, rc.task)
        for micro in batches[offset:]:
            loss_sum = 0.0
            for i, (idx, weight) in enumerate(micro):
                batch = _collate(
                    data["train"], idx, tokenizer.pad_token_id, padding_side, rc.task, accelerator.device
                )
                # Gradients are all-reduced once per optimizer step, on its last micro-batch.
                with (
                    accelerator.no_sync(model) if i < len(micro) - 1 else _nullcontext(),
                    accelerator.autocast(),
                ):
                    output = model(**batch)
                    # weight 0: a placeholder batch (this process's slice is empty) that only keeps collectives aligned
                    loss = (output.loss if weight else output.logits.sum()) * weight
                accelerator.backward(loss)
                loss_sum += loss.item()
                examples += len(idx) if weight else 0
                tokens += int(batch["attention_mask"].sum()) if weight else 0
            if accelerator.num_processes > 1:  # the global batch's mean loss, as one process would log it
                loss_sum = accelerator.reduce(
                    torch.tensor(loss_sum, device=accelerator.device), "mean"
                ).item()
            if tc.max_grad_norm:
                accelerator.clip_grad_norm_(clip_params, tc.max_grad_norm)
            optimizer.step()
            _adalora_update(model, step)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}")
            if step % tc.log_every == 0 or step == total_steps:
                logger.log(step, {"loss": loss_sum, "lr": scheduler.get_last_lr()[0]})
            # the last step's validation is the final evaluation below: not twice
            if tc.eval_every and step % tc.eval_every == 0 and data["validation"].ids and step < total_steps:
                eval_seconds += _log_validation(
                    logger, step, model, data["validation"], recipe, tokenizer, labels, accelerator
                )
            if can_checkpoint and (tc.save_every and step % tc.save_every == 0 or step == stop_after_step):
                save_checkpoint(
                    out,
                    step,
                    accelerator.unwrap_model(model),
                    optimizer,
                    scheduler,
                    tc.keep_checkpoints,
                    accelerator.is_main_process,
                    rng_states=gather_rng_states(accelerator),
                )
                accelerator.wait_for_everyone()
            if step == stop_after_step:
                bar.close()
                logger.close()
                return out
            if step >= total_steps:
                break
        else:
            if (
                not tc.eval_every and data["validation"].ids
            ):  # not after the last epoch: its `break` skips this
                eval_seconds += _log_validation(
                    logger, step, model, data["validation"], recipe, tokenizer, labels, accelerator
                )
    bar.close()
    seconds = time.perf_counter() - t0 - eval_seconds
    if accelerator.num_processes > 1:  # throughput counts the examples of every process
        examples, tokens = (
            int(accelerator.reduce(torch.tensor(v, device=accelerator.device), "sum"))
            for v in (examples, tokens)
        )

    # 4. Final evaluation, adapter, metrics.
    results = {
        "train": {
            "n": len(data["train"].ids),  # after data.max_train_examples: the card shows it
            "steps": step,
            "examples": examples,
            "tokens": tokens,
            "seconds": round(seconds, 2),
            "examples_per_second": round(examples / max(seconds, 1e-9), 2),
            "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
            "final_loss": logger.last_loss,
        }
    }
    for name in ("validation", "test"):
        if data[name].ids:
            results[name] = _evaluate(
                model, data[name], recipe, tokenizer, labels, name, accelerator, full=True
            )
            if name == "validation":  # the eval curve's last point
                logger.log(step, {f"eval/{k}": v for k, v in results[name].items() if isinstance(v, float)})
            if rc.task == "causal_lm":
                results[name].update(
                    _evaluate_base(
                        accelerator.unwrap_model(model), data[name], recipe, tokenizer, accelerator
                    )
                )
    logger.close()
    state_dict = accelerator.get_state_dict(
        model
    )  # gathered from every process (FSDP / ZeRO-3 shard weights)
    if accelerator.is_main_process:
        _save_bundle(
            accelerator.unwrap_model(model), out / "adapter", recipe, source, tokenizer, labels, state_dict
        )
        atomic_write_json(out / "metrics.json", results)
        from peftkit.adapters.card import write_adapter_card
        from peftkit.inference.plots import write_run_plots

        write_run_plots(out)
        write_adapter_card(out)
    accelerator.wait_for_everyone()
    return out


def _check_output_dir(out: Path, *, overwrite: bool, resume: bool) -> None:
    if resume:
        if not any((out / "checkpoints").glob("step-*")):
            raise PeftkitError(
                f"--resume: run folder '{out}' has no checkpoint to resume from. Start the run without "
                f"--resume (add --overwrite to replace the folder)."
            )
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PeftkitError(
            f"train.output_dir: run folder '{out}' already exists and is not empty. Pass --overwrite to replace it, "
            f"--resume to continue it, or choose another folder with train.output_dir=PATH."
        )


def check_card_task(card, task: str) -> None:
    """The data card must be made for the recipe's task (a labelled card is not a causal-LM corpus, nor back)."""
    if card.task == task:
        return
    fix = (
        "A causal-LM card has `task: causal_lm` in its `peftkit:` block and names only a text column: use one "
        "(e.g. rotten_tomatoes_text), or write one pointing at the same data file"
        if task == "causal_lm"
        else "Use a classification card (with labels)"
    )
    raise PeftkitError(
        f"data.card: card '{card.name}' ({card.path}) is a {card.task} card but model.task is {task}. {fix}; "
        f"or set model.task: {card.task}."
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
    ids = tokenize_texts(
        tokenizer, dataset["text"], recipe.data.max_length, add_eos=recipe.model.task == "causal_lm"
    )
    labels = list(dataset["label"]) if "label" in dataset.column_names else None
    return Split(ids, labels)


def _epoch_batches(
    split: Split, tc, group_by_length: bool, epoch: int, accelerator, task: str
) -> list[list[tuple]]:
    """Optimizer steps of this epoch: each a list of (index list, loss weight) micro-batches for this process."""
    from peftkit.data.prepare import batch_order
    from peftkit.training.distributed import shard_steps

    world, rank = accelerator.num_processes, accelerator.process_index
    global_batches = batch_order(
        split.lengths, tc.batch_size * world, seed=tc.seed, epoch=epoch, group_by_length=group_by_length
    )
    lengths = split.lengths
    # What the model's mean loss averages over: examples, or (causal LM) target tokens after the shift.
    size = (lambda i: 1) if task == "classification" else (lambda i: max(lengths[i] - 1, 0))
    return shard_steps(global_batches, tc.grad_accum_steps, rank, world, size)


def _collate(split: Split, idx: list[int], pad_id: int, padding_side: str, task: str, device) -> dict:
    from peftkit.data.prepare import collate

    labels = [split.labels[i] for i in idx] if split.labels is not None else None
    batch = collate(
        [split.ids[i] for i in idx], pad_id, padding_side, labels=labels if task == "classification" else None
    )
    if task == "causal_lm":
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {k: v.to(device) for k, v in batch.items()}


def _optimizer(model, tc):
    params = [p for p in model.parameters() if p.requires_grad]
    if tc.optimizer == "adamw":
        import torch

        # The fused kernel on CPU: one pass over each tensor instead of ~10 per-parameter ops (same update).
        fused = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
        return torch.optim.AdamW(
            params, lr=tc.learning_rate, weight_decay=tc.weight_decay, fused=fused or None
        )
    from peftkit.models.quant import bnb_optimizer

    return bnb_optimizer(tc.optimizer, params, lr=tc.learning_rate, weight_decay=tc.weight_decay)


def _scheduler(optimizer, tc, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(
        tc.lr_scheduler,
        optimizer,
        num_warmup_steps=int(tc.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


def _adalora_update(model, step: int) -> None:
    """AdaLoRA reallocates ranks after the optimizer step, while the gradients still exist (PEFT's order: a mask
    applied before the step would be undone by it, and the saved adapter would then differ from the trained one)."""
    base = getattr(model, "base_model", None)
    if hasattr(base, "update_and_allocate"):
        base.update_and_allocate(step)


def _log_validation(
    logger, step: int, model, split: Split, recipe: Recipe, tokenizer, labels, accelerator
) -> float:
    """Log the validation metrics at `step` (an in-loop evaluation); returns its seconds, which are not training
    time."""
    t0 = time.perf_counter()
    logger.log(step, _evaluate(model, split, recipe, tokenizer, labels, "eval", accelerator))
    return time.perf_counter() - t0


def _evaluate(
    model, split: Split, recipe: Recipe, tokenizer, labels, prefix: str, accelerator, full: bool = False
) -> dict:
    """Loss and metrics on a split (each process evaluates a slice); `full` adds per-class scores and the confusion
    matrix."""
    from peftkit.inference.metrics import classification_metrics
    from peftkit.training.distributed import forward_split_sharded

    was_training = model.training
    model.eval()
    logits, loss = forward_split_sharded(
        model,
        split.ids,
        split.labels,
        accelerator,
        pad_token_id=tokenizer.pad_token_id,
        padding_side=tokenizer.padding_side,
        batch_size=recipe.eval.batch_size,
        task=recipe.model.task,
    )
    model.train(was_training)
    if recipe.model.task != "classification":
        res = {"loss": loss, "perplexity": math.exp(min(loss, 50))}
    else:
        res = classification_metrics(split.labels, logits.argmax(-1), labels, recipe.eval.metrics)
        res["loss"] = loss
        if not full:
            res = {k: v for k, v in res.items() if isinstance(v, float)}
    return res if full else {f"{prefix}/{k}": v for k, v in res.items()}


def _evaluate_base(model, split: Split, recipe: Recipe, tokenizer, accelerator) -> dict:
    """Loss and perplexity of the base model alone (adapter switched off): the numbers before training."""
    with model.disable_adapter():
        res = _evaluate(model, split, recipe, tokenizer, None, "base", accelerator, full=True)
    return {"loss_before": res["loss"], "perplexity_before": res["perplexity"]}


def _save_bundle(
    model, adapter_dir: Path, recipe: Recipe, source, tokenizer, labels, state_dict=None
) -> None:
    import hashlib

    from peftkit.adapters.bundle import save_adapter
    from peftkit.models.load import tokenizer_hash
    from peftkit.models.sources import content_hash

    resolved = recipe_to_yaml(recipe)
    meta = {
        "base_model": {
            "source": recipe.model.source,
            "content_hash": content_hash(source),
            "model_type": model.config.model_type,
            "cache_dir": recipe.model.cache_dir,
        },
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "task": recipe.model.task,
        "labels": labels,
        "pooling": recipe.model.pooling,
        "method": recipe.method.name,
        "max_length": recipe.data.max_length,
        "data_card": recipe.data.card,
        "quantization": recipe.quantization.model_dump() if recipe.quantization else None,
        "recipe_hash": "sha256:" + hashlib.sha256(resolved.encode()).hexdigest(),
    }
    save_adapter(model, adapter_dir, meta, state_dict=state_dict)


def check_report_to(report_to: str) -> None:
    """Refuse a logger whose package is missing before the run folder is touched."""
    import importlib.util

    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise PeftkitError(
            f"train.report_to: '{report_to}' needs the `{report_to}` package, which is not installed. "
            f"Install it (pip install {report_to}) or set train.report_to=tensorboard or none."
        )


class _Logger:
    """Training curves: `train_log.jsonl` in the run folder always, plus tensorboard or wandb."""

    def __init__(self, out: Path, report_to: str, start_step: int, active: bool):
        self.active, self.path, self.last_loss = active, out / LOG_FILE, None
        self.writer = None
        if not active:
            return
        # A resumed run drops log lines written after its checkpoint, so the log reads like one run.
        if self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= start_step
            ]
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
