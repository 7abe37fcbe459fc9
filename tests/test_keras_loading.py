"""Keras ``from_pretrained`` does only the work of loading: each variable is created once, from
its checkpoint tensor (no initializer or random draw runs), and the weights come out bit-exact.

Collected by the TensorFlow process; ``test_keras_backends.py`` imports these tests, so they run
on the JAX and PyTorch Keras backends too.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import d2v_tf
from crosscheck.cases import tiny
from d2v_common.checkpoints import formats as checkpoint
from d2v_common.configs import Data2VecVisionConfig
from d2v_common.spec import WeightSpec, weight_spec

ARCHITECTURE = "Data2VecVisionForImageClassification"


def _checkpoint(directory, fmt: str, seed: int = 0) -> dict[str, np.ndarray]:
    config = Data2VecVisionConfig(**dict(tiny.VISION, use_relative_position_bias=True, num_labels=5,
                                         layer_scale_init_value=0.1, hidden_dropout_prob=0.1))
    spec = weight_spec(config, ARCHITECTURE)
    arrays = spec.random_arrays(seed)
    checkpoint.write_checkpoint(directory, arrays, spec, [fmt])
    config.save_pretrained(directory)
    return arrays


def _count_initialisers(monkeypatch) -> list[str]:
    """Record every call of a Keras initializer, a ``keras.random`` draw or the spec's own
    random initialisation."""
    calls: list[str] = []

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapper

    stack = [keras.initializers.Initializer]
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        if "__call__" in vars(cls):
            monkeypatch.setattr(cls, "__call__", counting(cls.__name__, vars(cls)["__call__"]))
    for name in ("normal", "uniform", "truncated_normal"):
        monkeypatch.setattr(keras.random, name, counting(f"keras.random.{name}", getattr(keras.random, name)))
    init_arrays = WeightSpec.init_arrays

    def drawing(self, *args, **kwargs):  # a call that draws no tensor (nothing new to initialise) is free
        out = init_arrays(self, *args, **kwargs)
        if out:
            calls.append("WeightSpec.init_arrays")
        return out

    monkeypatch.setattr(WeightSpec, "init_arrays", drawing)
    return calls


@pytest.mark.parametrize("fmt", ["safetensors", "tf-h5"])
def test_from_pretrained_creates_variables_from_the_checkpoint_only(fmt, tmp_path, monkeypatch):
    arrays = _checkpoint(tmp_path, fmt)
    calls = _count_initialisers(monkeypatch)
    model = d2v_tf.TFData2VecVisionForImageClassification.from_pretrained(tmp_path, checkpoint_format=fmt)
    assert calls == []
    got = model.state_arrays()
    assert set(got) == set(arrays)
    for name, value in arrays.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
    # the loaded model works and is a normal Keras model: a fresh build still initialises
    pixels = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype("float32")
    assert np.isfinite(keras.ops.convert_to_numpy(model(pixel_values=pixels).logits)).all()
    d2v_tf.TFData2VecVisionForImageClassification(model.config)
    assert "WeightSpec.init_arrays" in calls


def test_a_failed_read_while_creating_variables_raises_and_leaves_keras_clean(tmp_path, monkeypatch):
    _checkpoint(tmp_path, "tf-h5")

    def unreadable(self):
        raise checkpoint.CheckpointError(f"cannot read dataset {self.name!r}")

    monkeypatch.setattr(checkpoint.LazyH5Tensor, "read_keras_layout", unreadable)
    with pytest.raises(checkpoint.CheckpointError, match="cannot read dataset"):
        d2v_tf.TFData2VecVisionForImageClassification.from_pretrained(tmp_path)
    monkeypatch.undo()
    # no half-created variable is left for Keras to initialise again
    with keras.StatelessScope():
        pass
    model = d2v_tf.TFData2VecVisionForImageClassification.from_pretrained(tmp_path)
    assert model.num_parameters() > 0


def test_h5_tensors_are_read_lazily_in_keras_layout(tmp_path):
    arrays = _checkpoint(tmp_path, "tf-h5")
    spec = weight_spec(Data2VecVisionConfig.from_pretrained(tmp_path), ARCHITECTURE)
    read, unexpected = checkpoint.read_tf_h5(str(tmp_path / checkpoint.TF_WEIGHTS_NAME), spec)
    assert not unexpected and set(read) == set(arrays)
    kernel = "data2vec_vision.encoder.layer.0.attention.attention.query.weight"
    assert isinstance(read[kernel], checkpoint.LazyH5Tensor)
    assert read[kernel].shape == arrays[kernel].shape  # canonical
    assert read[kernel].read_keras_layout().shape == arrays[kernel].shape[::-1]  # as stored
    for name, value in arrays.items():
        assert np.array_equal(np.asarray(read[name]), value), name
