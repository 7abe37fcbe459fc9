"""The framework-neutral halves of the model classes: the class registry, input and config
checks, per-family formulas, losses, outputs and the shared docstrings."""
