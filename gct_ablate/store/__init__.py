"""What a study stores: the attribute keys of its Optuna study and trials, its recipe.

Optuna and MLflow attribute names live in :mod:`gct_ablate.store.keys` only; the full
training recipe of every cell, fixed at creation, in :mod:`gct_ablate.store.recipe`.
"""
