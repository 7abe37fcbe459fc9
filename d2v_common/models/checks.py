"""Framework-neutral checks every model class shares, in both frameworks.

``d2v_torch`` and ``d2v_tf`` describe a tensor by a ``TensorInfo`` (static shape, dtype name,
values when they are known) and call these functions, so both frameworks refuse the same
inputs with the same messages, written once here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """What a check may know about a tensor without touching a framework.

    Args:
        shape: the static shape; a dimension is None when unknown (a traced batch).
        dtype: the dtype's name as numpy spells it (``"int64"``, ``"float32"``).
        values: the values as a numpy array when they are known (eager mode), else None.
    """

    shape: tuple
    dtype: str
    values: np.ndarray | None = None


def dtype_name(dtype) -> str:
    """``torch.int64``, ``<dtype: 'int64'>`` or ``int64`` -> ``int64``."""
    text = str(dtype)
    match = re.fullmatch(r"<dtype: '(\w+)'>", text)
    return match.group(1) if match else text.replace("torch.", "")


def is_integer_dtype(dtype) -> bool:
    """An integer dtype by any framework's name for it (bool is not an integer here)."""
    return "int" in dtype_name(dtype)


def snake_case(name: str) -> str:
    """``TFData2VecVisionModel`` -> ``tf_data2_vec_vision_model`` (a Keras layer name)."""
    s = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


# ------------------------------------------------------------------------------ building
def check_config_class(model_name: str, config, config_class: type) -> None:
    """Raises ``TypeError`` unless ``config`` is a ``config_class``."""
    if not isinstance(config, config_class):
        raise TypeError(f"{model_name} needs a {config_class.__name__}, got {type(config).__name__}")


def check_names_match_spec(model_name: str, names: set[str], expected: set[str]) -> None:
    """Raises ``RuntimeError`` when a model's tensors differ from its weight spec (a bug in d2v)."""
    if names != expected:
        raise RuntimeError(
            f"{model_name} does not match its weight spec: extra {sorted(names - expected)[:5]}, "
            f"missing {sorted(expected - names)[:5]}"
        )


def check_no_missing(model_name: str, missing: list[str]) -> None:
    """Raises ``ValueError`` when ``load_arrays`` got no value for some spec tensors."""
    if missing:
        raise ValueError(f"{model_name}: no value for {missing[:5]}")


def check_checkpointable(model_name: str, checkpointing_encoders: int) -> None:
    """Raises ``ValueError`` when ``gradient_checkpointing_enable`` finds no encoder that can
    recompute its layers (rather than silently training without checkpointing)."""
    if checkpointing_encoders == 0:
        raise ValueError(f"{model_name} has no encoder that supports gradient checkpointing; train it without "
                         "gradient_checkpointing_enable()")


def architecture_of(cls: type) -> str:
    """The HF class name a d2v model class implements: its ``architecture`` attribute.

    Raises:
        TypeError: ``cls`` names no architecture (not a Data2Vec model class).
    """
    name = getattr(cls, "architecture", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} is not a Data2Vec architecture")
    return name


def model_class_for(registry: dict[str, type], architecture: str) -> type:
    """``registry[architecture]``, or a ``ValueError`` listing the architectures there are."""
    if architecture not in registry:
        raise ValueError(f"unknown architecture {architecture!r}; use one of {', '.join(sorted(registry))}")
    return registry[architecture]


# ------------------------------------------------------------------------------ inputs
def check_head_mask(shape: tuple, num_layers: int) -> None:
    """HF's head mask is (num_heads,) or (num_layers, num_heads)."""
    if len(shape) not in (1, 2):
        raise ValueError(f"head_mask must have shape (num_heads,) or (num_layers, num_heads), got {tuple(shape)}")
    if len(shape) == 2 and shape[0] is not None and int(shape[0]) != num_layers:
        raise ValueError(f"head_mask has {shape[0]} layers, the model has {num_layers}")



# Heads that can read a learned softmax-weighted sum of every hidden state (SUPERB style,
# ``config.use_weighted_layer_sum``) instead of the last one; the weights are ``layer_weights``.
# Audio heads as in HF; the text and vision classifiers are d2v's (off by default, so HF
# checkpoints are unchanged).
WEIGHTED_LAYER_SUM_HEADS = frozenset({
    "Data2VecAudioForSequenceClassification", "Data2VecAudioForAudioFrameClassification", "Data2VecAudioForXVector",
    "Data2VecTextForSequenceClassification", "Data2VecVisionForImageClassification",
})


def weighted_layer_sum_size(config, architecture: str) -> int | None:
    """How many ``layer_weights`` a head has (the hidden layers plus the embeddings output),
    or None when it does not use the weighted layer sum.

    The text and vision configs take ``use_weighted_layer_sum`` as an extra key (HF's configs
    have no such field, so their ``config.json`` stays HF's own unless it is set).

    Raises:
        TypeError: ``use_weighted_layer_sum`` is not a bool.
    """
    flag = getattr(config, "use_weighted_layer_sum", False)
    if not isinstance(flag, bool):
        raise TypeError(f"use_weighted_layer_sum must be true or false, got {flag!r}")
    if architecture not in WEIGHTED_LAYER_SUM_HEADS or not flag:
        return None
    return config.num_hidden_layers + 1
