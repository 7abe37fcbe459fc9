"""Serving artifacts from the Keras classes: a TensorFlow SavedModel (TF Serving, Vertex) and a
LiteRT flatbuffer (``model.tflite``). Twin of ``d2v_torch/export.py``.

Both artifacts carry one signature, ``serving_default``, that takes HF's input names as a dict
of tensors with dynamic batch and sequence / audio length and returns a dict named after HF's
output fields. Neither needs d2v (nor Keras) to run: ``tf.saved_model.load`` and the LiteRT
interpreter are enough.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

# Keras' format names (``model.export(format=...)``) for the two artifacts d2v writes itself.
SAVED_MODEL = "tf_saved_model"
LITERT = "litert"
SIGNATURE_KEY = "serving_default"

# Input dtypes of the signature: TF's serving convention (int32 ids and masks, as HF's TF
# classes), which LiteRT also prefers; the runners cast whatever they are given.
_INPUT_DTYPES = {
    "pixel_values": "float32",
    "input_values": "float32",
    "input_ids": "int32",
    "attention_mask": "int32",
    "token_type_ids": "int32",
}


def serving_input_shapes(model) -> dict[str, tuple]:
    """HF's input names of the model's ``serving_default`` and their shapes (None: dynamic).

    Args:
        model: a ``TFData2VecPreTrainedModel``.

    Returns:
        An ordered ``{name: shape}``: images keep the configured channels and size (the
        position tables are built for it), text and audio have dynamic batch and length, and
        multiple choice a dynamic number of choices.
    """
    config = model.config
    name = model.main_input_name
    if name == "pixel_values":
        return {name: (None, config.num_channels, config.image_size, config.image_size)}
    if name == "input_values":
        return {name: (None, None), "attention_mask": (None, None)}
    shape = (None, None, None) if model.architecture.endswith("MultipleChoice") else (None, None)
    out = {"input_ids": shape, "attention_mask": shape}
    if config.type_vocab_size > 1:  # with one type, token_type_ids can only be zeros: HF omits them
        out["token_type_ids"] = shape
    return out


def input_signature(model) -> dict:
    """``{name: tf.TensorSpec}`` of the serving signature (see ``serving_input_shapes``)."""
    import tensorflow as tf

    return {
        name: tf.TensorSpec(shape, _INPUT_DTYPES[name], name=name)
        for name, shape in serving_input_shapes(model).items()
    }


def _call_options(model) -> dict:
    # decoders would also return their key/value cache: not an output a server hands out
    return {"use_cache": False} if getattr(model.config, "is_decoder", False) else {}


def serving_outputs(model, inputs: dict) -> dict:
    """The model's inference outputs as ``{HF field: tensor}`` (fields that are None left out)."""
    out = model(dict(inputs), training=False, return_dict=True, **_call_options(model))
    return {key: value for key, value in out.items() if value is not None and not isinstance(value, (tuple, list))}


def _export_archive(model):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SIGNATURE_KEY, lambda inputs: serving_outputs(model, inputs), input_signature=[input_signature(model)]
    )
    return archive


def write_saved_model(model, path: str | os.PathLike, verbose: bool = False) -> None:
    """Write the SavedModel directory ``path`` with the ``serving_default`` signature."""
    _export_archive(model).write_out(os.fspath(path), verbose=verbose)


def litert_bytes(model, quantize: str | None = None) -> bytes:
    """The LiteRT flatbuffer of the serving signature.

    Args:
        model: a ``TFData2VecPreTrainedModel``.
        quantize: None (float32) or ``"dynamic-int8"`` (weights stored as int8, activations
            float: LiteRT's dynamic-range quantisation).

    Returns:
        The ``.tflite`` file's bytes.
    """
    import tensorflow as tf

    if quantize not in (None, "dynamic-int8"):
        raise ValueError(f"quantize must be None or 'dynamic-int8', got {quantize!r}")
    with tempfile.TemporaryDirectory() as staging:
        write_saved_model(model, staging)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=[SIGNATURE_KEY])
        # builtins only: an op LiteRT lacks is an error naming it, not a silent TF-kernel fallback
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize == "dynamic-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        try:
            return converter.convert()
        except Exception as err:  # the converter's own error types are not public API
            raise ValueError(_converter_message(type(model).__name__, err)) from err


def _converter_message(class_name: str, err: Exception) -> str:
    text = str(err)
    ops = sorted(set(_unsupported_ops(text)))
    what = f"ops LiteRT has no builtin kernel for: {', '.join(ops)}" if ops else text.strip().splitlines()[-1]
    return f"{class_name} cannot be converted to LiteRT ({what}); export it as a SavedModel instead"


def _unsupported_ops(text: str):
    import re

    # the converter reports e.g. "'tf.Erfinv' op is neither a custom op nor a flex op"
    yield from re.findall(r"'(tf\.[A-Za-z0-9_]+)' op is neither", text)


def export_keras(model, filepath, format: str = SAVED_MODEL, verbose=None, **kwargs) -> None:
    """What ``model.export`` does for d2v's classes (see ``TFData2VecPreTrainedModel.export``)."""
    path = os.fspath(filepath)
    if format == SAVED_MODEL:
        if kwargs:
            raise TypeError(f"export(format={SAVED_MODEL!r}) takes no options, got {sorted(kwargs)}")
        write_saved_model(model, path, verbose=bool(verbose))
    elif format == LITERT:
        if not path.endswith(".tflite"):
            raise ValueError(f"a LiteRT export needs a path ending in .tflite, got {path!r}")
        unknown = set(kwargs) - {"quantize"}
        if unknown:
            raise TypeError(f"export(format={LITERT!r}) takes only quantize=, got {sorted(unknown)}")
        data = litert_bytes(model, **kwargs)
        from d2v_common.io_utils import atomic_write_bytes

        atomic_write_bytes(path, data)
    else:
        raise ValueError(f"unknown export format {format!r}; d2v's Keras classes export {SAVED_MODEL!r} and {LITERT!r}")
    if verbose:
        print(f"Saved {format} artifact at {path!r}")


# ------------------------------------------------------------------------------ runners
def _signature_dtypes(names) -> dict:
    return {n: _INPUT_DTYPES.get(n, "float32") for n in names}


def run_saved_model(path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a SavedModel's ``serving_default`` on numpy inputs (cast to its dtypes)."""
    import tensorflow as tf

    fn = tf.saved_model.load(os.fspath(path)).signatures[SIGNATURE_KEY]
    _, specs = fn.structured_input_signature
    feed = {n: tf.constant(np.asarray(v), dtype=specs[n].dtype) for n, v in inputs.items() if n in specs}
    return {k: v.numpy() for k, v in fn(**feed).items()}


def run_litert(path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a ``.tflite`` file's ``serving_default`` with the LiteRT interpreter; the signature
    runner resizes the dynamic dimensions to the inputs' shapes."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(path))
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    details = runner.get_input_details()
    feed = {n: np.asarray(v).astype(details[n]["dtype"]) for n, v in inputs.items() if n in details}
    return {k: np.asarray(v) for k, v in runner(**feed).items()}
