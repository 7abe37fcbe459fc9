"""Training parity: one optimizer step in PyTorch and in Keras from the same weights and batch.

Dropout-like randomness is switched off (``deterministic_config``); BatchNorm runs in training
mode in both. The Keras step is what ``model.fit`` does: forward with ``training=True``, the
built-in loss, gradients, then the optimizer, each with the Keras backend's own mechanism
(``KERAS_STEPS``): a ``tf.GradientTape`` on TensorFlow; on JAX ``model.stateless_call`` under
``jax.value_and_grad`` and ``optimizer.stateless_apply``; ``backward()`` on PyTorch.
"""

from __future__ import annotations

import math

import numpy as np

from crosscheck.cases.base import Case
from d2v_common.spec import weight_spec

# Fields that make a forward pass random in training.
_RANDOM_FIELDS = ("dropout", "drop_path_rate", "layerdrop", "mask_time_prob", "mask_feature_prob")

BETAS = (0.9, 0.999)
KERAS_EPSILON = 1e-7


def deterministic_config(config):
    """A copy of ``config`` with every dropout-like probability at 0."""
    changes = {k: 0.0 for k, v in config.to_dict().items()
               if isinstance(v, float) and any(k.endswith(f) or f in k for f in _RANDOM_FIELDS)}
    return config.copy(**changes)


def torch_optimizer(name: str, params, lr: float, weight_decay: float):
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    # Keras adds epsilon before the bias correction, torch after it: at step 1 the two agree
    # when torch's epsilon is Keras' divided by sqrt(1 - beta_2).
    eps = KERAS_EPSILON / math.sqrt(1 - BETAS[1])
    return torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=eps, weight_decay=weight_decay)


def keras_optimizer(name: str, lr: float, weight_decay: float):
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr)
    return keras.optimizers.AdamW(
        learning_rate=lr, beta_1=BETAS[0], beta_2=BETAS[1], epsilon=KERAS_EPSILON, weight_decay=weight_decay
    )


def _tensorflow_step(model, optimizer, inputs: dict, call_kwargs: dict) -> float:
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = model(**inputs, **call_kwargs, training=True).loss
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    optimizer.apply([g for g in grads if g is not None], [v for g, v in zip(grads, variables) if g is not None])
    return float(loss)


def _jax_step(model, optimizer, inputs: dict, call_kwargs: dict) -> float:
    """Keras' stateless API: the new weights come back as values, then are assigned."""
    import jax

    def loss_fn(trainable, non_trainable):
        out, non_trainable = model.stateless_call(trainable, non_trainable, **inputs, **call_kwargs, training=True)
        return out.loss, non_trainable

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    # one compiled function: far quicker than JAX's op-by-op dispatch on a first run
    (loss, non_trainable), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(trainable, non_trainable)
    optimizer.build(model.trainable_variables)
    # variables without a gradient get zeros on JAX (None elsewhere): equal for SGD, not AdamW
    trainable, _ = optimizer.stateless_apply([v.value for v in optimizer.variables], grads, trainable)
    for variable, value in zip(model.trainable_variables, trainable):
        variable.assign(value)
    for variable, value in zip(model.non_trainable_variables, non_trainable):
        variable.assign(value)
    return float(loss)


def _torch_step(model, optimizer, inputs: dict, call_kwargs: dict) -> float:
    import torch

    model.zero_grad()
    loss = model(**inputs, **call_kwargs, training=True).loss
    loss.backward()
    variables = [v for v in model.trainable_variables if v.value.grad is not None]
    with torch.no_grad():
        optimizer.apply([v.value.grad for v in variables], variables)
    return float(loss)


# One Keras training step per backend: (model, optimizer, inputs, call kwargs) -> loss.
KERAS_STEPS = {"tensorflow": _tensorflow_step, "jax": _jax_step, "torch": _torch_step}


def one_step(case: Case, optimizer: str, seed: int = 0, lr: float | None = None, weight_decay: float = 0.01):
    """Weights after one step in each framework: (torch arrays, keras arrays, losses)."""
    import keras
    import torch

    import d2v_tf
    import d2v_torch
    from crosscheck.runner import torch_inputs

    # AdamW's first step moves every weight by about lr * sign(grad): for near-zero gradients
    # (BatchNorm over a 1x1 pooled map) float32 round-off in the gradient then shows up at
    # lr scale, so the check uses a fine-tuning learning rate.
    lr = lr if lr is not None else (0.1 if optimizer == "sgd" else 1e-4)
    config = deterministic_config(case.config)
    arrays = weight_spec(config, case.architecture).random_arrays(seed)
    inputs = case.make_inputs(np.random.default_rng(seed + 1))

    pt = d2v_torch.model_class(case.architecture)(config)
    pt.load_arrays(arrays)
    pt.train()
    opt = torch_optimizer(optimizer, [p for p in pt.parameters() if p.requires_grad], lr, weight_decay)
    loss_pt = pt(**torch_inputs(inputs), **case.call_kwargs).loss
    opt.zero_grad()
    loss_pt.backward()
    opt.step()

    tfm = d2v_tf.model_class(case.architecture)(config)
    tfm.load_arrays(arrays)
    kopt = keras_optimizer(optimizer, lr, weight_decay)
    loss_tf = KERAS_STEPS[keras.backend.backend()](tfm, kopt, inputs, case.call_kwargs)
    return pt.state_arrays(), tfm.state_arrays(), (float(loss_pt), loss_tf)


def step_parity(case: Case, optimizer: str, seed: int = 0) -> tuple[float, str, tuple[float, float]]:
    """Largest |difference| of updated weights between the frameworks, and where."""
    a, b, losses = one_step(case, optimizer, seed)
    worst, where = 0.0, ""
    for name, value in a.items():
        d = float(np.abs(value.astype(np.float64) - b[name].astype(np.float64)).max()) if value.size else 0.0
        if d > worst:
            worst, where = d, name
    return worst, where, losses
