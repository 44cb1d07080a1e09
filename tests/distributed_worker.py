"""Run by `accelerate launch` in tests/test_distributed.py: several trainings in one multi-process launch (starting
processes costs more than these tiny runs). Arguments: RECIPE (the `peftkit train` CLI), RECIPE@STEP (stop after
STEP, as an interruption would), RECIPE@resume (`peftkit train --resume`)."""

import contextlib
import sys

from peftkit.cli import main
from peftkit.recipe import load_recipe
from peftkit.training.loop import TrainCallback
from peftkit.training.recipe import train


class Interrupted(Exception):
    pass


class InterruptAt(TrainCallback):
    def __init__(self, k: int):
        self.k = k

    def on_step(self, step: int, loss: float) -> None:
        if step == self.k:
            raise Interrupted(step)


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        path, _, how = spec.partition("@")
        if how and how != "resume":
            with contextlib.suppress(Interrupted):
                train(load_recipe(path), progress=False, callbacks=[InterruptAt(int(how))])
        elif main(["train", path, "--no-progress", *(["--resume"] if how else [])]) != 0:
            sys.exit(2)
