"""HF calling conventions that d2v models accept as transformers does: gradient checkpointing
options (as HF's Trainer passes them), ``dtype=`` (transformers 4.57's name of ``torch_dtype=``),
``from_config`` in both frameworks, and ``freeze_feature_encoder`` on the data2vec 2.0 audio classes."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import torch
import torch.utils.checkpoint

import d2v_tf
import d2v_torch
from crosscheck.cases import all_cases
from crosscheck.runner import torch_inputs
from crosscheck.training import deterministic_config
from d2v_common.data2vec2 import Data2Vec2AudioConfig
from d2v_common.spec import weight_spec
from tests.oracle import hf_config, random_hf_model

CASES = [c for c in all_cases("small") if "interp" not in c.name]
ONE_PER_CLASS = list({c.architecture: c for c in reversed(CASES)}.values())
# one head with a loss per encoder family (1.0 text / audio / vision, 2.0 audio / text)
CHECKPOINTING_HEADS = ["Data2VecTextForSequenceClassification", "Data2VecAudioForCTC",
                       "Data2VecVisionForImageClassification", "Data2Vec2AudioForCTC",
                       "Data2Vec2TextForSequenceClassification"]


def _case(architecture: str):
    return next(c for c in CASES if c.architecture == architecture)


# ------------------------------------------------------------------ gradient checkpointing
@pytest.mark.parametrize("architecture", CHECKPOINTING_HEADS)
def test_gradient_checkpointing_kwargs_as_hf_trainer_passes_them(architecture, monkeypatch):
    case = _case(architecture)
    config = deterministic_config(case.config)
    arrays = weight_spec(config, architecture).random_arrays(0)
    inputs = torch_inputs(case.make_inputs(np.random.default_rng(1)))
    calls = []
    plain_checkpoint = torch.utils.checkpoint.checkpoint

    def recording_checkpoint(function, *args, **kwargs):
        calls.append(kwargs)
        return plain_checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", recording_checkpoint)
    grads = {}
    for mode in (None, {"use_reentrant": False}, {"use_reentrant": True}):
        model = getattr(d2v_torch, architecture)(config)
        model.load_arrays(arrays)
        model.train()
        assert model.is_gradient_checkpointing is False
        calls.clear()
        if mode is not None:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=mode)
            assert model.is_gradient_checkpointing is True
        model(**inputs, **case.call_kwargs).loss.backward()
        if mode is None:
            assert calls == []
        else:  # every encoder layer recomputed, with the mode asked for
            assert calls and all(c["use_reentrant"] is mode["use_reentrant"] for c in calls), calls
        grads[str(mode)] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.gradient_checkpointing_disable()
        assert model.is_gradient_checkpointing is False
    reference = grads.pop("None")
    for mode, got in grads.items():
        assert got.keys() == reference.keys(), mode
        for name in reference:
            assert torch.allclose(got[name], reference[name], atol=1e-6), (mode, name)


def test_gradient_checkpointing_defaults_and_bad_kwargs():
    model = d2v_torch.Data2VecTextModel(_case("Data2VecTextModel").config)
    model.gradient_checkpointing_enable()  # the old call keeps working
    assert model.is_gradient_checkpointing and model.encoder.checkpoint_options == {"use_reentrant": False}
    model.gradient_checkpointing_enable({"use_reentrant": True, "preserve_rng_state": False})
    assert model.encoder.checkpoint_options == {"use_reentrant": True, "preserve_rng_state": False}
    with pytest.raises(TypeError, match="use_reentrnt"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrnt": False})
    with pytest.raises(TypeError, match="must be a dict"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=True)


# ---------------------------------------------------------------------- dtype= (HF 4.57)
@pytest.fixture(scope="module")
def hf_text_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-text")
    random_hf_model("Data2VecTextModel", hf_config(_case("Data2VecTextModel").config)).save_pretrained(folder)
    return folder


def _hf_dtype(folder, **kwargs):
    import transformers

    return transformers.Data2VecTextModel.from_pretrained(folder, **kwargs).dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", torch.float16, "float32"])
def test_dtype_is_torch_dtype_as_in_transformers(dtype, hf_text_folder):
    model = d2v_torch.Data2VecTextModel.from_pretrained(hf_text_folder, dtype=dtype)
    assert model.dtype == _hf_dtype(hf_text_folder, dtype=dtype)
    assert all(p.dtype == model.dtype for p in model.parameters())
    assert d2v_torch.Data2VecTextModel.from_pretrained(hf_text_folder, torch_dtype=dtype).dtype == model.dtype


def test_dtype_auto_follows_config_json_as_in_transformers(hf_text_folder, tmp_path):
    assert d2v_torch.Data2VecTextModel.from_pretrained(hf_text_folder, dtype="auto").dtype == torch.float32
    assert _hf_dtype(hf_text_folder, dtype="auto") == torch.float32
    for name in os.listdir(hf_text_folder):
        os.symlink(os.path.join(hf_text_folder, name), tmp_path / name)
    config = json.load(open(hf_text_folder / "config.json"))
    os.unlink(tmp_path / "config.json")
    json.dump({**config, "dtype": "bfloat16"}, open(tmp_path / "config.json", "w"))
    assert d2v_torch.Data2VecTextModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.bfloat16
    assert _hf_dtype(tmp_path, dtype="auto") == torch.bfloat16


def test_dtype_and_torch_dtype_must_agree(hf_text_folder):
    load = d2v_torch.Data2VecTextModel.from_pretrained
    assert load(hf_text_folder, dtype="bfloat16", torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="disagree"):
        load(hf_text_folder, dtype=torch.float16, torch_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="floating torch.dtype"):
        load(hf_text_folder, dtype="int8")
    with pytest.raises(TypeError, match="floating torch.dtype"):
        load(hf_text_folder, dtype="bfloat61")


# ------------------------------------------------------------------------- from_config
@pytest.mark.parametrize("case", ONE_PER_CLASS, ids=lambda c: c.architecture)
def test_from_config_in_both_frameworks(case):
    torch_model = getattr(d2v_torch, case.architecture).from_config(case.config)
    assert type(torch_model) is getattr(d2v_torch, case.architecture) and torch_model.config is case.config
    keras_model = getattr(d2v_tf, "TF" + case.architecture).from_config(case.config)
    assert type(keras_model) is getattr(d2v_tf, "TF" + case.architecture)
    assert keras_model.config.to_dict() == case.config.to_dict()
    # Keras deserialisation keeps reading the dict get_config() writes
    again = type(keras_model).from_config(keras_model.get_config())
    assert again.config.to_dict() == case.config.to_dict()


def test_from_config_options_and_errors(tmp_path):
    config = _case("Data2Vec2AudioForCTC").config
    model = d2v_torch.Data2Vec2AudioForCTC.from_config(config, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="config object"):
        d2v_torch.Data2Vec2AudioForCTC.from_config(config.to_dict())
    with pytest.raises(TypeError, match="config object"):
        d2v_tf.TFData2Vec2AudioForCTC.from_config("config.json")
    with pytest.raises(TypeError):  # a config of another family
        d2v_torch.Data2VecTextModel.from_config(config)
    # a .keras file still saves and loads through from_config
    keras_model = d2v_tf.TFData2Vec2AudioForCTC.from_config(config)
    keras_model.save(tmp_path / "m.keras")
    back = keras.saving.load_model(tmp_path / "m.keras")
    waves = np.random.default_rng(0).standard_normal((1, 800)).astype("float32")
    assert type(back) is type(keras_model)
    assert np.array_equal(np.asarray(back(waves).logits), np.asarray(keras_model(waves).logits))


# -------------------------------------------------------------- freeze_feature_encoder (2.0)
AUDIO2 = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, conv_dim=[32, 32],
              conv_kernel=[10, 3], conv_stride=[5, 2], num_conv_pos_embeddings=2, conv_pos_kernel_size=4,
              num_conv_pos_embedding_groups=4, vocab_size=8, num_labels=3, classifier_proj_size=16)


@pytest.mark.parametrize("architecture", ["Data2Vec2AudioModel", "Data2Vec2AudioForCTC",
                                          "Data2Vec2AudioForSequenceClassification"])
def test_freeze_feature_encoder_data2vec2_audio_both_frameworks(architecture):
    config = Data2Vec2AudioConfig(**AUDIO2)
    waves = np.random.default_rng(0).standard_normal((2, 800)).astype("float32")
    labels = {"Data2Vec2AudioForCTC": np.array([[1, 2, 3], [4, 5, -100]]),
              "Data2Vec2AudioForSequenceClassification": np.array([0, 2])}.get(architecture)
    prefix = "" if architecture == "Data2Vec2AudioModel" else "data2vec2_audio."

    model = getattr(d2v_torch, architecture)(config)
    model.freeze_feature_encoder()
    model.train()
    if labels is None:
        model(torch.from_numpy(waves)).last_hidden_state.square().mean().backward()
    else:
        model(torch.from_numpy(waves), labels=torch.from_numpy(labels)).loss.backward()
    frozen = [n for n, _ in model.named_parameters() if n.startswith(prefix + "feature_extractor.")]
    assert frozen
    for name, p in model.named_parameters():
        is_frozen = name in frozen
        assert p.requires_grad is not is_frozen and (p.grad is None) is is_frozen, name

    keras_model = getattr(d2v_tf, "TF" + architecture)(config)
    encoder = getattr(keras_model, "data2vec2_audio", keras_model)
    keras_model.freeze_feature_encoder()
    frozen_vars = {v.path for v in encoder.feature_extractor.weights}
    trainable = {v.path for v in keras_model.trainable_variables}
    assert frozen_vars and not frozen_vars & trainable and trainable
    if labels is None:
        return
    before = keras_model.state_arrays()
    keras_model.compile(optimizer=keras.optimizers.SGD(0.1))
    keras_model.fit({"input_values": waves}, labels, epochs=1, verbose=0)
    after = keras_model.state_arrays()
    for name in before:
        changed = not np.array_equal(before[name], after[name])
        if name.startswith(prefix + "feature_extractor."):
            assert not changed, name
    assert not np.array_equal(before[prefix + "feature_projection.projection.weight"],
                              after[prefix + "feature_projection.projection.weight"])
