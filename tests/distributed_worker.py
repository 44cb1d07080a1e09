"""Run by `accelerate launch` in tests/test_distributed.py: several trainings in one multi-process launch (starting
processes costs more than these tiny runs). Arguments: RECIPE (the `peftkit train` CLI), RECIPE@STEP (stop after
STEP, as an interruption would), RECIPE@resume (`peftkit train --resume`)."""

import sys

from peftkit.cli import main
from peftkit.recipe import load_recipe
from peftkit.training.recipe import train

if __name__ == "__main__":
    for spec in sys.argv[1:]:
        path, _, how = spec.partition("@")
        if how and how != "resume":
            train(load_recipe(path), progress=False, stop_after_step=int(how))
        elif main(["train", path, "--no-progress", *(["--resume"] if how else [])]) != 0:
            sys.exit(2)
