"""Training: build a model from a recipe, the outer loop, evaluation, checkpoints, reports."""
