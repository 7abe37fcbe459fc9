"""Gradient checkpointing for the Keras encoders, twin of ``checkpointed`` in ``d2v_torch/layers.py``.

With ``model.gradient_checkpointing_enable()`` each encoder layer runs under ``keras.remat``
(``tf.recompute_grad`` on TensorFlow, ``jax.checkpoint`` on JAX, ``torch.utils.checkpoint`` on
PyTorch): its activations are dropped after the forward and recomputed in the backward pass;
so does each conv layer of the audio feature encoders (``Checkpointing.remat_call``), as in torch.

The recomputation must draw the dropout masks of the forward. So in training every encoder
layer runs as a *seeded block*: the encoder draws one seed per layer call from its own
``SeedGenerator`` (outside the recomputed function) and hands it in as an input; the dropout
and drop-path layers inside draw stateless numbers from that seed (``block_uniform``), the
k-th draw of the block salted with k. The same seed gives the same masks in the recomputation,
and the plain (not checkpointed) model draws exactly the same masks, so the gradients are equal.
"""

from __future__ import annotations

import contextlib
import threading

import keras

from d2v_common.models.checks import check_checkpointable
from d2v_tf import backend

_BLOCKS = threading.local()  # the stack of seeded blocks now running (each: [seed, draws so far])


@contextlib.contextmanager
def seeded_block(seed):
    """Random layers called inside draw from ``seed`` (see ``block_uniform``)."""
    stack = _BLOCKS.__dict__.setdefault("stack", [])
    stack.append([seed, 0])
    try:
        yield
    finally:
        stack.pop()


def in_seeded_block() -> bool:
    return bool(getattr(_BLOCKS, "stack", None))


def block_uniform(shape):
    """float32 uniforms in [0, 1) from the running block's seed, salted with the draw's
    position in the block (the recomputation makes the same draws in the same order)."""
    block = _BLOCKS.stack[-1]
    seed, salt = block
    block[1] += 1
    return backend.stateless_uniform(shape, seed, salt)


class Checkpointing:
    """Mixin of the Keras layers that ``gradient_checkpointing_enable()`` switches (its
    ``gradient_checkpointing`` flag): the encoders below, and the audio feature encoders, whose
    conv layers hold no randomness and run under ``keras.remat`` as they are (``remat_call``)."""

    gradient_checkpointing = False

    def remat_call(self, layer, x, training: bool):
        """``layer(x)``, recomputed in the backward pass when training with checkpointing on
        (and the layer is trainable: a frozen one keeps nothing for the backward pass)."""
        if not (training and self.gradient_checkpointing and self.trainable):
            return layer(x)
        return keras.remat(lambda x: layer(x))(x)


class CheckpointingEncoder(Checkpointing):
    """Mixin of the Keras encoders (``keras.layers.Layer`` subclasses): ``call_layer`` runs one
    encoder layer, as a seeded block in training and under ``keras.remat`` when
    ``gradient_checkpointing`` is on. Call ``init_checkpointing()`` in ``__init__``."""

    def init_checkpointing(self) -> None:
        self.gradient_checkpointing = False
        self.block_seed_generator = keras.random.SeedGenerator()

    def call_layer(self, layer, x, tensors: dict, training: bool, **options):
        """``layer(x, **tensors, **options, training=training)``. ``tensors``: the other tensor
        inputs (None allowed), passed through the recomputed function so their gradients flow;
        ``options``: Python values (flags, caches), closed over."""
        if not training:
            return layer(x, **tensors, **options, training=False)
        names = [name for name, value in tensors.items() if value is not None]
        fixed = {name: value for name, value in tensors.items() if value is None}
        structure = []

        def block(seed, x, *values):
            with seeded_block(seed):
                out = layer(x, **dict(zip(names, values)), **fixed, **options, training=True)
            # keras.remat wants tensors out: the Nones (attention weights not asked for ...) and
            # the nesting are put back below
            leaves = keras.tree.flatten(out)
            structure[:] = [keras.tree.pack_sequence_as(out, [leaf is None for leaf in leaves])]
            return tuple(leaf for leaf in leaves if leaf is not None)

        run = keras.remat(block) if self.gradient_checkpointing else block
        flat = iter(run(self.block_seed_generator.next(), x, *(tensors[name] for name in names)))
        leaves = [None if is_none else next(flat) for is_none in keras.tree.flatten(structure[0])]
        return keras.tree.pack_sequence_as(structure[0], leaves)


def checkpointing_encoders(model) -> list:
    """The layers that checkpoint (``Checkpointing``: encoders, audio feature encoders) inside a Keras model."""
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, Checkpointing)]


def set_gradient_checkpointing(model, enabled: bool, gradient_checkpointing_kwargs: dict | None = None) -> None:
    """What ``gradient_checkpointing_enable`` / ``_disable`` do: flip every encoder of ``model``
    (a ValueError when it has none, rather than training without checkpointing)."""
    if gradient_checkpointing_kwargs:
        raise TypeError("gradient_checkpointing_kwargs are torch.utils.checkpoint options; the Keras classes "
                        f"take none (got {sorted(gradient_checkpointing_kwargs)})")
    encoders = checkpointing_encoders(model)
    if enabled:
        check_checkpointable(type(model).__name__, len(encoders))
    for encoder in encoders:
        encoder.gradient_checkpointing = enabled


class StudentCheckpointing:
    """Gradient checkpointing of a pretraining wrapper (teacher + student): it applies to the
    student, whose layers get gradients (the teacher's pass runs without any)."""

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute the student's encoder layers in the backward pass (see the model classes)."""
        self.student.gradient_checkpointing_enable(gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.student.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.student.is_gradient_checkpointing
