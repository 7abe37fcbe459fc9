"""JAX backend: numpy masks as ``jax.pure_callback`` (they compile inside ``jax.jit``), Keras'
stateless steps (variables change only through the step's returned state), ``make_fast`` as
one ``jax.jit`` of ``model.stateless_call``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras
import numpy as np

from d2v_tf.backend.generic import CompiledCalls
from d2v_tf.backend.generic import LayerHooks  # noqa: F401  (re-exported)
from d2v_tf.backend.generic import raising_failed_checks as generic_raising_failed_checks
from d2v_tf.backend.generic import (  # noqa: F401  (re-exported)
    all_reduce_sum,
    conv1d,
    conv2d,
    cross_replica,
    current_values,
    embedding_lookup,
    linear,
    matmul_transposed,
    transpose_weight,
    replica_context,
    stateless_values,
    update_variable,
)

NUMPY_CALLBACKS_COMPILE = True


def stateless_uniform(shape, seed, salt: int):
    """float32 uniforms in [0, 1) fixed by the (2,) uint32 ``seed`` (a raw JAX key) and ``salt``."""
    key = jax.random.fold_in(jnp.asarray(seed, "uint32"), salt)
    return jax.random.uniform(key, tuple(shape), dtype="float32")


def is_concrete(x) -> bool:
    """A value known now (not a tracer inside ``jax.jit`` / ``jax.grad``)."""
    return not isinstance(x, jax.core.Tracer)


def numpy_call(fn, inputs, dtypes, shapes):
    """``fn`` (numpy in, numpy out) on ``inputs``, also inside ``jax.jit`` (the shapes are static
    there). The callback runs on the host each time the step runs."""
    shapes = [tuple(int(d) for d in s) for s in shapes]
    specs = tuple(jax.ShapeDtypeStruct(s, jnp.dtype(d)) for s, d in zip(shapes, dtypes))

    def host(*arrays):
        outs = fn(*[np.asarray(a) for a in arrays])
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        return tuple(np.asarray(o, dtype=s.dtype).reshape(s.shape) for o, s in zip(outs, specs))

    return tuple(jax.pure_callback(host, specs, *[jnp.asarray(a) for a in inputs]))


# The first failed value check of the compiled calls d2v runs (see generic.CompiledCalls).
_FAILED: list = []
_TRACED_IN_COMPILED_CALLS = [False]


def value_check(bad, values, describe, summary: str):
    """A data-dependent check inside ``jax.jit``: a host callback that sees the values. Traced
    inside a compiled call d2v runs, it records ``describe(offending values)`` and the call
    raises it as a ValueError once it returns; traced elsewhere (a user's ``jax.jit``), it
    raises in the callback (JAX re-raises it from the compiled call)."""
    deferred = CompiledCalls.depth > 0
    _TRACED_IN_COMPILED_CALLS[0] |= deferred

    def host(bad, values):
        bad = np.asarray(bad)
        if not bad.any():
            return
        message = describe(np.asarray(values)[bad])
        if not deferred:
            raise ValueError(message)
        if not _FAILED:
            _FAILED.append(message)

    jax.debug.callback(host, bad, values)


def raise_failed_check(cause: Exception | None = None):
    """Raise the first failed check recorded by the compiled calls (waiting for their host
    callbacks: JAX dispatches asynchronously)."""
    if _TRACED_IN_COMPILED_CALLS[0]:
        jax.effects_barrier()
    if _FAILED:
        message = _FAILED[0]
        _FAILED.clear()
        raise ValueError(message) from cause


# What Keras' JAX steps carry in their state tuple (train, test, predict), by its length.
_STEP_STATE = {
    4: ("trainable_variables", "non_trainable_variables", "optimizer_variables", "metrics_variables"),
    3: ("trainable_variables", "non_trainable_variables", "metrics_variables"),
    2: ("trainable_variables", "non_trainable_variables"),
}


def raising_failed_checks(fn, model=None):
    """``generic.raising_failed_checks``; for a Keras step of ``model`` it first puts the step's
    state back into the variables (Keras' JAX loops hold them only in that state, so an error
    raised in the loop would leave the model without weights)."""
    if model is None or fn is None or getattr(fn, "raises_failed_checks", False):
        return generic_raising_failed_checks(fn, raise_failed_check)

    def restore(state):
        if not isinstance(state, (tuple, list)) or len(state) not in _STEP_STATE:
            return
        if any(getattr(leaf, "is_deleted", lambda: False)() for leaf in jax.tree_util.tree_leaves(state)):
            return  # donated to the compiled step
        model._jax_state = dict(zip(_STEP_STATE[len(state)], state))
        model._jax_state_synced = False
        model.jax_state_sync()

    def step(state, *args, **kwargs):
        try:
            out = fn(state, *args, **kwargs)
        except Exception as error:
            try:
                raise_failed_check(cause=error)
            except ValueError:
                restore(state)
                raise
            restore(state)
            raise
        try:
            raise_failed_check()
        except ValueError:
            restore(out[1])
            raise
        return out

    return generic_raising_failed_checks(step, lambda cause=None: None)


def shape_changing_cond(pred, true_fn, false_fn):
    raise ValueError(
        "a random layer drop that changes the sequence length (adapter layerdrop) cannot run inside "
        "jax.jit; compile with run_eagerly=True or set adapter layerdrop to 0"
    )


# ----------------------------------------------------------------------- compiled calls


def compile_inference(model, jit_compile):
    """``inputs dict -> model output``: ``model.stateless_call`` under ``jax.jit`` (Python flags
    such as ``output_hidden_states`` are static; one trace per input signature), reading the
    variables' current values at each call. ``jit_compile=False`` runs it un-jitted."""
    output_class = {}

    def run(trainable, non_trainable, arrays, flags):
        out, _ = model.stateless_call(trainable, non_trainable, **arrays, **dict(flags), training=False,
                                      return_dict=True)
        output_class["cls"] = type(out)
        return dict(out)

    compiled = run if jit_compile is False else jax.jit(run, static_argnums=(3,))

    def call(inputs):
        arrays = {k: v for k, v in inputs.items() if v is not None and not isinstance(v, (bool, int, float, str))}
        flags = tuple(sorted((k, v) for k, v in inputs.items() if k not in arrays))
        result = compiled(
            [v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
            arrays, flags,
        )
        return output_class["cls"](**result)

    return call


_REGISTERED: set = set()


def register_output_classes():
    """Make every d2v output class a JAX pytree, so outputs cross ``jax.jit`` / ``jax.grad``
    (Keras' JAX steps return ``y_pred`` through them)."""
    from d2v_common.models.outputs import ModelOutput

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    for cls in subclasses(ModelOutput):
        if cls in _REGISTERED:
            continue
        jax.tree_util.register_pytree_node(
            cls,
            lambda out: (tuple(out.values()), tuple(out.keys())),
            lambda keys, values, cls=cls: cls(**dict(zip(keys, values))),
        )
        _REGISTERED.add(cls)


# ------------------------------------------------------------------------- Keras steps


class ModelSteps:
    """Keras steps of the d2v models (JAX's convention: ``step(state, data)``)."""

    def predict_step(self, state, data):
        trainable, non_trainable = state
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        out, non_trainable = self.stateless_call(trainable, non_trainable, x, training=False)
        return self._predict_outputs(out), non_trainable


class PretrainingSteps:
    """data2vec's train step, stateless: gradients via ``jax.value_and_grad`` of
    ``stateless_call``, ``optimizer.stateless_apply``, then the EMA teacher update and the
    loss tracker inside a ``StatelessScope``, their new values returned in the state."""

    def _pretraining_loss(self, trainable, non_trainable, x):
        out, non_trainable = self.stateless_call(trainable, non_trainable, x, training=True)
        return out.loss, (out, non_trainable)

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        grad_fn = jax.value_and_grad(self._pretraining_loss, has_aux=True)
        (_, (out, non_trainable)), grads = grad_fn(trainable, non_trainable, x)
        trainable, optimizer_vars = self.optimizer.stateless_apply(optimizer_vars, grads, trainable)
        with keras.StatelessScope(stateless_values(self, trainable, non_trainable, metrics_vars)) as scope:
            tau = self.ema_update()
            logs = self._logs(out, tau)
        non_trainable = current_values(scope, self.non_trainable_variables)
        metrics_vars = current_values(scope, self.metrics_variables)
        return logs, (trainable, non_trainable, optimizer_vars, metrics_vars)

    def test_step(self, state, data):
        trainable, non_trainable, metrics_vars = state
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        out, non_trainable = self.stateless_call(trainable, non_trainable, x, training=False)
        with keras.StatelessScope(stateless_values(self, trainable, non_trainable, metrics_vars)) as scope:
            logs = self._logs(out)
        return logs, (trainable, non_trainable, current_values(scope, self.metrics_variables))
