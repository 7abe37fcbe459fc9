"""PyTorch backend: eager execution, so masks are plain numpy calls and every value is concrete;
``make_fast`` runs the model under ``torch.no_grad``."""

from __future__ import annotations

import keras
import numpy as np
import torch
from keras import ops

from d2v_tf.backend import generic
from d2v_tf.backend.generic import (  # noqa: F401  (re-exported)
    ModelSteps,
    all_reduce_sum,
    check_now,
    conv1d,
    conv2d,
    cross_replica,
    embedding_lookup,
    linear,
    matmul_transposed,
    transpose_weight,
    register_output_classes,
    replica_context,
    update_variable,
)

NUMPY_CALLBACKS_COMPILE = False  # Keras' torch trainer runs eagerly anyway


def _param_key(path: str) -> str:
    return path.replace(".", "-")


class LayerHooks:
    """Keras' torch layers key their ``torch.nn.ParameterDict`` by variable path, and PyTorch
    refuses keys with "."; d2v's paths are module paths (``encoder.layer.0.query/kernel``: the
    layouts of ``keras.distribution`` match them), so the keys swap "." for "-"."""

    def _track_variables(self):
        self._torch_params = torch.nn.ParameterDict({_param_key(v.path): v.value for v in self.variables})

    def _post_track_variable(self, variable):
        if hasattr(self, "_torch_params") and _param_key(variable.path) not in self._torch_params:
            self._torch_params[_param_key(variable.path)] = variable.value

    def _post_untrack_variable(self, variable):
        if hasattr(self, "_torch_params") and _param_key(variable.path) in self._torch_params:
            self._torch_params.pop(_param_key(variable.path))


def is_concrete(x) -> bool:
    return True


def stateless_uniform(shape, seed, salt: int):
    """float32 uniforms in [0, 1) fixed by the (2,) integer ``seed`` and ``salt``: a fresh
    ``torch.Generator`` seeded from them (eager, so the seed's values are at hand)."""
    seed = ops.convert_to_tensor(seed)
    first, second = (int(v) for v in seed.tolist())
    device = seed.device  # Keras' device
    generator = torch.Generator(device=device)
    generator.manual_seed(hash((first, second, salt)) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.rand(tuple(int(d) for d in shape), generator=generator, device=device, dtype=torch.float32)


def numpy_call(fn, inputs, dtypes, shapes):
    outs = fn(*[np.asarray(ops.convert_to_numpy(a)) for a in inputs])
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return tuple(ops.convert_to_tensor(np.asarray(o, dtype=d)) for o, d in zip(outs, dtypes))


def value_check(bad, values, describe, summary: str):
    """Values are concrete on PyTorch: the check runs at once."""
    check_now(bad, values, describe)


def raise_failed_check(cause: Exception | None = None):
    """Nothing is deferred on PyTorch."""


def raising_failed_checks(fn, model=None):
    return fn


def shape_changing_cond(pred, true_fn, false_fn):
    return true_fn() if bool(pred) else false_fn()


def compile_inference(model, jit_compile):
    """Eager inference without autograd (Keras' torch backend has no graph compiler here)."""

    def call(inputs):
        with torch.no_grad():
            return model(**inputs, training=False, return_dict=True)

    return call


class PretrainingSteps(generic.PretrainingEvalStep):
    """data2vec's train step, eager: backward, optimizer, then the EMA teacher update."""

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.zero_grad()
        out = self(x, training=True)
        out.loss.backward()
        variables = self.trainable_variables
        grads = [v.value.grad for v in variables]
        with torch.no_grad():
            self.optimizer.apply(grads, variables)
            tau = self.ema_update()
        return self._logs(out, tau)
