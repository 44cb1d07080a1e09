"""Training curves: `train_log.jsonl` in the run folder always, plus tensorboard or wandb."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from peftkit.fileio import atomic_write_text

LOG_FILE = "train_log.jsonl"


class RunLog:
    """Writes one JSON line per logged step (and to tensorboard / wandb); only the main process writes."""

    def __init__(self, out: Path, report_to: str, start_step: int, active: bool):
        self.active, self.path, self.last_loss = active, out / LOG_FILE, None
        self.writer: Any = None  # a tensorboard SummaryWriter or a wandb run (untyped here)
        if not active:
            return
        # A resumed run drops log lines written after its checkpoint, so the log reads like one run.
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= start_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        if report_to == "auto":
            report_to = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "logs"), purge_step=start_step or None)
        elif report_to == "wandb":
            import wandb

            # `out` is NAME.partial while the run trains: the run is NAME
            self.writer = wandb.init(project="peftkit", name=out.name.removesuffix(".partial"), dir=str(out))

    def log(self, step: int, values: dict) -> None:
        """Record `values` (scalars; `eval/…` keys for evaluations) at optimizer step `step`."""
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
