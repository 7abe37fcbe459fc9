"""TensorFlow backend: the kernels the speed work chose, numpy masks as ``tf.numpy_function``,
``tf.distribute`` reductions and cross-replica EMA updates, ``make_fast`` as a ``tf.function``."""

from __future__ import annotations

import keras
import tensorflow as tf

from d2v_common.models.losses import SHOWN_BAD_LABELS
from d2v_tf.backend import generic
from d2v_tf.backend.generic import CompiledCalls
from d2v_tf.backend.generic import LayerHooks  # noqa: F401  (re-exported)
from d2v_tf.backend.generic import register_output_classes  # noqa: F401  (re-exported)

# XLA cannot compile tf.numpy_function: steps with random numpy masks run as TF graphs.
NUMPY_CALLBACKS_COMPILE = False


def is_concrete(x) -> bool:
    """An eager tensor (its values can be read and checked in numpy), not a graph tensor."""
    return hasattr(x, "numpy")


# ------------------------------------------------------------------------------ kernels


def stateless_uniform(shape, seed, salt: int):
    """float32 uniforms in [0, 1) fixed by the (2,) integer ``seed`` and ``salt`` (the same
    numbers on every call: a recomputed block draws the dropout masks of its forward)."""
    seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, "int64"), salt)
    return tf.random.stateless_uniform(shape, seed=seed, dtype="float32")


def transpose_weight(array, perm):
    """A loaded weight in another axis order, for a new variable: TF's transpose (tiled,
    multi-threaded) takes about half the time of numpy's on the base models' kernels."""
    return tf.transpose(array, perm)


def linear(x, kernel, bias):
    if len(x.shape) == 2:
        y = tf.matmul(x, kernel)
        return tf.nn.bias_add(y, bias) if bias is not None else y
    # As one 2-D GEMM with the bias right after it: oneDNN runs that faster than a broadcast
    # batch matmul, and TF graphs fuse the pair (a reshape in between would stop that).
    lead = [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])]
    y = tf.matmul(tf.reshape(x, (-1, kernel.shape[0])), kernel)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return tf.reshape(y, lead + [kernel.shape[1]])


@tf.custom_gradient
def _lookup_with_dense_gradient(table, ids):
    """Row lookup whose gradient is a dense table, as in PyTorch. TensorFlow would return
    IndexedSlices, which Keras' Adam-type optimizers update wrongly when an id repeats in a
    batch (each repeat is applied on its own instead of being summed first)."""
    rows = tf.gather(table, ids)

    def grad(upstream):
        flat = tf.reshape(upstream, (-1, tf.shape(table)[1]))
        dense = tf.math.unsorted_segment_sum(flat, tf.reshape(ids, (-1,)), tf.shape(table)[0])
        return dense, None

    return rows, grad


def embedding_lookup(table, ids):
    return _lookup_with_dense_gradient(tf.convert_to_tensor(table), ids)


def conv1d(x, kernel, stride: int, dilation: int, groups: int):
    if groups == 1:
        return tf.nn.conv1d(x, kernel, stride=stride, padding="VALID", dilations=dilation)
    # One conv per group: TF's CPU kernels have no grouped-conv gradient outside float32.
    xs = tf.split(x, groups, axis=-1)
    ks = tf.split(kernel, groups, axis=-1)
    return tf.concat(
        [tf.nn.conv1d(a, k, stride=stride, padding="VALID", dilations=dilation) for a, k in zip(xs, ks)], axis=-1
    )


def conv2d(x, kernel, stride, dilation):
    return tf.nn.conv2d(x, kernel, strides=stride, padding="VALID", dilations=dilation)


def matmul_transposed(a, b):
    return tf.matmul(a, b, transpose_b=True)


# ---------------------------------------------------------------- data-dependent pieces


def numpy_call(fn, inputs, dtypes, shapes):
    """``fn`` (numpy in, numpy out) on ``inputs``, also inside a traced graph; one tensor per
    entry of ``dtypes`` / ``shapes`` (a static shape may hold None)."""

    def host(*arrays):
        outs = fn(*arrays)
        return tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)  # always one entry per dtype

    outs = tf.numpy_function(host, list(inputs), [tf.as_dtype(d) for d in dtypes], stateful=True)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]  # eager: one output comes back bare
    for out, shape in zip(outs, shapes):
        out.set_shape(shape)
    return tuple(outs)


# How many offending values a failed check keeps (as many as the messages show).
_SHOWN = SHOWN_BAD_LABELS
# describe() of every check traced inside a compiled call d2v runs; a failure records its index.
_CHECKS: list = []
# [check index + 1 (0: none failed), offending count, the first offending values]
_failed = None


def _failed_check_variable():
    global _failed
    if _failed is None:
        with tf.init_scope():  # created eagerly, whatever graph is being traced
            _failed = tf.Variable(
                tf.zeros([2 + _SHOWN], tf.int64), trainable=False, name="d2v_failed_check",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
    return _failed


def value_check(bad, values, describe, summary: str):
    """A data-dependent check inside a traced graph (eager calls check in numpy before this).

    Inside a compiled call d2v runs (Keras' train / test / predict functions, ``make_fast``)
    the step records the first failure (which check, its first offending values) in a variable
    and the call raises ``ValueError(describe(values))`` once it returns: this works under XLA
    too, which drops ``tf.debugging.Assert``. In any other graph it is a graph assert.
    """
    bad = tf.convert_to_tensor(bad)
    if CompiledCalls.depth == 0:
        tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [summary])
        return
    _CHECKS.append(describe)
    check_id = len(_CHECKS)
    # padded so that top_k always finds _SHOWN entries; earlier offending positions rank higher
    flat_bad = tf.concat([tf.reshape(bad, [-1]), tf.zeros([_SHOWN], tf.bool)], 0)
    flat = tf.concat([tf.cast(tf.reshape(values, [-1]), tf.int64), tf.zeros([_SHOWN], tf.int64)], 0)
    n = tf.shape(flat_bad)[0]
    rank = tf.where(flat_bad, -tf.range(n), -n)
    first = tf.math.top_k(rank, k=_SHOWN).indices
    count = tf.reduce_sum(tf.cast(flat_bad, tf.int64))
    record = tf.concat([tf.constant([check_id], tf.int64), [count], tf.gather(flat, first)], 0)
    variable = _failed_check_variable()
    before = variable.read_value()
    variable.assign(tf.where(tf.logical_or(before[0] != 0, count == 0), before, record))


def raise_failed_check(cause: Exception | None = None):
    """Raise the first failed check a compiled call recorded (and forget it)."""
    if _failed is None:
        return
    record = _failed.numpy()
    if record[0] == 0:
        return
    _failed.assign(tf.zeros_like(_failed))
    shown = record[2:2 + min(int(record[1]), _SHOWN)]
    raise ValueError(_CHECKS[int(record[0]) - 1](shown)) from cause


def raising_failed_checks(fn, model=None):
    return generic.raising_failed_checks(fn, raise_failed_check)


def shape_changing_cond(pred, true_fn, false_fn):
    """A graph conditional whose branches may return different shapes."""
    return tf.cond(pred, true_fn, false_fn)


# ----------------------------------------------------------------------- tf.distribute


def replica_context():
    """The replica context when running on several replicas (``strategy.run``), else None."""
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def all_reduce_sum(ctx, x):
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def cross_replica(fn):
    """``fn(strategy)`` in cross-replica context (merge_call from inside ``strategy.run``)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context (a strategy scope, outside strategy.run)
        return fn(tf.distribute.get_strategy())
    return ctx.merge_call(fn)


def update_variable(strategy, variable, fn, *args):
    """variable <- fn(value, *args) on every replica's copy (cross-replica context)."""
    strategy.extended.update(variable.value, lambda v, *a: v.assign(fn(v, *a)), args=args, group=False)


# ----------------------------------------------------------------------- compiled calls


def compile_inference(model, jit_compile):
    """``inputs dict -> model output`` as one ``tf.function`` (XLA with ``jit_compile``; the
    default picks XLA on a GPU and the graph on CPU, where oneDNN beats XLA)."""
    if jit_compile is None:
        jit_compile = bool(tf.config.list_physical_devices("GPU"))
    output_class = {}

    def run(inputs):
        out = model(**inputs, training=False, return_dict=True)
        output_class["cls"] = type(out)
        return dict(out)  # tf.function returns plain nests; the class is restored below

    compiled = tf.function(run, jit_compile=jit_compile)

    def call(inputs):
        result = compiled(inputs)  # traces on first use, which records the output class
        return output_class["cls"](**result)

    return call


class ModelSteps(generic.ModelSteps):
    """The ``step(data)`` Keras steps, plus building under a ``tf.distribute`` strategy."""
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Every weight exists from the constructor on; Keras still traces one batch to build
        # compiled metrics. Under a strategy it would average the replicas' batches first,
        # which turns token ids into floats: one replica's batch has the right shapes and dtypes.
        strategy = getattr(self, "_distribute_strategy", None)
        if strategy is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = next(it)
                break
        data_batch = keras.tree.map_structure(
            lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v,
            data_batch,
        )
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)


class PretrainingSteps(generic.PretrainingEvalStep):
    """data2vec's train step: gradients, optimizer, then the EMA teacher update."""

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            out = self(x, training=True)
        variables = self.trainable_variables
        grads = tape.gradient(out.loss, variables)
        self.optimizer.apply(grads, variables)
        tau = self.ema_update()
        return self._logs(out, tau)
