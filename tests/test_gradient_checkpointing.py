"""Gradient checkpointing in every registered class of both frameworks: with
``gradient_checkpointing_enable()`` each encoder layer runs again in the backward pass, and the
gradients equal the plain model's with dropout on (same seed).

Counting the recomputation: PyTorch's checkpointed function is wrapped (it runs once in the
forward and once more in the backward); Keras' encoder layers enter one seeded block per run
(``d2v_tf.checkpointing.seeded_block``), counted in the forward and in the backward pass.
``keras_gradients`` serves the JAX and PyTorch Keras backends too (tests/test_keras_backends.py).
"""

from __future__ import annotations

import copy

import keras
import numpy as np
import pytest
import torch

import d2v_tf
import d2v_torch
import d2v_tf.checkpointing
import d2v_torch.audio
from crosscheck.cases import all_cases, tiny
from crosscheck.training import deterministic_config
from d2v_common import data2vec2 as D2
from d2v_common.configs import Data2VecAudioConfig, Data2VecTextConfig, Data2VecVisionConfig
from d2v_common.pretrain import data2vec1 as P1
from d2v_common.pretrain import data2vec2 as P2
from d2v_common.spec import weight_spec

DROPOUT = 0.1
# one crosscheck case per model class (interpolation cases repeat a class)
MODEL_CASES = {c.architecture: c for c in reversed(all_cases("small")) if "interp" not in c.name}


def with_dropout(config):
    """``config`` with every dropout and drop-path probability at ``DROPOUT`` (layerdrop and
    SpecAugment off: they change which layers run, not how)."""
    config = deterministic_config(config)
    return config.copy(**{k: DROPOUT for k, v in config.to_dict().items()
                          if isinstance(v, float) and ("dropout" in k or k == "drop_path_rate")})


def _pretraining_config(architecture: str):
    """A tiny backbone config, its pretraining recipe and a batch, for a pretraining wrapper."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 28, (2, 12))
    ids[:, 0], ids[:, -1] = 0, 2
    pixels = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    waves = rng.standard_normal((2, 400)).astype(np.float32)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    decoder = dict(decoder_dim=16, decoder_groups=4, clone_batch=2)
    configs = {
        "Data2VecVisionForPreTraining": (Data2VecVisionConfig(**tiny.VISION, use_mask_token=True), None,
                                         {"pixel_values": pixels}),
        "Data2VecTextForPreTraining": (Data2VecTextConfig(**tiny.TEXT), None, {"input_ids": ids}),
        "Data2VecAudioForPreTraining": (Data2VecAudioConfig(**tiny.AUDIO),
                                        P1.PretrainingConfig.for_modality("audio", mask_length=3),
                                        {"input_values": waves}),
        "Data2Vec2VisionForPreTraining": (D2.Data2Vec2VisionConfig(**small, image_size=32, patch_size=8),
                                          P2.Data2Vec2PretrainingConfig(modality="vision", **decoder), (pixels,)),
        "Data2Vec2TextForPreTraining": (D2.Data2Vec2TextConfig(**small, vocab_size=30, max_position_embeddings=16),
                                        P2.Data2Vec2PretrainingConfig(modality="text", **decoder), (ids,)),
        "Data2Vec2AudioForPreTraining": (
            D2.Data2Vec2AudioConfig(**small, conv_dim=[32, 32], conv_kernel=[10, 3], conv_stride=[5, 2],
                                    num_conv_pos_embeddings=2, conv_pos_kernel_size=4,
                                    num_conv_pos_embedding_groups=4),
            P2.Data2Vec2PretrainingConfig(modality="audio", **decoder, mask_length=3), (waves,)),
    }
    config, recipe, inputs = configs[architecture]
    config = with_dropout(config)
    if architecture == "Data2VecAudioForPreTraining":  # the learned mask embedding needs mask_time_prob > 0
        config = config.copy(mask_time_prob=0.05)
    return config, recipe, inputs


def _loss(out):
    """The built-in loss, or (a base model) the sum of squares of the last hidden state."""
    loss = getattr(out, "loss", None)
    if loss is not None:
        return loss
    hidden = out[0]
    if isinstance(hidden, torch.Tensor):  # d2v_torch, or Keras on the PyTorch backend
        return (hidden ** 2).sum()
    return keras.ops.sum(keras.ops.square(hidden))


# ----------------------------------------------------------------------------- PyTorch
def _torch_model_and_inputs(architecture: str):
    cls = d2v_torch.MODEL_REGISTRY[architecture]
    if architecture in MODEL_CASES:
        case = MODEL_CASES[architecture]
        config = with_dropout(case.config)
        model = cls(config)
        model.load_arrays(weight_spec(config, architecture).random_arrays(0))
        inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in case.make_inputs(np.random.default_rng(1)).items()}
        return model, (), {**inputs, **case.call_kwargs}
    config, recipe, inputs = _pretraining_config(architecture)
    model = cls(config, recipe, seed=0)
    if isinstance(inputs, dict):
        return model, (), {k: torch.from_numpy(v) for k, v in inputs.items()}
    return model, tuple(torch.from_numpy(v) for v in inputs), {}


@pytest.mark.slow  # every class, twice
def test_torch_every_class_recomputes_each_encoder_layer_with_equal_gradients(monkeypatch):
    runs = {"forward": 0, "backward": 0, "calls": 0}
    phase = ["forward"]
    plain_checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(function, *args, **kwargs):
        runs["calls"] += 1

        def counted(*a, **k):
            runs[phase[0]] += 1
            return function(*a, **k)

        return plain_checkpoint(counted, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    assert set(d2v_torch.MODEL_REGISTRY) == set(MODEL_CASES) | set(d2v_torch.PRETRAINING_CLASSES)
    for architecture in sorted(d2v_torch.MODEL_REGISTRY):
        model, args, kwargs = _torch_model_and_inputs(architecture)
        model.train()
        start = copy.deepcopy(getattr(model, "rng", None))  # the wrappers' mask draws
        grads = []
        for checkpointing in (False, True):
            if checkpointing:
                model.gradient_checkpointing_enable()
                assert model.is_gradient_checkpointing
            if start is not None:
                model.rng = copy.deepcopy(start)
            model.zero_grad()
            for key in runs:
                runs[key] = 0
            phase[0] = "forward"
            torch.manual_seed(0)
            loss = _loss(model(*args, **kwargs))
            phase[0] = "backward"
            loss.backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            if not checkpointing:
                assert runs == {"forward": 0, "backward": 0, "calls": 0}, architecture
        # every encoder layer of the student checkpointed, and run again in the backward pass, and
        # every conv layer of an audio feature encoder
        config = model.config
        layers = config.num_hidden_layers + getattr(config, "num_prenet_layers", 0) + _torch_conv_layers(model)
        assert runs["calls"] == runs["forward"] == layers, (architecture, runs)
        # segmentation's last layer feeds no feature map: nothing of it to recompute
        assert runs["backward"] == layers - ("Segmentation" in architecture), (architecture, runs)
        assert grads[0].keys() == grads[1].keys(), architecture
        for name in grads[0]:
            torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-6, msg=name)
        model.gradient_checkpointing_disable()
        assert not model.is_gradient_checkpointing


def _torch_conv_layers(model) -> int:
    """The conv layers that checkpointing recomputes: those of trainable audio feature encoders."""
    return sum(len(m.conv_layers) for m in model.modules()
               if isinstance(m, d2v_torch.audio.Data2VecAudioFeatureEncoder) and m.gradient_checkpointing
               and any(p.requires_grad for p in m.parameters()))


def test_torch_a_model_without_a_checkpointing_encoder_refuses():
    model = d2v_torch.Data2VecTextModel(Data2VecTextConfig(**tiny.TEXT))
    del model.encoder.gradient_checkpointing  # as an encoder that cannot recompute its layers
    with pytest.raises(ValueError, match="no encoder that supports gradient checkpointing"):
        model.gradient_checkpointing_enable()


# ------------------------------------------------------------------------------- Keras
def keras_model_and_inputs(architecture: str):
    """A Keras class with dropout on, and (inputs, call kwargs) of one training batch."""
    cls = getattr(d2v_tf, "TF" + architecture)
    if architecture in MODEL_CASES:
        case = MODEL_CASES[architecture]
        config = with_dropout(case.config)
        model = cls(config)
        model.load_arrays(weight_spec(config, architecture).random_arrays(0))
        return model, case.make_inputs(np.random.default_rng(1)), dict(case.call_kwargs)
    config, recipe, inputs = _pretraining_config(architecture)
    if isinstance(inputs, tuple):  # the 2.0 wrappers' main input (positional in torch), by name
        name = {"Vision": "pixel_values", "Text": "input_ids", "Audio": "input_values"}[architecture[9:-14]]
        inputs = {name: inputs[0]}
    return cls(config, recipe, seed=0), inputs, {}


def keras_gradients(model, inputs: dict, call_kwargs: dict):
    """(gradients of the trainable variables as numpy arrays or None, seeded-block runs in the
    forward pass, in the backward pass) of one training-mode call, on the Keras backend in use.
    On JAX the backward count is the number of layers under ``jax.checkpoint``."""
    runs = {"forward": 0, "backward": 0}
    phase = ["forward"]
    plain_block = d2v_tf.checkpointing.seeded_block

    def counting_block(seed):
        runs[phase[0]] += 1
        return plain_block(seed)

    d2v_tf.checkpointing.seeded_block = counting_block
    try:
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            def loss_fn(trainable, non_trainable):
                out, _ = model.stateless_call(trainable, non_trainable, **inputs, **call_kwargs, training=True)
                return _loss(out)

            values = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
            grads = jax.jit(jax.grad(loss_fn))(*values)  # compiled, as fit runs it
            # JAX traces rather than runs (the forward count is of traces); what the backward
            # pass recomputes are the layers under jax.checkpoint in the traced program
            program = jax.make_jaxpr(loss_fn)(*values)
            runs["backward"] = _count_checkpoints(program.jaxpr)
        elif backend == "torch":
            torch.manual_seed(0)  # Keras' unseeded dropout outside the encoder layers draws from torch's RNG
            model.zero_grad()
            loss = _loss(model(**inputs, **call_kwargs, training=True))
            phase[0] = "backward"
            loss.backward()
            grads = [v.value.grad for v in model.trainable_variables]
        else:
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss = _loss(model(**inputs, **call_kwargs, training=True))
            phase[0] = "backward"
            grads = tape.gradient(loss, model.trainable_variables)
    finally:
        d2v_tf.checkpointing.seeded_block = plain_block
    arrays = [None if g is None else np.asarray(keras.ops.convert_to_numpy(g)) for g in grads]
    return arrays, runs["forward"], runs["backward"]


def _count_checkpoints(jaxpr) -> int:
    """``jax.checkpoint`` equations ("checkpoint", "remat2" as JAX versions name it) in a JAX
    program, nested programs (``jit`` ...) included."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name.startswith(("checkpoint", "remat")):
            count += 1
            continue
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(sub, "eqns"):
                    count += _count_checkpoints(sub)
    return count


def keras_conv_layers(model) -> int:
    """The conv layers that checkpointing recomputes (plainly, outside seeded blocks): those of
    trainable audio feature encoders."""
    return sum(len(layer.conv_layers) for layer in d2v_tf.checkpointing.checkpointing_encoders(model)
               if hasattr(layer, "conv_layers") and layer.trainable)


def checkpointed_and_plain_gradients(model, inputs: dict, call_kwargs: dict):
    """``keras_gradients`` of the plain model, then with checkpointing, from the same seeds."""
    model(**inputs, **call_kwargs)  # built (Keras traces a first call symbolically) outside the counts
    seeds = [np.asarray(v.numpy()) for v in model.non_trainable_variables]
    rng = copy.deepcopy(getattr(model, "rng", None))
    plain = keras_gradients(model, inputs, call_kwargs)
    for variable, value in zip(model.non_trainable_variables, seeds):
        variable.assign(value)
    if rng is not None:
        model.rng = rng
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checkpointed = keras_gradients(model, inputs, call_kwargs)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    return plain, checkpointed


def assert_same_gradients(plain, checkpointed, label: str):
    assert [g is None for g in plain] == [g is None for g in checkpointed], label
    # within 1e-6 of each gradient's scale (at least 1): an absolute 1e-6 is below float32's
    # resolution for large entries (XLA's remat on JAX fuses the recomputation differently: 2 ulps
    # of a 404-sized entry were measured); TensorFlow and torch give 0 difference. On JAX both
    # gradients are compiled (jax.jit, as fit runs them): op by op against a compiled remat
    # region they differed by 1.7e-6 of the scale on an AVX-512 Xeon (CTC's head), compiled by 2e-8
    worst = max(float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max()))
                for a, b in zip(plain, checkpointed) if a is not None)
    assert worst <= 1e-6, (label, worst)


@pytest.mark.slow  # every class, twice
def test_keras_every_class_recomputes_each_encoder_layer_with_equal_gradients():
    assert set(d2v_tf.MODEL_REGISTRY) == set(MODEL_CASES) | set(d2v_tf.PRETRAINING_CLASSES)
    for architecture in sorted(d2v_tf.MODEL_REGISTRY):
        keras.utils.set_random_seed(0)
        model, inputs, call_kwargs = keras_model_and_inputs(architecture)
        (plain, forward, backward), (checkpointed, forward_again, recomputed) = checkpointed_and_plain_gradients(
            model, inputs, call_kwargs)
        layers = model.config.num_hidden_layers + getattr(model.config, "num_prenet_layers", 0)
        assert (forward, backward) == (layers, 0), architecture
        assert forward_again == layers, architecture
        assert recomputed == layers - ("Segmentation" in architecture), (architecture, recomputed)
        assert_same_gradients(plain, checkpointed, architecture)


def test_keras_checkpointing_refusals(monkeypatch):
    model = d2v_tf.TFData2VecTextModel(Data2VecTextConfig(**tiny.TEXT))
    with pytest.raises(TypeError, match="take none"):
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.gradient_checkpointing_enable({})  # HF's empty options: accepted
    assert model.is_gradient_checkpointing
    monkeypatch.setattr(d2v_tf.checkpointing, "checkpointing_encoders", lambda model: [])  # none found
    with pytest.raises(ValueError, match="no encoder that supports gradient checkpointing"):
        model.gradient_checkpointing_enable()


def test_audio_feature_encoder_recomputes_each_conv_layer_while_trainable(monkeypatch):
    """As HF's feature encoder: with checkpointing on, each conv layer of the audio feature
    encoder runs again in the backward pass, in torch and Keras (TensorFlow here), with the plain
    model's gradients; a frozen feature encoder is not recomputed. (data2vec 2.0's feature
    encoder is a subclass; the every-class tests above cover its gradients and torch's counts.)"""
    architecture = "Data2VecAudioModel"
    runs = {"forward": 0, "backward": 0}
    phase = ["forward"]

    def counted(function):
        def run(*args, **kwargs):
            runs[phase[0]] += 1
            return function(*args, **kwargs)
        return run

    plain_checkpoint, plain_remat = torch.utils.checkpoint.checkpoint, keras.remat
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda function, *args, **kwargs: plain_checkpoint(counted(function), *args, **kwargs))
    monkeypatch.setattr(keras, "remat", lambda function: plain_remat(counted(function)))
    import tensorflow as tf

    torch_model, _, kwargs = _torch_model_and_inputs(architecture)
    keras_model, inputs, call_kwargs = keras_model_and_inputs(architecture)
    torch_model.train()
    keras_model(**inputs, **call_kwargs)  # built outside the counts
    config = torch_model.config
    convs, layers = len(config.conv_dim), config.num_hidden_layers
    for frozen in (False, True):
        if frozen:
            torch_model.freeze_feature_encoder()
            keras_model.freeze_feature_encoder()
        seeds = [np.asarray(v.numpy()) for v in keras_model.non_trainable_variables]
        torch_grads, keras_grads = [], []
        for checkpointing in (False, True):
            if checkpointing:
                torch_model.gradient_checkpointing_enable()
                keras_model.gradient_checkpointing_enable()
            for variable, value in zip(keras_model.non_trainable_variables, seeds):
                variable.assign(value)
            runs.update(forward=0, backward=0)
            phase[0] = "forward"
            torch_model.zero_grad()
            torch.manual_seed(0)
            loss = _loss(torch_model(**kwargs))
            phase[0] = "backward"
            loss.backward()
            torch_grads.append([p.grad.clone() for p in torch_model.parameters() if p.grad is not None])
            torch_runs = dict(runs)
            runs.update(forward=0, backward=0)
            phase[0] = "forward"
            with tf.GradientTape() as tape:
                loss = _loss(keras_model(**inputs, **call_kwargs, training=True))
            phase[0] = "backward"
            keras_grads.append([np.asarray(g) for g in tape.gradient(loss, keras_model.trainable_variables)])
            recomputed = (layers + (0 if frozen else convs)) * checkpointing
            assert torch_runs == runs == {"forward": recomputed, "backward": recomputed}, (frozen, torch_runs, runs)
            torch_model.gradient_checkpointing_disable()
            keras_model.gradient_checkpointing_disable()
        for plain, checkpointed in zip(*torch_grads):
            torch.testing.assert_close(checkpointed, plain, rtol=0, atol=1e-6)
        assert_same_gradients(*keras_grads, architecture)
