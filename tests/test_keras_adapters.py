"""Big models on small machines, Keras side: LoRA (``enable_lora``), weight quantization
(``quantize``) and ``layout_map`` on the d2v Keras classes (d2v_tf.adapters). Written for any
Keras backend: the TensorFlow process runs it with the rest, the JAX and PyTorch processes run
it beside test_keras_backends.py (tests/conftest.py)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

import d2v_tf
from crosscheck.cases import all_cases
from crosscheck.training import deterministic_config
from d2v_common.models import adapters as common
from d2v_common.spec import weight_spec

CASES = all_cases("small")
LABEL_KEYS = ("labels", "start_positions", "end_positions")
# one case per registered Keras checkpoint class
CLASS_CASES = {c.architecture: c for c in reversed(CASES)}
ONE_PER_FAMILY = ["text-seqcls-relk", "audio-seq-plain", "vision-cls-plain", "data2vec2-text-cls-learned",
                  "data2vec2-audio-seq-alibi", "data2vec2-vision-cls-plain"]


def _case(name):
    return next(c for c in CASES if c.name == name)


def _model(case, seed=0, **overrides):
    config = deterministic_config(case.config.copy(**overrides) if overrides else case.config)
    model = getattr(d2v_tf, "TF" + case.architecture)(config)
    model.load_arrays(weight_spec(config, case.architecture).random_arrays(seed))
    return model


def _inputs(case):
    return {k: v for k, v in case.make_inputs(np.random.default_rng(0)).items() if k not in LABEL_KEYS}


def _first_output(out):
    key = next(k for k in out.keys() if out[k] is not None and k != "loss")
    return keras.ops.convert_to_numpy(out[key])


def test_every_keras_class_is_covered():
    assert set(CLASS_CASES) == set(d2v_tf.MODEL_CLASSES)


@pytest.mark.parametrize("architecture", sorted(CLASS_CASES))
def test_lora_and_int8_on_every_keras_class(architecture):
    """enable_lora freezes all but LoRA and the head, leaves outputs and saved weights as they
    were (B starts at zero); quantize("int8") converts every dense layer of a fresh model."""
    case = CLASS_CASES[architecture]
    model = _model(case)
    inputs = _inputs(case)
    before = model.state_arrays()
    reference = _first_output(model(**inputs, **case.call_kwargs))

    model.enable_lora(2)
    spec = model.spec
    trainable = {v.path.rsplit("/", 1)[0] for v in model.trainable_variables if "lora" not in v.path}
    assert all(common.is_head(m, spec.base_prefix, spec.is_base_model) for m in trainable), trainable
    assert any("lora_kernel" in v.path for v in model.trainable_variables)
    np.testing.assert_array_equal(_first_output(model(**inputs, **case.call_kwargs)), reference)
    after = model.state_arrays()
    assert all(np.array_equal(after[k], before[k]) for k in before)

    fresh = getattr(d2v_tf, "TF" + case.architecture)(model.config)  # never called
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "does not have a quantize method" noise
        fresh.quantize("int8")
    dense = [layer for layer in fresh._spec_layers().values() if isinstance(layer, d2v_tf.layers.Linear)]
    assert dense and all(layer.quantization_mode == "int8" for layer in dense)
    assert all(np.isfinite(_first_output(fresh(**inputs, **case.call_kwargs))).all() for _ in range(1))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_enable_lora_refuses_a_bad_rank(bad):
    model = _model(_case("text-seqcls-relk"))
    with pytest.raises(ValueError, match="positive integer"):
        model.enable_lora(bad)


def test_enable_lora_targets():
    case = _case("text-seqcls-relk")
    model = _model(case)
    with pytest.raises(ValueError, match="pick one of"):
        model.enable_lora(4, target="qv")
    with pytest.raises(ValueError, match="matches no dense layer"):
        model.enable_lora(4, target=["nope"])
    model.enable_lora(4, target="all")
    adapted = {path for path, layer in model._spec_layers().items() if getattr(layer, "lora_enabled", False)}
    dense = {path for path, layer in model._spec_layers().items() if isinstance(layer, d2v_tf.layers.Linear)}
    assert adapted == {p for p in dense if p.startswith("data2vec_text.")}  # the head trains in full
    with pytest.raises(ValueError, match="once per model"):
        model.enable_lora(4, target=["query"])


def test_lora_fit_lowers_the_loss_and_keeps_frozen_weights(tmp_path):
    case = _case("text-seqcls-relk")
    model = _model(case)
    model.enable_lora(4, target="all")
    frozen = {k: keras.ops.convert_to_numpy(v).copy() for k, v in model._keras_variables().items()
              if not k.startswith("classifier.")}
    x = case.make_inputs(np.random.default_rng(1))
    y = x.pop("labels")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x, y, epochs=6, batch_size=len(y), verbose=0).history["loss"]
    assert history[-1] < history[0]
    assert all(np.array_equal(keras.ops.convert_to_numpy(v), frozen[k])
               for k, v in model._keras_variables().items() if k in frozen)
    # the adapted model: save_pretrained merges, .keras keeps the merged kernels with LoRA on again
    out = _first_output(model(**x))
    model.save_pretrained(tmp_path / "merged")
    merged = type(model).from_pretrained(tmp_path / "merged")
    np.testing.assert_allclose(_first_output(merged(**x)), out, atol=1e-5)
    model.save(tmp_path / "m.keras")
    back = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(_first_output(back(**x)), out, atol=1e-5)
    assert back._lora["rank"] == 4 and any("lora_kernel" in v.path for v in back.trainable_variables)


@pytest.mark.parametrize("mode", ["int8", "int4", "float8"])
def test_quantized_model_runs_saves_and_reloads(mode, tmp_path):
    case = _case("text-seqcls-relk")
    model = _model(case)
    inputs = _inputs(case)
    reference = _first_output(model(**inputs))  # quantized after a call
    model.quantize(mode)
    out = _first_output(model(**inputs))
    assert np.max(np.abs(out - reference)) < 0.2 * np.max(np.abs(reference))
    model.save(tmp_path / "q.keras")
    back = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(_first_output(back(**inputs)), out)
    if mode == "int8":  # save_pretrained writes the dequantized kernels
        back.save_pretrained(tmp_path / "dq")
        np.testing.assert_allclose(_first_output(type(model).from_pretrained(tmp_path / "dq")(**inputs)), out,
                                   atol=1e-2 * np.max(np.abs(reference)))
        with pytest.raises(ValueError, match="before quantize"):
            back.load_arrays(back.state_arrays())


@pytest.mark.parametrize("name", ONE_PER_FAMILY[1:])
def test_int4_and_float8_run_on_each_family(name):
    case = _case(name)
    for mode in ("int4", "float8"):
        model = _model(case)
        model.quantize(mode)
        assert np.isfinite(_first_output(model(**_inputs(case), **case.call_kwargs))).all()


def test_layout_roles_cover_the_encoder_projections():
    assert common.layout_role("data2vec_text.encoder.layer.0.attention.self.query") == "column"
    assert common.layout_role("encoder.layers.3.feed_forward.intermediate_dense") == "column"
    assert common.layout_role("encoder.layer.1.attention.output.dense") == "row"
    assert common.layout_role("encoder.layers.0.attention.out_proj") == "row"
    assert common.layout_role("classifier.out_proj") is None
    assert common.layout_role("pooler.dense") is None
