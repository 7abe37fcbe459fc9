"""Framework-neutral loss rules both model packages follow."""

from __future__ import annotations

import numpy as np

# Integer label dtypes that make HF pick single-label classification (others: multi-label).
SINGLE_LABEL_DTYPES = ("int64", "int32")


def infer_problem_type(num_labels: int, labels_dtype: str) -> str:
    """HF's choice when ``config.problem_type`` is unset."""
    if num_labels == 1:
        return "regression"
    if num_labels > 1 and labels_dtype in SINGLE_LABEL_DTYPES:
        return "single_label_classification"
    return "multi_label_classification"


def check_classification_labels(config, shape: tuple, dtype: str, batch) -> None:
    """Labels that fit the loss ``config.problem_type`` picks (or will pick, when unset).

    Single-label classification takes integer class ids, one per row: float labels would be
    truncated to ids silently. Multi-label takes one target per class. Sizes that are unknown
    (None, a traced batch) pass; the class range needs the values and is checked elsewhere.
    """
    dtype = str(dtype).replace("torch.", "")
    problem = config.problem_type or infer_problem_type(config.num_labels, dtype)
    if len(shape) and shape[0] is not None and batch is not None and int(shape[0]) != int(batch):
        raise ValueError(f"labels has batch size {shape[0]}, the input has {batch}")
    if problem == "single_label_classification":
        if "int" not in dtype:
            raise TypeError(
                f"labels must be integer class ids for single_label_classification, got dtype {dtype}"
            )
        if len(shape) > 2 or (len(shape) == 2 and shape[1] not in (1, None)):
            raise ValueError(f"single-label classification labels must have shape (batch,), got {tuple(shape)}")
    elif problem == "multi_label_classification":
        expected = (batch, config.num_labels)
        if len(shape) != 2 or (shape[1] is not None and int(shape[1]) != config.num_labels):
            raise ValueError(
                f"multi-label classification labels must have shape (batch, num_labels) = {expected}, "
                f"got {tuple(shape)}"
            )


# ----------------------------------------------------------------------------- label range
# The ignore index of torch's cross-entropy (and HF's heads).
IGNORE_INDEX = -100
# How many offending values a range error shows (a compiled step records as many).
SHOWN_BAD_LABELS = 5


def label_range_message(name: str, num_classes: int, ignore_index: int | None, bad_values) -> str:
    """The one message for class labels outside ``[0, num_classes)``, in every framework and
    mode (eager, graph, XLA, jax.jit): ``bad_values`` are the first offending values."""
    ignore = "" if ignore_index is None else f" or {ignore_index} to ignore"
    shown = [int(v) for v in list(bad_values)[:SHOWN_BAD_LABELS]]
    return f"{name} must be in [0, {num_classes}){ignore}, got {shown}"


def label_range_summary(name: str, num_classes: int, ignore_index: int | None) -> str:
    """The message without the values, for a check that cannot show them (a graph assert)."""
    ignore = "" if ignore_index is None else f" or {ignore_index} to ignore"
    return f"{name} must be in [0, {num_classes}){ignore}"


def labels_out_of_range(values, num_classes: int, ignore_index: int | None):
    """Where ``values`` are neither a class id nor the ignore index; works on numpy arrays and
    on framework tensors that support the comparison operators."""
    bad = (values < 0) | (values >= num_classes)
    return bad if ignore_index is None else bad & (values != ignore_index)


def check_label_range(name: str, values, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> None:
    """``ValueError`` (``label_range_message``) unless every label is a class id in
    ``[0, num_classes)`` or ``ignore_index`` (None: no ignore index). Every class-label loss of
    both frameworks runs this on known values; compiled steps run the same comparison and
    report with the same message.

    Examples:

    >>> import numpy as np
    >>> check_label_range("labels", np.array([0, 2, -100]), 3)
    """
    values = np.asarray(values)
    if values.size == 0:
        return
    bad = labels_out_of_range(values, num_classes, ignore_index)
    if bad.any():
        raise ValueError(label_range_message(name, num_classes, ignore_index, values[bad]))
