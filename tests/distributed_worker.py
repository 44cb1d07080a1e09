"""Run by `accelerate launch` in tests/test_distributed.py: train several recipes in one multi-process launch
(starting processes costs more than these tiny runs). Arguments: RECIPE[@STOP_AFTER_STEP] ..."""

import sys

from peftkit.recipe import load_recipe
from peftkit.train import train

if __name__ == "__main__":
    for spec in sys.argv[1:]:
        path, _, stop = spec.partition("@")
        train(load_recipe(path), progress=False, stop_after_step=int(stop) if stop else None)
