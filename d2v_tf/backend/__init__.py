"""What ``keras.ops`` does not cover, one small module per Keras backend.

The d2v Keras classes are written against ``keras.ops`` and run on every Keras 3 backend. The
few pieces that differ between backends live here, chosen once from
``keras.backend.backend()``:

- ``tensorflow.py``: the TensorFlow kernels the speed work picked (2-D GEMM + bias_add, dense
  embedding gradients, per-group convs), ``tf.numpy_function`` masks, ``tf.distribute``
  all-reduces and cross-replica EMA updates, ``make_fast`` as one ``tf.function`` (XLA or graph).
- ``jax.py``: ``jax.pure_callback`` masks (they compile inside ``jax.jit``), Keras' stateless
  train / test / predict steps (the EMA teacher update flows through the step's returned
  state), ``make_fast`` as one ``jax.jit`` of ``model.stateless_call``.
- ``torch.py``: eager PyTorch (masks are numpy calls; ``make_fast`` runs the model eagerly).

``generic.py`` holds the ``keras.ops`` versions that JAX and PyTorch share.
"""

from __future__ import annotations

import importlib

import keras

NAME = keras.backend.backend()
SUPPORTED = ("tensorflow", "jax", "torch")
if NAME not in SUPPORTED:
    raise ImportError(f"d2v_tf runs on the Keras backends {', '.join(SUPPORTED)}; KERAS_BACKEND is {NAME!r}")

_impl = importlib.import_module(f"{__name__}.{NAME}")

# Whether numpy mask callbacks compile into the backend's jitted step (XLA cannot hold
# tf.numpy_function; jax.pure_callback compiles).
NUMPY_CALLBACKS_COMPILE: bool = _impl.NUMPY_CALLBACKS_COMPILE

is_concrete = _impl.is_concrete
linear = _impl.linear
embedding_lookup = _impl.embedding_lookup
conv1d = _impl.conv1d
conv2d = _impl.conv2d
matmul_transposed = _impl.matmul_transposed
transpose_weight = _impl.transpose_weight
numpy_call = _impl.numpy_call
value_check = _impl.value_check
raise_failed_check = _impl.raise_failed_check
raising_failed_checks = _impl.raising_failed_checks
shape_changing_cond = _impl.shape_changing_cond
stateless_uniform = _impl.stateless_uniform
replica_context = _impl.replica_context
all_reduce_sum = _impl.all_reduce_sum
cross_replica = _impl.cross_replica
update_variable = _impl.update_variable
compile_inference = _impl.compile_inference
register_output_classes = _impl.register_output_classes
ModelSteps = _impl.ModelSteps
LayerHooks = _impl.LayerHooks
PretrainingSteps = _impl.PretrainingSteps

__all__ = [
    "NAME",
    "NUMPY_CALLBACKS_COMPILE",
    "ModelSteps",
    "LayerHooks",
    "PretrainingSteps",
    "all_reduce_sum",
    "compile_inference",
    "conv1d",
    "conv2d",
    "cross_replica",
    "embedding_lookup",
    "is_concrete",
    "linear",
    "matmul_transposed",
    "numpy_call",
    "raise_failed_check",
    "raising_failed_checks",
    "register_output_classes",
    "replica_context",
    "shape_changing_cond",
    "stateless_uniform",
    "transpose_weight",
    "update_variable",
    "value_check",
]
