"""Serving artifacts from the Keras classes: a TensorFlow SavedModel (TF Serving, Vertex) and a
LiteRT flatbuffer (``model.tflite``). Twin of ``d2v_torch/export.py``.

    python -m d2v_tf.export SRC DST --format {saved-model,litert}   (or d2v-export)

Both artifacts carry one signature, ``serving_default``, that takes HF's input names as a dict
of tensors (dynamic batch, and dynamic sequence / audio length) and returns a dict named after
HF's output fields. Neither needs d2v nor Keras to run: ``tf.saved_model.load`` and the LiteRT
interpreter (``ai_edge_litert``) are enough. The names, the dynamic axes, the sample inputs, the
staging of DST and the validation are shared with the PyTorch formats (``d2v_common.export``);
this module supplies the Keras halves: writing, converting and running the artifacts.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import numpy as np

from d2v_common import export as shared

# Keras' names (``model.export(format=...)``) for the two artifacts d2v writes itself.
KERAS_SAVED_MODEL = "tf_saved_model"
KERAS_LITERT = "litert"
SIGNATURE_KEY = "serving_default"
KERAS_ENDPOINT = "serve"
LITERT_QUANTIZATIONS = (None, "dynamic-int8")

# Signature dtypes: TF serving's convention (int32 ids and masks, as HF's TF classes use), which
# LiteRT prefers too; the runners cast what they are given (numpy int64 included).
_INPUT_DTYPES = {"input_ids": "int32", "attention_mask": "int32", "token_type_ids": "int32"}


# ------------------------------------------------------------------------------ the serving signature
def input_signature(model, override=None) -> dict:
    """``{HF input name: tf.TensorSpec}`` of the model's ``serving_default``.

    Args:
        model: a ``TFData2VecPreTrainedModel``.
        override: optional ``{name: tf.TensorSpec | keras.InputSpec | shape}`` (or a list
            holding that dict, as Keras' ``input_signature``) to fix shapes, e.g. a static
            batch and length for a LiteRT runtime without dynamic shapes, or to leave out
            optional inputs; the main input is required, names are HF's.

    Returns:
        Specs named after HF's inputs (``d2v_common.export.input_names``), ``None`` on the
        dynamic axes (``d2v_common.export.dynamic_axes``): batch, and the sequence / audio
        length (and the choices of multiple choice); images keep the configured size.
    """
    import tensorflow as tf

    config, architecture = model.config, model.architecture
    if architecture not in shared.EXPORTABLE_ARCHITECTURES:
        raise ValueError(f"{type(model).__name__} has no serving signature ({architecture} is not in "
                         "d2v_common.export's table of input/output names); "
                         f"exportable: {', '.join('TF' + a for a in shared.EXPORTABLE_ARCHITECTURES)}")
    axes = shared.dynamic_axes(config, architecture)
    example = shared.sample_inputs(config, architecture, batch_size=1)
    specs = {}
    for name in shared.input_names(config, architecture):
        shape = [None if axis in axes.get(name, {}) else size for axis, size in enumerate(example[name].shape)]
        specs[name] = tf.TensorSpec(shape, _INPUT_DTYPES.get(name, "float32"), name=name)
    return specs if override is None else _overridden(model, specs, override)


def _overridden(model, specs: dict, override) -> dict:
    import tensorflow as tf

    if isinstance(override, (list, tuple)) and len(override) == 1:
        override = override[0]
    if not isinstance(override, dict):
        raise TypeError(f"input_signature must be a dict of HF input names to specs, got {type(override).__name__}")
    unknown = sorted(set(override) - set(specs))
    if unknown:
        raise ValueError(f"{type(model).__name__} takes {sorted(specs)} in its signature, not {unknown}")
    if model.main_input_name not in override:
        raise ValueError(f"input_signature needs the main input {model.main_input_name!r}")
    out = {}
    for name, given in override.items():
        default = specs[name]
        shape = getattr(given, "shape", given)
        shape = list(shape.as_list() if hasattr(shape, "as_list") else shape)
        if len(shape) != len(default.shape):
            raise ValueError(
                f"input_signature[{name!r}]: rank {len(shape)}, expected {default.shape.rank} ({default.shape})"
            )
        out[name] = tf.TensorSpec(shape, getattr(given, "dtype", None) or default.dtype, name=name)
    return out


def serving_outputs(model, inputs: dict) -> dict:
    """The model's inference outputs as ``{HF output field: tensor}``, in HF's order; fields the
    model does not produce (a text model without pooler) are left out."""
    config, architecture = model.config, model.architecture
    out = model(dict(inputs), training=False, **shared.eager_call_kwargs(config, architecture))
    return {key: out[key] for key in shared.output_fields(architecture) if out.get(key) is not None}


def _export_archive(model, signature=None):
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    specs = [input_signature(model, signature)]  # one positional argument: the dict of inputs
    traced = archive.add_endpoint(SIGNATURE_KEY, lambda inputs: serving_outputs(model, inputs), input_signature=specs)
    archive.add_endpoint(KERAS_ENDPOINT, traced)  # Keras' own name (``reloaded.serve(inputs)``), no second trace
    return archive


# ------------------------------------------------------------------------------ writers and runners
def write_saved_model(model, path: str | os.PathLike, verbose: bool = False, signature=None) -> None:
    """Write a SavedModel directory at ``path`` whose ``serving_default`` is the model's
    (``signature``: see ``input_signature``'s ``override``). All or nothing: it is written
    beside ``path`` and renamed into place (replacing an earlier export) once complete."""
    from d2v_common.io_utils import fresh_sibling, install

    path = os.path.abspath(os.fspath(path))
    archive = _export_archive(model, signature)  # traces: a model that cannot trace writes nothing
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staging = fresh_sibling(path, "tmp")
    try:
        archive.write_out(staging, verbose=verbose)
        install(staging, path, overwrite=True)
        staging = None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def litert_bytes(model, quantize: str | None = None, signature=None) -> bytes:
    """The LiteRT flatbuffer of the model's serving signature.

    Args:
        model: a ``TFData2VecPreTrainedModel``.
        quantize: None (float32) or ``"dynamic-int8"`` (LiteRT's dynamic-range quantisation:
            weights stored as int8, activations float).
        signature: see ``input_signature``'s ``override`` (default: dynamic batch and length).

    Returns:
        The ``.tflite`` file's bytes.

    Raises:
        ValueError: the converter cannot express an op with LiteRT's builtin kernels (the message
            names the op); d2v never falls back to TF kernels (Flex), which a phone lacks.
    """
    import tensorflow as tf

    if quantize not in LITERT_QUANTIZATIONS:
        raise ValueError(f"quantize must be None or 'dynamic-int8', got {quantize!r}")
    with tempfile.TemporaryDirectory() as staging:
        _export_archive(model, signature).write_out(staging, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=[SIGNATURE_KEY])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize == "dynamic-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        try:
            return converter.convert()
        except Exception as err:  # noqa: BLE001 - the converter's error types are not public
            message = litert_error_message(type(model).__name__, str(err))
            if model.compute_dtype != "float32":
                message += f" (the model computes in {model.compute_dtype}; LiteRT's kernels take float32: build it " \
                           "under Keras' float32 policy, and add quantize='dynamic-int8' for smaller weights)"
            raise ValueError(message) from err


def litert_error_message(class_name: str, converter_error: str) -> str:
    """A one-line reason from the converter's multi-line report, naming the ops it lacks."""
    # the report lists e.g. "TF Select ops: Erfinv, StridedSlice" and "'tf.Erfinv' op is neither ..."
    ops = set(re.findall(r"'tf\.([A-Za-z0-9_]+)' op is neither", converter_error))
    for listed in re.findall(r"TF Select ops: ([^\n]+)", converter_error):
        ops.update(op.strip() for op in listed.split(",") if op.strip())
    if ops:
        reason = f"no LiteRT builtin kernel for the TensorFlow op(s) {', '.join(sorted(ops))}"
    else:
        lines = [line.strip() for line in converter_error.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else "the converter failed"
    return f"{class_name} cannot be converted to LiteRT: {reason}; export it as a SavedModel instead"


def export_keras(
    model, filepath, format: str = KERAS_SAVED_MODEL, verbose: bool | None = None, input_signature=None, **kwargs
) -> None:
    """What ``model.export`` does for d2v's classes (see ``TFData2VecPreTrainedModel.export``)."""
    path = os.fspath(filepath)
    if format == KERAS_SAVED_MODEL:
        if kwargs:
            raise TypeError(f"export(format={KERAS_SAVED_MODEL!r}) takes no options, got {sorted(kwargs)}")
        write_saved_model(model, path, verbose=bool(verbose), signature=input_signature)
    elif format == KERAS_LITERT:
        if not path.endswith(".tflite"):
            raise ValueError(f"a LiteRT export needs a path ending in .tflite, got {path!r}")
        unknown = set(kwargs) - {"quantize"}
        if unknown:
            raise TypeError(f"export(format={KERAS_LITERT!r}) takes only quantize=, got {sorted(unknown)}")
        from d2v_common.io_utils import atomic_write_bytes

        data = litert_bytes(model, signature=input_signature, **kwargs)  # converted first: no file on failure
        atomic_write_bytes(path, data)
    else:
        raise ValueError(
            f"unknown export format {format!r}; d2v's Keras classes export {KERAS_SAVED_MODEL!r} and {KERAS_LITERT!r}"
        )
    if verbose:
        print(f"Saved the {format} artifact at {path!r} (signature {SIGNATURE_KEY!r})")


def run_saved_model(path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a SavedModel's ``serving_default`` on numpy inputs (cast to the signature's dtypes).

    ``path`` is the SavedModel directory (or its ``saved_model.pb``)."""
    import tensorflow as tf

    path = os.fspath(path)
    if os.path.isfile(path):
        path = os.path.dirname(path)
    fn = tf.saved_model.load(path).signatures[SIGNATURE_KEY]
    specs = fn.structured_input_signature[1]
    _check_feed(path, specs, inputs)
    feed = {name: tf.constant(np.asarray(inputs[name]), dtype=spec.dtype) for name, spec in specs.items()}
    return {key: value.numpy() for key, value in fn(**feed).items()}


def run_litert(path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a ``.tflite`` file's ``serving_default`` with the LiteRT interpreter; its signature
    runner resizes the dynamic dimensions to the inputs' shapes."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=os.fspath(path)).get_signature_runner(SIGNATURE_KEY)
    details = runner.get_input_details()
    _check_feed(os.fspath(path), details, inputs)
    feed = {name: np.asarray(inputs[name]).astype(detail["dtype"]) for name, detail in details.items()}
    return {key: np.asarray(value) for key, value in runner(**feed).items()}


def _check_feed(path: str, names, inputs: dict) -> None:
    missing = sorted(set(names) - set(inputs))
    if missing:
        raise ValueError(f"{path} takes {sorted(names)}; missing {missing}")


# ------------------------------------------------------------------------------ the two formats
def _export_saved_model(model, staging_dir: str, sample: dict[str, np.ndarray], options) -> str:
    # DST is the SavedModel itself (saved_model.pb, variables/), next to config.json
    _export_archive(model).write_out(staging_dir, verbose=False)
    return os.path.join(staging_dir, "saved_model.pb")


def _export_litert(model, staging_dir: str, sample: dict[str, np.ndarray], options) -> str:
    path = os.path.join(staging_dir, "model.tflite")
    data = litert_bytes(model)
    with open(path, "wb") as f:  # the staging folder is removed whole on failure
        f.write(data)
    return path


# ------------------------------------------------------------------------------ framework hooks
def load_model(src: str, architecture: str, options):
    """``from_pretrained`` of the d2v Keras class (float32: the formats take no ``--dtype``).

    The class is found in Keras' serialisation registry, where every d2v model registers itself
    (``TFData2VecPreTrainedModel.__init_subclass__``); importing ``d2v_tf`` here would close an
    import cycle (``d2v_tf.base`` imports this module for ``model.export``)."""
    import keras

    cls = keras.saving.get_registered_object(f"d2v>TF{architecture}")
    if cls is None:
        raise ValueError(f"no d2v Keras class implements {architecture!r}")
    return cls.from_pretrained(src)


def run_eager(model, inputs: dict[str, np.ndarray], architecture: str | None = None, config=None):
    """The Keras model's exported fields as numpy, on the same inputs as the artifact."""
    feed = {name: np.asarray(value) for name, value in inputs.items()}
    return {key: np.asarray(value) for key, value in serving_outputs(model, feed).items()}


SAVED_MODEL = shared.register_export_format(shared.ExportFormat(
    name="saved-model", framework="keras", artifact="saved_model.pb", tolerance=1e-4, options=frozenset(),
    export=_export_saved_model, run=run_saved_model,
    description="TensorFlow SavedModel (TF Serving, Vertex AI), serving_default signature",
))
LITERT = shared.register_export_format(shared.ExportFormat(
    name="litert", framework="keras", artifact="model.tflite", tolerance=1e-3, options=frozenset(),
    export=_export_litert, run=run_litert,
    description="LiteRT flatbuffer (model.tflite), builtin ops only, serving_default signature",
))
shared.register_framework("keras", load_model, run_eager)


def main(argv: list[str] | None = None) -> int:
    """``python -m d2v_tf.export``: the shared CLI, restricted to the Keras formats."""
    return shared.main(argv, framework="keras")


if __name__ == "__main__":
    from d2v_common.io_utils import run_as_script

    run_as_script("d2v_tf.export")  # the canonical module, not this __main__ copy (see run_as_script)
