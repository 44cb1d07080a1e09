"""Resumable checkpoints: trainable weights, optimizer, scheduler and RNG state at an optimizer step.

`checkpoints/step-000040/` holds trainable.safetensors (only the parameters that train), optimizer.pt and
scheduler.pt (tensors and numbers only: read back with weights_only=True), rng.pt and state.json. A checkpoint
folder appears atomically, so an interrupted save never leaves a half checkpoint to resume from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peftkit.errors import PeftkitError
from peftkit.fileio import atomic_dir


def _trainable(model) -> dict:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, keep: int, is_main: bool = True) -> None:
    """Write checkpoint `step` and prune to the newest `keep`."""
    import torch
    from safetensors.torch import save_file

    if not is_main:
        return
    root = out / "checkpoints"
    with atomic_dir(root / f"step-{step:06d}") as tmp:
        save_file(_trainable(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}) + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    found = sorted(p for p in (out / "checkpoints").glob("step-*") if (p / "state.json").is_file())
    return found[-1] if found else None


def restore_checkpoint(out: Path, model, optimizer, scheduler) -> int:
    """Load the newest checkpoint into model/optimizer/scheduler and the RNGs; return its step."""
    import torch
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise PeftkitError(f"--resume: no complete checkpoint under {out / 'checkpoints'}. Start the run again "
                           f"without --resume.")
    weights = load_file(str(ckpt / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise PeftkitError(f"--resume: checkpoint {ckpt} does not match this recipe's model ({len(missing)} trainable "
                           f"tensors missing, e.g. {missing[0]}). Resume with the recipe the run was started with.")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "state.json").read_text())["step"]
