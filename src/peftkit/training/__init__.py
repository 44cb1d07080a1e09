"""Training: `recipe.train` (the workflow, top to bottom), the preflight checks it shares with `peftkit validate`,
resumable checkpoints and multi-process training through accelerate."""
