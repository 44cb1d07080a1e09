"""The training workflow, top to bottom: recipe → checks → data + model → method → loop → run folder.

Every check that can fail on bad input runs first (`preflight`, the same checks as `peftkit validate`), before
any weight loads or any file is written, so a refused recipe leaves nothing on disk. The run folder is a
transaction (`training.run_folder`): the run writes beside it and replaces it only when it has succeeded. The loop
itself is `training.loop.fit`; this module sets it up and writes what it produced.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate.utils import set_seed

from peftkit import cpu
from peftkit.adapters.bundle import save_adapter
from peftkit.adapters.card import write_adapter_card
from peftkit.adapters.init_from import continue_adapter
from peftkit.data import balance
from peftkit.data.prepare import tokenize_split
from peftkit.errors import PeftkitError
from peftkit.fileio import atomic_write_json
from peftkit.inference.plots import read_log, write_run_plots
from peftkit.methods.apply import apply_method
from peftkit.models.load import load_model_and_tokenizer, load_tokenizer, tokenizer_hash
from peftkit.models.quant import bnb_optimizer, prepare_quantized_for_training
from peftkit.models.sources import content_hash
from peftkit.recipe import Recipe, recipe_to_yaml
from peftkit.training.best import BestTracker, trainable_weights
from peftkit.training.checkpoints import restore_checkpoint, save_checkpoint
from peftkit.training.distributed import (
    checkpoints_supported,
    gather_rng_states,
    main_process_call,
    make_accelerator,
    sharded_dtype,
)
from peftkit.training.evaluate import evaluate_base, evaluate_split
from peftkit.training.loop import TrainCallback, fit
from peftkit.training.preflight import preflight
from peftkit.training.run_folder import RunFolder
from peftkit.training.run_log import LOG_FILE, RunLog


def train(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[TrainCallback] = (),
    evaluate_test: bool = True,
) -> Path:
    """Train `recipe` into its run folder (`train.output_dir`) and return the folder.

    `overwrite` replaces an existing run (once this one has succeeded), `resume` continues one from its latest
    checkpoint; `callbacks` see every step and in-loop evaluation (see `training.loop.TrainCallback`). A run that
    fails leaves the run folder as it was, and keeps what it wrote only when that can be resumed
    (`training.run_folder.RunFolder.abort`). `evaluate_test=False` leaves the test split alone (hyperparameter
    search must not look at it).
    """
    assert recipe.train.output_dir is not None  # load_recipe sets it (runs/<recipe file stem>)
    run = RunFolder(
        Path(recipe.train.output_dir), overwrite=overwrite, resume=resume, save_every=recipe.train.save_every
    )
    try:
        _train(
            recipe,
            run,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
            callbacks=callbacks,
            evaluate_test=evaluate_test,
        )
    except BaseException as exc:
        error = run.abort(exc)
        if error is None:
            raise
        raise error from None
    return run.target


def _train(
    recipe: Recipe,
    run: RunFolder,
    *,
    overwrite: bool,
    resume: bool,
    progress: bool,
    callbacks: Sequence[TrainCallback],
    evaluate_test: bool,
) -> None:
    """`train`, writing into `run`."""
    rc, tc = recipe.model, recipe.train

    # 1. Checks (the run folder, its lock and any checkpoint to resume included), and the data and tokenizer they
    # loaded. Nothing is written before they have all passed.
    checked = preflight(recipe, overwrite=overwrite, resume=resume)
    assert checked.splits is not None  # without the memo, preflight loads every split
    tokenizer = checked.tokenizer or load_tokenizer(checked.source, rc.cache_dir)
    limits = {"train": recipe.data.max_train_examples, "validation": recipe.data.max_eval_examples}
    limits["test"] = recipe.data.max_test_examples
    data = {
        name: tokenize_split(
            checked.splits[name],
            tokenizer,
            recipe.data.max_length,
            limit=limit,
            causal_lm=rc.task == "causal_lm",
        )
        for name, limit in limits.items()
    }
    labels = checked.card.labels if rc.task == "classification" else None
    class_weights = _class_weights(recipe, labels, data["train"].labels)

    # 2. Processes, model and method.
    dtype, mixed_precision = sharded_dtype(recipe.distributed.strategy, rc.dtype)
    accelerator = make_accelerator(
        recipe.distributed.strategy,
        quantized=recipe.quantization is not None,
        mixed_precision=mixed_precision,
        batch_size=tc.batch_size,
        grad_accum_steps=tc.grad_accum_steps,
        max_grad_norm=tc.max_grad_norm,
    )
    can_checkpoint = checkpoints_supported(accelerator, resume=resume, save_every=tc.save_every)
    steps_per_epoch = math.ceil(
        len(data["train"]) / (tc.batch_size * accelerator.num_processes * tc.grad_accum_steps)
    )
    total_steps = tc.max_steps or max(1, math.ceil(steps_per_epoch * tc.epochs))
    set_seed(tc.seed)  # the same on every process: same initial adapter, same data order
    model = _setup_model(
        recipe, checked.source, tokenizer, labels, dtype, accelerator.device, total_steps, checked.init_from
    )
    if tc.keep_best and not checkpoints_supported(accelerator, resume=False, save_every=None):
        raise PeftkitError(
            "train.keep_best: the best adapter is kept as whole trainable tensors, which sharded strategies "
            "(FSDP, DeepSpeed) do not hold. Set train.keep_best: false, or use distributed.strategy: ddp."
        )

    # 3. The run folder: locked, and written in NAME.partial beside it until the run has succeeded.
    run.open(accelerator)
    out = run.path

    # 4. Optimizer, schedule, resumed state, and the loop.
    optimizer = build_optimizer(model, tc.optimizer, tc.learning_rate, tc.weight_decay)
    scheduler = build_scheduler(optimizer, tc.lr_scheduler, tc.warmup_ratio, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if accelerator.num_processes > 1:  # same initial weights above; from here each its own dropout
        set_seed(tc.seed + accelerator.process_index)
    start_step = 0
    if resume:
        start_step = restore_checkpoint(
            out,
            accelerator.unwrap_model(model),
            optimizer,
            scheduler,
            process_index=accelerator.process_index,
        )
    run.begin(recipe_to_yaml(recipe))
    tracker = _best_tracker(recipe, out, model, accelerator) if tc.keep_best or tc.early_stopping else None
    if tracker is not None and resume:
        tracker.resume(read_log(out / LOG_FILE), start_step)
    log = RunLog(out, tc.report_to, start_step, accelerator.is_main_process)
    bar = "validation" if progress else None  # the label of evaluation progress bars (None: no bars)
    eval_kwargs = dict(
        task=rc.task,
        tokenizer=tokenizer,
        batch_size=recipe.eval.batch_size,
        accelerator=accelerator,
    )

    def evaluate() -> dict:
        return evaluate_split(
            model, data["validation"], labels=labels, metrics=recipe.eval.metrics, **eval_kwargs, progress=bar
        )

    def checkpoint(step: int) -> None:
        rng_states = gather_rng_states(accelerator)
        unwrapped = accelerator.unwrap_model(model)
        # a save that fails on the main process fails on every process (none waits for it at a barrier)
        main_process_call(
            accelerator,
            lambda: save_checkpoint(
                out, step, unwrapped, optimizer, scheduler, tc.keep_checkpoints, rng_states=rng_states
            ),
        )

    result = fit(
        model,
        optimizer,
        scheduler,
        accelerator,
        data=data["train"],
        settings=tc,
        group_by_length=recipe.data.group_by_length,
        pad_token_id=tokenizer.pad_token_id,
        padding_side=tokenizer.padding_side,
        start_step=start_step,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        log=log,
        evaluate=evaluate if len(data["validation"]) else None,
        checkpoint=checkpoint if can_checkpoint else None,
        callbacks=[*callbacks, tracker] if tracker else callbacks,
        progress=progress,
        class_weights=class_weights,
    )

    # 5. Final evaluation (of the best evaluation's weights with keep_best), adapter, metrics, plots and card.
    def final(name: str) -> dict:
        return evaluate_split(
            model,
            data[name],
            labels=labels,
            metrics=recipe.eval.metrics,
            full=True,
            **eval_kwargs,
            progress=name if progress else None,
        )

    # n: the training split after data.max_train_examples (the adapter card shows the run's own counts)
    results = {"train": {"n": len(data["train"]), **result.summary(log.last_loss)}}
    if class_weights is not None:
        assert labels is not None  # class weights come from the label names (`_class_weights`)
        results["train"]["class_weights"] = dict(
            zip(labels, (round(w, 4) for w in class_weights), strict=True)
        )
    if len(data["validation"]):
        results["validation"] = final("validation")
        if tracker is None or tracker.last_step != result.step:  # an early stop evaluated this step already
            scalars = {f"eval/{k}": v for k, v in results["validation"].items() if isinstance(v, float)}
            log.log(result.step, scalars)  # the eval curve's last point
            if tracker is not None:
                tracker.observe(result.step, results["validation"], save=False)
        if tracker is not None:
            assert tracker.best is not None  # the final evaluation was observed (above, or by an early stop)
            if tracker.keep and tracker.best.step != result.step:
                accelerator.wait_for_everyone()  # the main process has written the best weights
                tracker.restore(accelerator.unwrap_model(model))
                results["validation"] = final("validation")  # the kept adapter's own numbers
            results["best"] = tracker.summary(result.step)
    if len(data["test"]) and evaluate_test:
        results["test"] = final("test")
    if rc.task == "causal_lm":
        for name in ("validation", "test"):
            if name in results:
                results[name].update(
                    evaluate_base(accelerator.unwrap_model(model), data[name], **eval_kwargs)
                )
    log.close()
    # gathered from every process (FSDP / ZeRO-3 shard weights)
    state_dict = accelerator.get_state_dict(model)

    def write_outputs() -> None:
        meta = _adapter_meta(recipe, checked.source, tokenizer, labels, accelerator.unwrap_model(model))
        save_adapter(accelerator.unwrap_model(model), out / "adapter", meta, state_dict=state_dict)
        atomic_write_json(out / "metrics.json", results)
        write_run_plots(out)
        write_adapter_card(out, final_dir=run.target)
        if tracker is not None:
            tracker.clean_up()  # the adapter now holds the best weights

    main_process_call(accelerator, write_outputs)
    run.commit()


def _class_weights(recipe: Recipe, labels, label_ids) -> list[float] | None:
    """The loss weight per label id (None: the model's own loss), after warning about skewed training labels
    that the headline metric (accuracy) would hide."""
    if labels is None:
        return None
    message = balance.skew_warning(
        balance.label_counts(label_ids, labels),
        where=f"training split of data card '{recipe.data.card}'",
        headline=recipe.eval.metrics[0] if recipe.eval.metrics else None,
    )
    if message:
        warnings.warn(message, stacklevel=4)
    return balance.class_weights(recipe.train.class_weights, labels, label_ids)


def _setup_model(
    recipe: Recipe, source, tokenizer, labels, dtype: str, device, total_steps: int, init_from: Path | None
):
    """The base model on `device`, prepared for a quantized base or gradient checkpointing, with the method on
    top (a new adapter, or the one `init_from` continues); on CPU, with the CPU fast path (`peftkit.cpu`)."""
    rc, tc = recipe.model, recipe.train
    quantization = recipe.quantization.model_dump() if recipe.quantization else None
    model, _ = load_model_and_tokenizer(
        source,
        task=rc.task,
        labels=labels,
        pooling=rc.pooling,
        dtype=dtype,
        device=str(device),
        quantization=quantization,
        cache_dir=rc.cache_dir,
        tokenizer=tokenizer,
    )
    if quantization:
        model = prepare_quantized_for_training(model, gradient_checkpointing=tc.gradient_checkpointing)
    elif tc.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if init_from is not None:
        model = continue_adapter(model, init_from)
    else:
        model = apply_method(
            model,
            name=recipe.method.name,
            settings=recipe.method.settings(),
            task=rc.task,
            total_steps=total_steps,
        )
    if device.type == "cpu":
        cpu.enable(model)
    return model


def _best_tracker(recipe: Recipe, out: Path, model, accelerator) -> BestTracker:
    """The tracker of the best validation result: early stopping's metric, else the validation loss."""
    stopping = recipe.train.early_stopping
    return BestTracker(
        out,
        metric=stopping.metric if stopping else "loss",
        mode=stopping.mode if stopping else "auto",
        patience=stopping.patience if stopping else None,
        min_delta=stopping.min_delta if stopping else 0.0,
        keep=recipe.train.keep_best,
        weights=lambda: trainable_weights(accelerator.unwrap_model(model)),
        on_main=lambda write: main_process_call(accelerator, write),
    )


def build_optimizer(model, name: str, learning_rate: float, weight_decay: float):
    """AdamW (torch) over the trainable parameters, or a bitsandbytes 8-bit / paged variant."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name != "adamw":
        return bnb_optimizer(name, params, lr=learning_rate, weight_decay=weight_decay)
    # The fused kernel: one pass over each tensor instead of ~10 per-parameter ops (same update); on CPU for fp32
    # parameters, on a GPU always (the Trainer's default, adamw_torch_fused, too).
    fused = all(
        p.device.type == "cuda" or (p.device.type == "cpu" and p.dtype == torch.float32) for p in params
    )
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=fused or None)


def build_scheduler(optimizer, name: str, warmup_ratio: float, total_steps: int):
    """Linear warm-up over `warmup_ratio` of the steps, then `name` decay (transformers' schedulers)."""
    from transformers import get_scheduler

    warmup = int(warmup_ratio * total_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def _adapter_meta(recipe: Recipe, source, tokenizer, labels, model) -> dict:
    """peftkit's metadata for the adapter bundle: what the adapter was trained on, for the fingerprint check."""
    resolved = recipe_to_yaml(recipe)
    return {
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
        "init_from": recipe.method.init_from,
        "max_length": recipe.data.max_length,
        "data_card": recipe.data.card,
        "quantization": recipe.quantization.model_dump() if recipe.quantization else None,
        "recipe_hash": "sha256:" + hashlib.sha256(resolved.encode()).hexdigest(),
    }
