"""Resumable checkpoints: trainable weights, optimizer, scheduler and RNG state at an optimizer step.

`checkpoints/step-000040/` holds trainable.safetensors (only the parameters that train), optimizer.pt and
scheduler.pt (tensors and numbers only: read back with weights_only=True), rng.pt (rng-1.pt, … for the other
processes of a multi-process run) and state.json. A checkpoint folder appears atomically, so an interrupted save
never leaves a half checkpoint to resume from. Only the main process writes; the RNG states of all processes are
gathered to it first (`peftkit.training.distributed.gather_rng_states`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peftkit.errors import PeftkitError
from peftkit.fileio import atomic_dir


def _trainable(model) -> dict:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


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
    names, so any process count can read them); `rng_states` holds one state per process (default: this one's)."""
    import torch
    from safetensors.torch import save_file

    from peftkit.training.distributed import local_rng_state

    if not is_main:
        return
    rng_states = rng_states or [local_rng_state()]
    root = out / "checkpoints"
    with atomic_dir(root / f"step-{step:06d}") as tmp:
        save_file(_trainable(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        for rank, rng in enumerate(rng_states):
            torch.save(rng, tmp / ("rng.pt" if rank == 0 else f"rng-{rank}.pt"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "processes": len(rng_states)}) + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    found = sorted(p for p in (out / "checkpoints").glob("step-*") if (p / "state.json").is_file())
    return found[-1] if found else None


def restore_checkpoint(
    out: Path, model, optimizer, scheduler, process_index: int = 0, processes: int = 1
) -> int:
    """Load the newest checkpoint into model/optimizer/scheduler and this process's RNGs; return its step.

    A run resumes with the process count it was started with: the global batch, and so the data order, depend on it.
    """
    import torch
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise PeftkitError(
            f"--resume: no complete checkpoint under {out / 'checkpoints'}. Start the run again "
            f"without --resume."
        )
    state = json.loads((ckpt / "state.json").read_text())
    if state.get("processes", 1) != processes:
        raise PeftkitError(
            f"--resume: checkpoint {ckpt} was written by a run of {state.get('processes', 1)} process(es), this one "
            f"has {processes}. The global batch and data order depend on the process count: resume with "
            f"--processes {state.get('processes', 1)}."
        )
    weights = load_file(str(ckpt / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise PeftkitError(
            f"--resume: checkpoint {ckpt} does not match this recipe's model ({len(missing)} trainable "
            f"tensors missing, e.g. {missing[0]}). Resume with the recipe the run was started with."
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(
        ckpt / ("rng.pt" if process_index == 0 else f"rng-{process_index}.pt"), weights_only=True
    )
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state["step"]
