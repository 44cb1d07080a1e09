"""Run by `accelerate launch` in tests/test_distributed.py: several trainings in one multi-process launch (starting
processes costs more than these tiny runs). Arguments: RECIPE (the `peftkit train` CLI), RECIPE@STEP (stop after
STEP, as an interruption would), RECIPE@resume (`peftkit train --resume`)."""

import contextlib
import sys

from peftkit.cli import main
from peftkit.recipe import load_recipe
from peftkit.training.recipe import train
from tests.helpers import Interrupted, interrupt_at

if __name__ == "__main__":
    for spec in sys.argv[1:]:
        path, _, how = spec.partition("@")
        if how and how != "resume":
            with contextlib.suppress(Interrupted):
                train(load_recipe(path), progress=False, callbacks=[interrupt_at(int(how))])
        elif main(["train", path, "--no-progress", *(["--resume"] if how else [])]) != 0:
            sys.exit(2)
