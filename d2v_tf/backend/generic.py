"""``keras.ops`` versions of the backend pieces, shared by the JAX and PyTorch modules."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def transpose_weight(array, perm):
    """A loaded weight in another axis order (canonical -> Keras layout), for a new variable."""
    return np.ascontiguousarray(np.transpose(array, perm))


def linear(x, kernel, bias):
    y = ops.matmul(x, kernel)
    return y + bias if bias is not None else y


def embedding_lookup(table, ids):
    # JAX and PyTorch differentiate a take into a dense table gradient (as torch.nn.Embedding).
    return ops.take(table, ids, axis=0)


def conv1d(x, kernel, stride: int, dilation: int, groups: int):
    """(B, T, C) with a (K, C / groups, O) kernel, no padding; groups come from the kernel."""
    return ops.conv(x, kernel, strides=stride, padding="valid", data_format="channels_last", dilation_rate=dilation)


def conv2d(x, kernel, stride, dilation):
    return ops.conv(x, kernel, strides=stride, padding="valid", data_format="channels_last", dilation_rate=dilation)


def matmul_transposed(a, b):
    """a @ b^T over the last two axes."""
    return ops.matmul(a, ops.swapaxes(b, -1, -2))


# ------------------------------------------------------------------ value checks in compiled steps


class CompiledCalls:
    """How many compiled calls that d2v runs and reports on (Keras' train / test / predict
    functions, ``make_fast``) are under way. A value check traced inside one records its
    failure, and the call raises it as a ValueError once it returns; a check traced anywhere
    else (a user's own ``tf.function`` or ``jax.jit``) fails inside the graph instead."""

    depth = 0


def raising_failed_checks(fn, raise_failed_check):
    """``fn`` run as a compiled call that d2v reports on: afterwards ``raise_failed_check()``
    raises the first value check that failed in it. Wrapping twice changes nothing."""
    if fn is None or getattr(fn, "raises_failed_checks", False):
        return fn

    def call(*args, **kwargs):
        CompiledCalls.depth += 1
        try:
            out = fn(*args, **kwargs)
        except Exception as error:
            raise_failed_check(cause=error)  # the failed check, if any, explains the error
            raise
        finally:
            CompiledCalls.depth -= 1
        raise_failed_check()
        return out

    call.raises_failed_checks = True
    return call


def check_now(bad, values, describe):
    """The eager form of ``value_check``: ValueError(describe(offending values)) at once."""
    bad = np.asarray(ops.convert_to_numpy(bad))
    if bad.any():
        raise ValueError(describe(np.asarray(ops.convert_to_numpy(values))[bad]))


def replica_context():
    # Multi-device runs on JAX shard global arrays (keras.distribution): every sum is global.
    return None


def all_reduce_sum(ctx, x):
    return x


def cross_replica(fn):
    return fn(None)


def update_variable(strategy, variable, fn, *args):
    """variable <- fn(variable's value, *args)."""
    variable.assign(fn(variable.value, *args))


def stateless_values(model, trainable, non_trainable, metrics=None):
    """(variable, value) pairs for a ``keras.StatelessScope`` over a step's state."""
    mapping = list(zip(model.trainable_variables, trainable)) + list(zip(model.non_trainable_variables, non_trainable))
    if metrics is not None:
        mapping += list(zip(model.metrics_variables, metrics))
    return mapping


def current_values(scope: keras.StatelessScope, variables):
    """Values after a ``StatelessScope``: the assigned one, else the variable's own."""
    out = []
    for v in variables:
        new = scope.get_current_value(v)
        out.append(v.value if new is None else new)
    return out


def register_output_classes():
    """Nothing to do where no compiler flattens outputs (the output classes are dicts)."""


class LayerHooks:
    """Backend hooks mixed into every d2v Keras layer and model (none outside PyTorch)."""


class ModelSteps:
    """Keras steps of the d2v models with the ``step(data)`` convention (TensorFlow, PyTorch)."""

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._predict_outputs(self(x, training=False))


class PretrainingEvalStep:
    """``test_step(data)`` of the pretraining models: the loss and statistics, no update."""

    def test_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._logs(self(x, training=False))
