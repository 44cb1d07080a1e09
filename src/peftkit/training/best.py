"""Early stopping and the best adapter: a `TrainCallback` that watches one validation metric.

Every evaluation (in the loop, then the final one) is compared with the best so far. With `keep_best`, the
trainable weights of each new best go to `RUN/checkpoints/best-NNNNNN/` (atomically, main process only); at the
end `train` loads the best back before the adapter is saved. With early stopping, `patience` evaluations in a row
without improvement raise `StopTraining`: the run then finishes as usual.

Resume: the tracker replays the evaluations that `train_log.jsonl` holds up to the checkpoint, so a resumed run
stops where the uninterrupted one would. Of the best snapshots, the newest one and the newest one not after the
latest checkpoint are kept: whichever checkpoint a run resumes from, the best it knew then is on disk.
Several processes: every process sees the same gathered metrics, so all stop at the same step.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peftkit.errors import PeftkitError
from peftkit.fileio import atomic_dir
from peftkit.training.checkpoints import latest_checkpoint
from peftkit.training.loop import StopTraining, TrainCallback

LOWER_IS_BETTER = ("loss", "perplexity")
WEIGHTS_FILE = "trainable.safetensors"


def resolved_mode(metric: str, mode: str) -> str:
    """`min` or `max`: `auto` means min for losses and perplexity, max for scores."""
    if mode != "auto":
        return mode
    return "min" if metric in LOWER_IS_BETTER else "max"


@dataclass
class Evaluation:
    step: int
    value: float


class BestTracker(TrainCallback):
    """Tracks the best value of validation `metric`; saves its weights (`keep`) and stops after `patience`
    evaluations without improvement (None: never stops). `on_main(write)` runs a file write on the main process
    only, every process taking part (`training.distributed.main_process_call`)."""

    def __init__(
        self,
        out: Path,
        *,
        metric: str,
        mode: str,
        patience: int | None,
        min_delta: float,
        keep: bool,
        weights: Callable[[], dict],
        on_main: Callable[[Callable[[], None]], object] = lambda write: write(),
    ):
        self.out, self.metric, self.mode = out, metric, resolved_mode(metric, mode)
        self.patience, self.min_delta, self.keep = patience, min_delta, keep
        self.weights, self.on_main = weights, on_main
        self.best: Evaluation | None = None
        self.last_step: int | None = None
        self.stopped_at: int | None = None
        self.without_improvement = 0

    def resume(self, log_rows: list[dict], start_step: int) -> None:
        """Replay the evaluations logged up to `start_step`; forget snapshots from after it."""
        key = f"eval/{self.metric}"
        for row in log_rows:
            if key in row and row["step"] <= start_step:
                self._observe(row["step"], row[key])

        def forget() -> None:
            for folder in self._snapshots():
                if _step_of(folder) > start_step:
                    shutil.rmtree(folder, ignore_errors=True)

        self.on_main(forget)

    def on_evaluate(self, step: int, metrics: dict) -> None:
        self.observe(step, metrics)
        if self.patience and self.without_improvement >= self.patience:
            self.stopped_at = step
            raise StopTraining

    def observe(self, step: int, metrics: dict, *, save: bool = True) -> bool:
        """Record an evaluation at `step`; True when it is a new best (its weights are then saved when `keep` and
        `save`: the final evaluation's weights are the model's own and need no copy)."""
        if self.metric not in metrics:
            scalars = sorted(k for k, v in metrics.items() if isinstance(v, float))
            raise PeftkitError(
                f"train.early_stopping.metric: the validation results have no '{self.metric}' (they have "
                f"{', '.join(scalars)}). Set train.early_stopping.metric to one of those."
            )
        improved = self._observe(step, float(metrics[self.metric]))
        if improved and self.keep and save:
            self.on_main(lambda: self._save(step))
        return improved

    def _observe(self, step: int, value: float) -> bool:
        self.last_step = step
        better = (
            self.best is None
            or (self.mode == "min" and value < self.best.value - self.min_delta)
            or (self.mode == "max" and value > self.best.value + self.min_delta)
        )
        if better:
            self.best, self.without_improvement = Evaluation(step, value), 0
        else:
            self.without_improvement += 1
        return better

    def _save(self, step: int) -> None:
        from safetensors.torch import save_file

        assert self.best is not None  # saved only when an evaluation was a new best
        with atomic_dir(self._folder(step)) as tmp:
            save_file(self.weights(), str(tmp / WEIGHTS_FILE))
            (tmp / "best.json").write_text(json.dumps({"step": step, self.metric: self.best.value}) + "\n")
        checkpoint = latest_checkpoint(self.out)
        resumable = _step_of(checkpoint) if checkpoint else 0
        older = [f for f in self._snapshots() if _step_of(f) <= resumable]
        keep = {self._folder(step), *older[-1:]}
        for folder in self._snapshots():
            if folder not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def restore(self, model) -> None:
        """Load the best evaluation's trainable weights into `model` (the unwrapped model)."""
        import torch
        from safetensors.torch import load_file

        assert self.best is not None, "restore needs an observed evaluation"
        path = self._folder(self.best.step) / WEIGHTS_FILE
        if not path.is_file():
            raise PeftkitError(
                f"train.keep_best: the weights of the best evaluation (step {self.best.step}) are missing from "
                f"{path.parent}. Train again with --overwrite, or set train.keep_best: false."
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in load_file(str(path)).items():
                params[name].copy_(tensor)

    def summary(self, last_step: int) -> dict:
        """The `best` block of metrics.json: which evaluation was best, and whether its adapter was kept."""
        assert self.best is not None, "summary needs an observed evaluation"
        return {
            "metric": self.metric,
            "mode": self.mode,
            "step": self.best.step,
            "value": self.best.value,
            "kept": self.keep,
            "last_step": last_step,
            "stopped_early": self.stopped_at is not None,
        }

    def clean_up(self) -> None:
        """Remove the best snapshots (once the adapter is saved, they are copies of it or of lesser steps)."""
        for folder in self._snapshots():
            shutil.rmtree(folder, ignore_errors=True)

    def _folder(self, step: int) -> Path:
        return self.out / "checkpoints" / f"best-{step:06d}"

    def _snapshots(self) -> list[Path]:
        return sorted((self.out / "checkpoints").glob("best-*"))


def _step_of(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[1])


def trainable_weights(model) -> dict:
    """The parameters that train, detached on the CPU: what a best snapshot holds."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
