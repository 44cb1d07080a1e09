"""Resumable checkpoints: trainable weights, optimizer, scheduler and RNG state at an optimizer step.

`checkpoints/step-000040/` holds trainable.safetensors (only the parameters that train), optimizer.pt and
scheduler.pt (tensors and numbers only: read back with weights_only=True), rng.pt (rng-1.pt, … for the other
processes of a multi-process run) and state.json. A checkpoint folder appears atomically (written under a temporary
name, flushed to disk, renamed), so a kill or a full disk during a save never leaves a half checkpoint to resume
from: the run stays resumable from the one before. Only the main process writes; the RNG states of all processes are
gathered to it first (`peftkit.training.distributed.gather_rng_states`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from peftkit.errors import PeftkitError, shorten
from peftkit.fileio import atomic_dir, free_space, remove_dir, write_failure


def _trainable(model) -> dict:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _torch_bytes(obj) -> bytes:
    """torch.save into memory: written by Python, a failed write raises an OSError with its errno (torch's own
    writer reports a full disk as 'unexpected pos')."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(
    out: Path,
    step: int,
    model,
    optimizer,
    scheduler,
    keep: int,
    is_main: bool = True,
    rng_states: list[dict] | None = None,
) -> None:
    """Write checkpoint `step` and prune to the newest `keep`. `model` is the unwrapped model (plain parameter
    names, so any process count can read them); `rng_states` holds one state per process (default: this one's).

    A save that cannot be written (disk full, file size limit, I/O error) removes its partial files and raises a
    PeftkitError naming the last complete checkpoint.
    """
    from safetensors.torch import save

    from peftkit.training.distributed import local_rng_state

    if not is_main:
        return
    rng_states = rng_states or [local_rng_state()]
    root = out / "checkpoints"
    name = f"step-{step:06d}"
    try:
        with atomic_dir(root / name) as tmp:
            (tmp / "trainable.safetensors").write_bytes(save(_trainable(model)))
            (tmp / "optimizer.pt").write_bytes(_torch_bytes(optimizer.state_dict()))
            (tmp / "scheduler.pt").write_bytes(_torch_bytes(scheduler.state_dict()))
            for rank, rng in enumerate(rng_states):
                (tmp / ("rng.pt" if rank == 0 else f"rng-{rank}.pt")).write_bytes(_torch_bytes(rng))
            (tmp / "state.json").write_text(json.dumps({"step": step, "processes": len(rng_states)}) + "\n")
    except Exception as exc:
        reason = write_failure(exc)
        if reason is None:
            raise
        previous = latest_checkpoint(out)
        raise PeftkitError(
            f"checkpoint {name} could not be written in '{root}': {reason} ({free_space(root)}). Its partial files "
            f"were removed; "
            + (
                f"the last complete checkpoint is {previous.name}."
                if previous
                else "no earlier checkpoint was written."
            )
        ) from None
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        remove_dir(old)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    found = sorted(p for p in (out / "checkpoints").glob("step-*") if (p / "state.json").is_file())
    return found[-1] if found else None


def check_checkpoint(out: Path, processes: int = 1) -> Path:
    """The newest complete checkpoint of run folder `out`, after checking that every file `restore_checkpoint`
    reads is there and readable, and that it was written by a run of `processes` processes; raises PeftkitError
    otherwise. Nothing is written."""
    import torch
    from safetensors import safe_open

    ckpt = latest_checkpoint(out)
    if ckpt is None:
        partial = sorted((out / "checkpoints").glob("step-*"))
        found = f" ({', '.join(p.name for p in partial[:3])}: unfinished, no state.json)" if partial else ""
        raise PeftkitError(
            f"--resume: run folder '{out}' has no checkpoint to resume from{found}. Start the run without "
            f"--resume (add --overwrite to replace the folder)."
        )
    earlier = [
        p for p in sorted((out / "checkpoints").glob("step-*")) if p < ckpt and (p / "state.json").is_file()
    ]
    fix = (
        f"Delete that folder to resume from {earlier[-1].name}, or start over with --overwrite"
        if earlier
        else "There is no earlier checkpoint: start over with --overwrite"
    )

    def damaged(what: str) -> PeftkitError:
        return PeftkitError(f"--resume: checkpoint '{ckpt}' is damaged: {what}. {fix}.")

    try:
        state = json.loads((ckpt / "state.json").read_text())
        step, written_by = int(state["step"]), int(state.get("processes", 1))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise damaged('state.json is not the JSON object peftkit writes ({"step": N, ...})') from None
    if written_by != processes:
        raise PeftkitError(
            f"--resume: checkpoint {ckpt} was written by a run of {written_by} process(es), this one has "
            f"{processes}. The global batch and data order depend on the process count: resume with "
            f"--processes {written_by}."
        )
    files = ["trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"]
    files += [f"rng-{rank}.pt" for rank in range(1, written_by)]
    for name in files:
        path = ckpt / name
        if not path.is_file():
            raise damaged(f"{name} is missing")
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(path), framework="pt") as fh:
                    fh.keys()
            else:  # mmap: the archive and its tensor records are checked without reading the tensors in
                torch.load(path, weights_only=True, mmap=True)
        except Exception as exc:  # torch and safetensors raise many types for a truncated or altered file
            raise damaged(f"{name} cannot be read ({type(exc).__name__}: {shorten(exc, 160)})") from None
    if step <= 0:
        raise damaged(f"state.json says step {step}")
    return ckpt


def restore_checkpoint(out: Path, model, optimizer, scheduler, process_index: int = 0) -> int:
    """Load the newest checkpoint (checked by `check_checkpoint` before anything was written) into
    model/optimizer/scheduler and this process's RNGs; return its step.

    A run resumes with the process count it was started with: the global batch, and so the data order, depend on it.
    """
    import torch
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise PeftkitError(
            f"--resume: no complete checkpoint under {out / 'checkpoints'}. Start the run again without --resume."
        )
    state = json.loads((ckpt / "state.json").read_text())
    weights = load_file(str(ckpt / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    missing += [n for n, t in weights.items() if n not in params or params[n].shape != t.shape]
    if missing:
        raise PeftkitError(
            f"--resume: checkpoint {ckpt} does not match this recipe's model ({len(missing)} trainable "
            f"tensors missing or of another shape, e.g. {missing[0]}): the method or its settings changed. Resume "
            f"with the recipe the run was started with (its recipe.resolved.yaml), or start over with --overwrite."
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    try:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise PeftkitError(
            f"--resume: the optimizer state in {ckpt} does not fit this recipe's optimizer ({shorten(exc, 160)}). "
            f"Resume with the recipe the run was started with (train.optimizer), or start over with --overwrite."
        ) from None
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(
        ckpt / ("rng.pt" if process_index == 0 else f"rng-{process_index}.pt"), weights_only=True
    )
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state["step"]
