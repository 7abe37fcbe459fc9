"""What type and dtype a model input must have, and the message when it has not.

The PyTorch models call ``check_input_type`` on their main inputs before any layer runs, so a
numpy array, or float64 pixels given to a float32 model, fail with a ``TypeError`` that says
what to pass instead of an error from deep inside torch. Keras models take numpy arrays and
cast floating inputs themselves; they share the id check (``check_input_dtype``).
"""

from __future__ import annotations

from typing import Any

# How to convert an array into each framework's tensor, and a tensor to another dtype.
_CONVERSIONS = {
    "torch": ("torch.as_tensor({name})", "{name}.to(torch.{dtype})"),
    "tf": ("tf.convert_to_tensor({name})", "tf.cast({name}, tf.{dtype})"),
}


def _bare(dtype: Any) -> str:
    """``torch.float32`` / ``<dtype: 'float32'>`` / ``float32`` -> ``float32``."""
    text = str(getattr(dtype, "name", dtype))
    return text.replace("torch.", "")


def is_floating(dtype: Any) -> bool:
    return any(k in _bare(dtype) for k in ("float", "half", "bfloat"))


def check_input_type(
    name: str,
    value: Any,
    *,
    framework: str,
    tensor_types: type | tuple[type, ...],
    integer: bool = False,
    model_dtype: Any = None,
) -> None:
    """Raise ``TypeError`` unless ``value`` is a tensor the model can take as ``name``.

    Args:
        name: the argument's name (``pixel_values``, ``input_ids`` ...).
        value: what was passed.
        framework: ``"torch"`` or ``"tf"`` (picks the conversion shown in the message).
        tensor_types: the framework's tensor type(s) accepted.
        integer: the input holds indices (ids, masks) rather than values.
        model_dtype: for value inputs, the floating dtype the model computes in; None skips
            the dtype check.

    Examples:

    >>> import numpy as np
    >>> check_input_type("pixel_values", np.zeros((1, 3), "float32"), framework="torch", tensor_types=np.ndarray)
    """
    to_tensor = _CONVERSIONS[framework][0]
    if not isinstance(value, tensor_types):
        kind = f"{type(value).__module__}.{type(value).__name__}".replace("builtins.", "")
        raise TypeError(
            f"{name} must be a {framework} tensor, got {kind}; convert it first, e.g. "
            + to_tensor.format(name=name)
        )
    check_input_dtype(name, value.dtype, framework=framework, integer=integer, model_dtype=model_dtype)


def check_input_dtype(name: str, dtype: Any, *, framework: str, integer: bool = False, model_dtype: Any = None) -> None:
    """The dtype half of ``check_input_type`` (for inputs any array type may carry)."""
    to_dtype = _CONVERSIONS[framework][1]
    dtype = _bare(dtype)
    if integer:
        if is_floating(dtype) or dtype == "bool":
            raise TypeError(
                f"{name} must be an integer tensor (int64 or int32 indices), got {dtype}; convert it first, e.g. "
                + to_dtype.format(name=name, dtype="int64")
            )
        return
    if not is_floating(dtype):
        raise TypeError(f"{name} must be floating point, got {dtype}")
    if model_dtype is not None and dtype != _bare(model_dtype):
        want = _bare(model_dtype)
        raise TypeError(
            f"{name} is {dtype} but the model computes in {want}; convert it first, e.g. "
            + to_dtype.format(name=name, dtype=want)
        )


# The axes of an image batch (NCHW), for ``check_main_input``.
PIXEL_AXES = ("batch", "channels", "height", "width")


def check_main_input(name: str, shape: tuple, dtype: Any, axes: tuple[str, ...], *, integer: bool = False) -> None:
    """The one check of a model's main input (ids, waveforms, pixels) that every class of data2vec
    1.0 and 2.0, in both frameworks, runs first: its rank, a non-empty batch, and integer ids or
    floating values (the exact floating dtype is ``check_input_type``'s, where it matters).

    Unknown (symbolic) sizes pass: a traced batch is checked when it runs.

    Args:
        name: the argument's name (``input_values`` ...).
        shape: its static shape.
        dtype: its dtype (any framework's spelling); None leaves it to the caller.
        axes: the names of its axes, batch first (``("batch", "samples")``).
        integer: the input holds ids rather than values.

    Examples:

    >>> check_main_input("input_values", (2, 400), "float32", ("batch", "samples"))
    """
    shape = tuple(shape)
    if len(shape) != len(axes):
        raise ValueError(f"{name} must be {len(axes)}-D ({', '.join(axes)}), got shape {shape}")
    # no int(): a symbolic size (torch.export, torch.compile) must stay symbolic
    if shape[0] is not None and shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {shape}): give at least one example")
    if dtype is None:
        return
    dtype = _bare(dtype)
    if integer and (is_floating(dtype) or dtype == "bool"):
        raise TypeError(f"{name} must be an integer tensor (int64 or int32 indices), got {dtype}")
    if not integer and not is_floating(dtype):
        raise TypeError(f"{name} must be floating point, got {dtype}")
