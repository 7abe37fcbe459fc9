"""Framework-neutral loss rules both model packages follow."""

from __future__ import annotations

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
