"""Training parity: one optimizer step in PyTorch and in Keras from the same weights and batch.

Dropout-like randomness is switched off (``deterministic_config``); BatchNorm runs in training
mode in both. The Keras step is what ``model.fit`` does: forward with ``training=True``, the
built-in loss, gradients, ``optimizer.apply``.
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


def one_step(case: Case, optimizer: str, seed: int = 0, lr: float | None = None, weight_decay: float = 0.01):
    """Weights after one step in each framework: (torch arrays, keras arrays, losses)."""
    import tensorflow as tf
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
    with tf.GradientTape() as tape:
        loss_tf = tfm(**inputs, **case.call_kwargs, training=True).loss
    variables = tfm.trainable_variables
    grads = tape.gradient(loss_tf, variables)
    kopt.apply([g for g in grads if g is not None], [v for g, v in zip(grads, variables) if g is not None])
    return pt.state_arrays(), tfm.state_arrays(), (float(loss_pt), float(loss_tf))


def step_parity(case: Case, optimizer: str, seed: int = 0) -> tuple[float, str, tuple[float, float]]:
    """Largest |difference| of updated weights between the frameworks, and where."""
    a, b, losses = one_step(case, optimizer, seed)
    worst, where = 0.0, ""
    for name, value in a.items():
        d = float(np.abs(value.astype(np.float64) - b[name].astype(np.float64)).max()) if value.size else 0.0
        if d > worst:
            worst, where = d, name
    return worst, where, losses
