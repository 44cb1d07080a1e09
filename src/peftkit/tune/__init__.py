"""`peftkit tune`: hyperparameter search over a recipe with Optuna (the `peftkit[tune]` extra).

space (what may vary, per method family, or a YAML file) → objective (one trial = one training run on the
validation split, pruned from its in-loop curve) → study (storage, resume, several processes) → report (table,
plots, the best recipe as YAML).
"""
