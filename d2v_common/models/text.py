"""Framework-neutral pieces of the text family: length limits, index tables, input checks.

Both ``d2v_torch/text.py`` and ``d2v_tf/text.py`` call these, so the two frameworks accept and
refuse exactly the same inputs with the same messages.
"""

from __future__ import annotations

import numpy as np

from d2v_common.configs import Data2VecTextConfig
from d2v_common.models.input_types import check_main_input
from d2v_common.models.losses import IGNORE_INDEX, check_label_range
from d2v_common.models.checks import TensorInfo, is_integer_dtype

RELATIVE_TYPES = ("relative_key", "relative_key_query")


def uses_relative_positions(config: Data2VecTextConfig) -> bool:
    return config.position_embedding_type in RELATIVE_TYPES


def position_offset(config: Data2VecTextConfig) -> int:
    """Position ids start after this value (the pad id; 0 when the config has no pad id)."""
    return config.pad_token_id if config.pad_token_id is not None else 0


def max_input_length(config: Data2VecTextConfig) -> int:
    """Longest sequence (cached positions included) the position tables can index.

    Absolute positions run from pad+1, so ``max_position_embeddings - pad - 1`` tokens fit; the
    relative distance table holds offsets up to ``max_position_embeddings - 1`` either way.
    """
    if uses_relative_positions(config):
        return config.max_position_embeddings
    return config.max_sequence_length


def _length_error(config: Data2VecTextConfig, length: int, past_length: int) -> ValueError:
    limit = max_input_length(config)
    what = f"{length} tokens" + (f" after {past_length} cached positions" if past_length else "")
    if uses_relative_positions(config):
        why = f"the relative distance table covers max_position_embeddings={config.max_position_embeddings} positions"
    else:
        why = (
            f"absolute position ids run from pad_token_id+1={position_offset(config) + 1} up to "
            f"max_position_embeddings-1={config.max_position_embeddings - 1}"
        )
    return ValueError(f"input of {what} is longer than this model allows: the limit is {limit} tokens ({why})")


def check_sequence_length(
    config: Data2VecTextConfig, length: int, past_length: int = 0, from_embeds: bool = False,
    explicit_positions: bool = False,
) -> None:
    """Raise ``ValueError`` naming the limit when positions would run past the tables.

    Positions made from ``inputs_embeds`` restart at pad+1 whatever the cache holds (as in HF), so
    only the new tokens count there; explicit ``position_ids`` are checked by value instead.
    """
    if length is None:
        return
    if uses_relative_positions(config):
        total = length + past_length
    elif explicit_positions:
        return
    else:
        total = length if from_embeds else length + past_length
    if total > max_input_length(config):
        raise _length_error(config, length, past_length)


def check_inputs(input_ids_shape, inputs_embeds_shape, hidden_size: int) -> tuple[int, int]:
    """Exactly one of ``input_ids`` (B, L) / ``inputs_embeds`` (B, L, hidden); returns (B, L)."""
    if input_ids_shape is not None and inputs_embeds_shape is not None:
        raise ValueError("pass either input_ids or inputs_embeds, not both")
    if input_ids_shape is None and inputs_embeds_shape is None:
        raise ValueError("pass input_ids or inputs_embeds")
    if input_ids_shape is not None:
        check_main_input("input_ids", input_ids_shape, None, ("batch", "sequence_length"))
        _check_not_empty("input_ids", input_ids_shape)
        return input_ids_shape[0], input_ids_shape[1]
    if len(inputs_embeds_shape) != 3 or inputs_embeds_shape[-1] != hidden_size:
        raise ValueError(
            f"inputs_embeds must have shape (batch, sequence_length, hidden_size={hidden_size}), "
            f"got {tuple(inputs_embeds_shape)}"
        )
    check_main_input("inputs_embeds", inputs_embeds_shape, None, ("batch", "sequence_length", "hidden_size"))
    _check_not_empty("inputs_embeds", inputs_embeds_shape)
    return inputs_embeds_shape[0], inputs_embeds_shape[1]


def _check_not_empty(name: str, shape) -> None:
    # Unknown (symbolic) sizes pass; zero sizes would only fail later, far from the cause.
    # no int(): a symbolic size (torch.export, torch.compile) must stay symbolic
    if shape[1] is not None and shape[1] == 0:
        raise ValueError(f"{name} has sequences of length 0 (shape {tuple(shape)}): give at least one token")


def check_same_shape(name: str, shape, expected) -> None:
    if shape is not None and (len(shape) != len(expected) or not _dims_match(shape, expected)):
        raise ValueError(f"{name} must have shape {tuple(expected)} like the input ids, got {tuple(shape)}")


def check_attention_mask_shape(shape, batch: int, query_length: int, key_length: int, name="attention_mask") -> None:
    """A keep-mask is (B, keys) or (B, queries, keys); keys include cached positions."""
    ok2 = len(shape) == 2 and _dims_match(shape, (batch, key_length))
    ok3 = len(shape) == 3 and _dims_match(shape, (batch, query_length, key_length))
    if not (ok2 or ok3):
        raise ValueError(
            f"{name} must have shape (batch, {key_length}) or (batch, {query_length}, {key_length}) "
            f"(keys include cached positions), got {tuple(shape)}"
        )


def _dims_match(shape, expected) -> bool:
    return all(s is None or e is None or s == e for s, e in zip(shape, expected))


def check_index_range(name: str, values: np.ndarray, upper: int, limit_name: str) -> None:
    """Every value in [0, upper); ``ValueError`` naming the offending ids and the limit otherwise."""
    values = np.asarray(values)
    if values.size == 0:
        return
    bad = (values < 0) | (values >= upper)
    if bad.any():
        raise ValueError(f"{name} must be in [0, {upper}) ({limit_name}={upper}), got {values[bad][:5].tolist()}")


def check_labels(name: str, values: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Class labels in [0, num_classes) or ``ignore_index``."""
    values = np.asarray(values)
    _check_integer_labels(name, str(values.dtype), values.dtype.kind in "iu")
    check_label_range(name, values, num_classes, ignore_index)


def _check_integer_labels(name: str, dtype: str, is_integer: bool) -> None:
    if not is_integer:
        raise TypeError(f"{name} must be integers, got dtype {dtype}")


def check_label_ids(name: str, labels: TensorInfo, num_classes: int) -> None:
    """Class-id labels: integers, each in [0, num_classes) or -100 (the range when values are known)."""
    if labels.values is not None:
        check_labels(name, labels.values, num_classes)
    else:
        _check_integer_labels(name, labels.dtype, is_integer_dtype(labels.dtype))


def relative_distance_index(query_length: int, key_length: int, max_position_embeddings: int, arange=np.arange):
    """(queries, keys) rows of the distance table: query i sits at position ``past + i`` where
    ``past = keys - queries`` (the cached prefix), key j at position j.

    ``arange`` picks the array library (``torch.arange`` keeps the PyTorch forward traceable
    with symbolic lengths); integer dtype: int64."""
    past = key_length - query_length
    query_pos = arange(past, key_length)[:, None]
    key_pos = arange(key_length)[None, :]
    return query_pos - key_pos + (max_position_embeddings - 1)


def causal_keep_mask(query_length: int, key_length: int, arange=np.arange):
    """(queries, keys) mask: query i (at position past + i) sees keys 0 .. past + i.

    float32 0/1 with numpy; a bool tensor with another library's ``arange``."""
    past = key_length - query_length
    keep = arange(key_length)[None, :] <= arange(query_length)[:, None] + past
    return keep.astype(np.float32) if isinstance(keep, np.ndarray) else keep


def check_past(past_shapes: list[list[tuple]], config: Data2VecTextConfig, batch) -> int:
    """Shapes of a legacy cache (per layer: self k, self v[, cross k, cross v]); returns its length."""
    num_layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_dim = config.hidden_size // heads
    if len(past_shapes) != num_layers:
        raise ValueError(f"past_key_values has {len(past_shapes)} layers, the model has {num_layers}")
    lengths = set()
    for i, shapes in enumerate(past_shapes):
        if len(shapes) not in (2, 4):
            raise ValueError(
                f"past_key_values[{i}] must hold (key, value) or (key, value, cross_key, cross_value), "
                f"got {len(shapes)} tensors"
            )
        for s in shapes:
            if len(s) != 4 or not _dims_match(s, (batch, heads, None, head_dim)):
                raise ValueError(
                    f"past_key_values[{i}] tensors must have shape (batch={batch}, heads={heads}, length, "
                    f"head_dim={head_dim}), got {tuple(s)}"
                )
        lengths.add(shapes[0][2])
    if len(lengths) != 1:
        raise ValueError(f"past_key_values layers cache different lengths: {sorted(lengths)}")
    return int(lengths.pop())


def multiple_choice_shapes(input_ids_shape, inputs_embeds_shape) -> tuple[int, int, int]:
    """(batch, choices, length) of a multiple-choice input: ids (B, C, L) or embeds (B, C, L, H)."""
    if input_ids_shape is not None and inputs_embeds_shape is not None:
        raise ValueError("pass either input_ids or inputs_embeds, not both")
    if input_ids_shape is not None:
        if len(input_ids_shape) != 3:
            raise ValueError(
                "multiple choice input_ids must have shape (batch, num_choices, sequence_length), "
                f"got {tuple(input_ids_shape)}"
            )
        return tuple(input_ids_shape)
    if inputs_embeds_shape is None:
        raise ValueError("pass input_ids or inputs_embeds")
    if len(inputs_embeds_shape) != 4:
        raise ValueError(
            "multiple choice inputs_embeds must have shape (batch, num_choices, sequence_length, hidden_size), "
            f"got {tuple(inputs_embeds_shape)}"
        )
    return tuple(inputs_embeds_shape[:3])


def check_positions(name: str, shape, dtype: str, batch) -> None:
    """Question-answering targets: one integer token index per sequence, (batch,) or (batch, 1).

    Indices outside the sequence are allowed: the loss clamps and ignores them, as HF does.
    """
    if not _is_integer_dtype(dtype):
        raise TypeError(f"{name} must be integer token indices, got dtype {dtype}")
    size = None if None in tuple(shape) else int(np.prod(shape, dtype=np.int64))
    if len(shape) > 2 or (len(shape) == 2 and shape[1] not in (1, None)) or (
        size is not None and batch is not None and size != int(batch)
    ):
        raise ValueError(f"{name} must hold one index per sequence, shape ({batch},), got {tuple(shape)}")


def _is_integer_dtype(dtype: str) -> bool:
    """Integer dtype named by numpy, torch (``torch.int64``) or TensorFlow (``<dtype: 'int64'>``)."""
    return "int" in str(dtype)


def check_question_answering(config: Data2VecTextConfig) -> None:
    if config.num_labels != 2:
        raise ValueError(
            f"question answering needs config.num_labels == 2 (start and end logits), got {config.num_labels}"
        )


# ------------------------------------------------------------------------------ model inputs
def check_ids(name: str, ids: TensorInfo, upper: int, limit_name: str) -> None:
    """Integer ids in [0, upper) (the range only when the values are known)."""
    if not is_integer_dtype(ids.dtype):
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    if ids.values is not None:
        check_index_range(name, ids.values, upper, limit_name)


def check_model_inputs(
    config: Data2VecTextConfig,
    input_ids: TensorInfo | None,
    inputs_embeds_shape: tuple | None,
    token_type_ids: TensorInfo | None,
    position_ids: TensorInfo | None,
    past_shapes: list[list[tuple]] | None,
) -> tuple[int, int, int]:
    """The checks every text-model call makes before embedding.

    Args:
        config: the model's config.
        input_ids, token_type_ids, position_ids: what is known of each (None when not given).
        inputs_embeds_shape: the static shape of ``inputs_embeds``, or None.
        past_shapes: per layer, the shapes of the cached tensors (legacy cache), or None.

    Returns:
        ``(batch, length, past_length)``; batch and length are None when not known statically.
    """
    batch, length = check_inputs(
        None if input_ids is None else input_ids.shape, inputs_embeds_shape, config.hidden_size
    )
    past_length = 0
    if past_shapes is not None:
        if not config.is_decoder:
            raise ValueError("past_key_values need a decoder: set config.is_decoder=True")
        past_length = check_past(past_shapes, config, batch)
    check_sequence_length(
        config, length, past_length, from_embeds=input_ids is None, explicit_positions=position_ids is not None
    )
    if input_ids is not None:
        check_ids("input_ids", input_ids, config.vocab_size, "vocab_size")
    if token_type_ids is not None:
        check_same_shape("token_type_ids", token_type_ids.shape, (batch, length))
        check_ids("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size")
    if position_ids is not None and config.position_embedding_type == "absolute":
        last = position_ids.shape[-1] if position_ids.shape else None
        if length is not None and last is not None and last != length:
            raise ValueError(f"position_ids must end in the sequence length {length}, got {tuple(position_ids.shape)}")
        check_ids("position_ids", position_ids, config.max_position_embeddings, "max_position_embeddings")
    return batch, length, past_length


def check_encoder_hidden_states(config: Data2VecTextConfig, shape: tuple) -> None:
    """Cross-attention inputs: (batch, source_length, hidden_size)."""
    if len(shape) != 3 or shape[-1] != config.hidden_size:
        raise ValueError(
            f"encoder_hidden_states must have shape (batch, source_length, {config.hidden_size}), got {tuple(shape)}"
        )


def no_cross_attention_error() -> ValueError:
    """The error for encoder states given to a layer built without cross-attention."""
    return ValueError(
        "encoder_hidden_states were given but this model has no cross-attention layers: "
        "build it with config.add_cross_attention=True"
    )


def embedding_mismatch_error(expected: str, shape: tuple) -> ValueError:
    """The error for ``set_input_embeddings`` given a layer of another kind or shape."""
    return ValueError(
        f"set_input_embeddings needs {expected} of shape {tuple(shape)}; "
        "use resize_token_embeddings to change the vocabulary size"
    )


def resized_vocab_size(current: int, new_num_tokens: int | None, pad_to_multiple_of: int | None) -> int:
    """The vocabulary size ``resize_token_embeddings`` makes: ``new_num_tokens`` (or the current
    size) rounded up to a multiple of ``pad_to_multiple_of``."""
    n = current if new_num_tokens is None else int(new_num_tokens)
    if pad_to_multiple_of is not None:
        if int(pad_to_multiple_of) <= 0:
            raise ValueError(f"pad_to_multiple_of must be positive, got {pad_to_multiple_of}")
        n = -(-n // int(pad_to_multiple_of)) * int(pad_to_multiple_of)
    return n
