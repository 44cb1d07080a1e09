"""The training loop: optimizer steps over seeded, length-grouped batches until the step budget is spent.

Plain PyTorch under accelerate (one process, or several through `accelerate launch`). Batches come from a
(seed, epoch)-keyed order and the RNG state is checkpointed, so a run resumed at step k reproduces the
uninterrupted one. In-loop evaluations are timed apart: the throughput in `FitResult` is training time alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from peftkit.data.prepare import TokenizedSplit, batch_order, collate_split
from peftkit.recipe.schema import TrainSpec
from peftkit.training.distributed import shard_steps
from peftkit.training.run_log import RunLog


class StopTraining(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by a callback to end training after the current step; the run then finishes as usual (final
    evaluation, adapter, metrics)."""


class TrainCallback:
    """Hooks into `fit`; override what you need. Raising `StopTraining` ends the run early (it still finishes);
    any other exception aborts it, leaving the run folder resumable from its last checkpoint (with a note on stderr
    saying so, unless the exception has a true `quiet` attribute, as a pruned tuning trial's has)."""

    def on_step(self, step: int, loss: float) -> None:
        """After optimizer step `step` (its checkpoint, if due, is already written)."""

    def on_evaluate(self, step: int, metrics: dict) -> None:
        """After an in-loop validation at `step`; `metrics` are the scalar metrics without the `eval/` prefix."""


@dataclass
class FitResult:
    """What the loop did: the last step, and the examples, real tokens and seconds of this process's training
    (summed over processes), in-loop evaluations excluded."""

    step: int
    examples: int
    tokens: int
    seconds: float

    def summary(self, final_loss: float | None) -> dict:
        """The `train` block of metrics.json."""
        seconds = max(self.seconds, 1e-9)
        return {
            "steps": self.step,
            "examples": self.examples,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "examples_per_second": round(self.examples / seconds, 2),
            "tokens_per_second": round(self.tokens / seconds, 1),
            "final_loss": final_loss,
        }


def fit(
    model,
    optimizer,
    scheduler,
    accelerator,
    *,
    data: TokenizedSplit,
    settings: TrainSpec,
    group_by_length: bool,
    pad_token_id: int,
    padding_side: str,
    start_step: int,
    total_steps: int,
    steps_per_epoch: int,
    log: RunLog,
    evaluate: Callable[[], dict] | None,
    checkpoint: Callable[[int], None] | None,
    callbacks: Sequence[TrainCallback] = (),
    progress: bool = True,
    class_weights: Sequence[float] | None = None,
) -> FitResult:
    """Train from `start_step` to `total_steps`; `evaluate()` gives validation metrics (None: no validation),
    `checkpoint(step)` writes a resumable checkpoint (None: no checkpoints). `class_weights` (one per label id):
    the loss is the weighted cross-entropy of the logits instead of the model's own loss."""
    # Clipping reads only parameters with gradients: listing the trainable ones skips ~1 ms a step of walking the
    # frozen base (accelerate's FSDP path needs the model's own parameter list).
    fsdp = str(accelerator.distributed_type).endswith("FSDP")
    clip_params = [p for p in model.parameters() if fsdp or p.requires_grad]
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        disable=not (progress and accelerator.is_main_process),
        desc="train",
        unit="step",
    )
    step, examples, tokens, eval_seconds = start_step, 0, 0, 0.0
    weights = None if class_weights is None else torch.tensor(class_weights, device=accelerator.device)
    t0 = time.perf_counter()

    def validate() -> None:
        nonlocal eval_seconds
        started = time.perf_counter()
        assert evaluate is not None  # validate runs only when fit was given `evaluate`
        metrics = evaluate()
        log.log(step, {f"eval/{k}": v for k, v in metrics.items()})
        eval_seconds += time.perf_counter() - started
        for callback in callbacks:
            callback.on_evaluate(step, metrics)

    model.train()
    try:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            steps = _epoch_steps(data, settings, group_by_length, epoch, accelerator, class_weights)
            for micro_batches in steps[offset:]:
                step_loss, n_examples, n_tokens = _step(
                    model, optimizer, accelerator, data, micro_batches, pad_token_id, padding_side, weights
                )
                if settings.max_grad_norm:
                    accelerator.clip_grad_norm_(clip_params, settings.max_grad_norm)
                optimizer.step()
                adalora_update(model, step)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step, examples, tokens = step + 1, examples + n_examples, tokens + n_tokens
                bar.update(1)
                logged = step % settings.log_every == 0 or step == total_steps
                # The loss stays on the device between log steps: reading it is a host sync that would stall a GPU
                # every step (the Trainer's logging_steps does the same).
                loss = step_loss.item() if logged or callbacks else step_loss
                if logged:
                    bar.set_postfix(loss=f"{loss:.4f}")
                    log.log(step, {"loss": loss, "lr": scheduler.get_last_lr()[0]})
                # the last step's validation is the final evaluation, not an in-loop one
                every = settings.eval_every
                if evaluate and every and step % every == 0 and step < total_steps:
                    validate()
                if checkpoint and settings.save_every and step % settings.save_every == 0:
                    checkpoint(step)
                for callback in callbacks:  # with callbacks the loss was read above: float() keeps it as is
                    callback.on_step(step, float(loss))
                if step >= total_steps:
                    break
            else:  # an epoch ended before the last step (the last epoch's `break` skips this)
                if evaluate and not settings.eval_every:
                    validate()
    except StopTraining:
        pass
    finally:
        bar.close()
    seconds = time.perf_counter() - t0 - eval_seconds
    if accelerator.num_processes > 1:  # throughput counts the examples of every process
        examples, tokens = (
            int(accelerator.reduce(torch.tensor(v, device=accelerator.device), "sum"))
            for v in (examples, tokens)
        )
    return FitResult(step, examples, tokens, seconds)


def _epoch_steps(
    data: TokenizedSplit, settings: TrainSpec, group_by_length: bool, epoch: int, accelerator, class_weights
):
    """Optimizer steps of this epoch: each a list of (index list, loss weight) micro-batches for this process."""
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batches = batch_order(
        data.lengths,
        settings.batch_size * world,
        seed=settings.seed,
        epoch=epoch,
        group_by_length=group_by_length,
    )
    # What each example counts in the model's mean loss: 1 (classification), its class weight (a class-weighted
    # mean divides by the batch's summed weights), or (causal LM) its target tokens after the shift.
    if class_weights is not None:
        # class weights exist only for classification, whose splits have labels
        assert data.labels is not None
        sizes = [class_weights[label] for label in data.labels]
    elif data.labels is not None:
        sizes = [1] * len(data)
    else:
        sizes = [max(n - 1, 0) for n in data.lengths]
    return shard_steps(global_batches, settings.grad_accum_steps, rank, world, sizes.__getitem__)


def _step(
    model, optimizer, accelerator, data, micro_batches, pad_token_id, padding_side, class_weights=None
) -> tuple[torch.Tensor, int, int]:
    """Forward and backward over one optimizer step's micro-batches; returns (mean loss as a tensor on the device,
    examples, real tokens). Nothing here waits for the device: tokens are counted from the host-side lengths."""
    loss_sum, examples, tokens = torch.zeros((), device=accelerator.device), 0, 0
    for i, (idx, weight) in enumerate(micro_batches):
        batch = collate_split(data, idx, pad_token_id, padding_side, accelerator.device)
        labels = batch.pop("labels") if class_weights is not None else None
        # Gradients are all-reduced once per optimizer step, on its last micro-batch.
        sync = accelerator.no_sync(model) if i < len(micro_batches) - 1 else nullcontext()
        with sync, accelerator.autocast():
            output = model(**batch)
            mean = (
                output.loss
                if labels is None
                else torch.nn.functional.cross_entropy(output.logits.float(), labels, weight=class_weights)
            )
            # weight 0: a placeholder batch (this process's slice is empty) that only keeps collectives aligned
            loss = (mean if weight else output.logits.sum()) * weight
        accelerator.backward(loss)
        loss_sum += loss.detach().float()
        examples += len(idx) if weight else 0
        tokens += sum(len(data.ids[j]) for j in idx) if weight else 0
    if accelerator.num_processes > 1:  # the global batch's mean loss, as one process would log it
        loss_sum = accelerator.reduce(loss_sum, "mean")
    return loss_sum, examples, tokens


def adalora_update(model, step: int) -> None:
    """AdaLoRA reallocates ranks after the optimizer step, while the gradients still exist (PEFT's order: a mask
    applied before the step would be undone by it, and the saved adapter would then differ from the trained one)."""
    base = getattr(model, "base_model", None)
    if base is not None and hasattr(base, "update_and_allocate"):
        base.update_and_allocate(step)
