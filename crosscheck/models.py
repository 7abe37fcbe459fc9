"""The eager d2v models a case runs in, built from the case's weights (both frameworks).

The parity table (``runner``) and its runtime columns (``runtimes``) build models here, so
neither imports the other for it.
"""

from __future__ import annotations

from crosscheck.cases.base import Case


def build_torch_model(case: Case, arrays):
    """The d2v PyTorch model of ``case`` holding ``arrays``, in eval mode."""
    import d2v_torch

    model = d2v_torch.model_class(case.architecture)(case.config)
    model.load_arrays(arrays)
    return model.eval()


def build_keras_model(case: Case, arrays):
    """The d2v Keras model of ``case`` holding ``arrays``."""
    import d2v_tf

    model = d2v_tf.model_class(case.architecture)(case.config)
    model.load_arrays(arrays)
    return model


# framework -> builder(case, arrays) of the eager model
MODEL_BUILDERS = {"torch": build_torch_model, "keras": build_keras_model}
