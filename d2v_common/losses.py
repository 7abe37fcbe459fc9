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
