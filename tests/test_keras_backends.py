"""The Keras classes on a Keras backend other than TensorFlow (the README's second and third
pytest processes run this file under ``KERAS_BACKEND=jax`` and ``KERAS_BACKEND=torch``; the
TensorFlow process skips collecting it, its own test files cover TensorFlow).

A focused subset: every crosscheck case against d2v torch (with the checkpoint round trips),
``fit`` lowering the loss for one head per family (numpy, ``tf.data`` and generator inputs),
``.keras`` round trips, checkpoints in every format, one SGD step against PyTorch through
Keras' stateless API, ``make_fast``, and data2vec pretraining in the backend's compiled step.
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
import pytest

import d2v_tf
import d2v_torch
from crosscheck import __main__ as crosscheck_cli
from crosscheck.cases import all_cases
from crosscheck.runner import check_case, max_abs_diff, run_torch, to_numpy_outputs
from crosscheck.training import deterministic_config, step_parity
from d2v_common.spec import weight_spec
from tests.test_gradient_checkpointing import (
    assert_same_gradients, checkpointed_and_plain_gradients, keras_conv_layers, keras_model_and_inputs,
)
from tests.test_keras_loading import (  # noqa: F401 - from_pretrained's loading tests, on this backend too
    test_a_failed_read_while_creating_variables_raises_and_leaves_keras_clean,
    test_from_pretrained_creates_variables_from_the_checkpoint_only,
)
from tests import test_keras_data2vec2_pretraining as data2vec2_pretraining
from tests.test_keras_data2vec2_pretraining import (  # noqa: F401 - data2vec 2.0 pretraining, on this backend too
    test_bad_masks_are_refused_with_torchs_errors,
    test_fit_draws_masks_inside_the_compiled_step,
    test_step_and_gradients_equal_fairseq,
)

BACKEND = keras.backend.backend()
CASES = all_cases("small")
# one head per family, quick to train
FAMILY_HEADS = {"text": "text-seqcls-relk", "audio": "audio-frame-plain", "vision": "vision-cls-plain"}
LABEL_KEYS = ("labels", "start_positions", "end_positions")


def _case(name):
    return next(c for c in CASES if c.name == name)


def _keras_model(case, seed=0):
    config = deterministic_config(case.config)
    arrays = weight_spec(config, case.architecture).random_arrays(seed)
    model = getattr(d2v_tf, "TF" + case.architecture)(config)
    model.load_arrays(arrays)
    return model, arrays


def test_process_runs_the_requested_backend():
    assert BACKEND != "tensorflow"
    assert BACKEND == os.environ["KERAS_BACKEND"] == d2v_tf.backend.NAME


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_crosscheck_case_matches_torch(case):
    """Outputs within 1e-5 of d2v torch (segmentation 1e-4); PT > Keras > PT bit-exact."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = check_case(case, seed=0)
    assert row.ok, (row.error, row.diffs, row.round_trip)
    assert row.round_trip == {"pt>tf>pt": True, "pt>h5>pt": True}


def test_crosscheck_cli_keras_backend_flag(capsys):
    code = crosscheck_cli.main(["--keras-backend", BACKEND, "--case", "vision-model-shared-cls", "--no-round-trips"])
    out = capsys.readouterr().out
    assert code == 0 and f"Keras backend: {BACKEND}" in out and "1 passed, 0 failed" in out


def test_crosscheck_cli_runs_another_backend_in_a_fresh_process(capfd):
    """Keras already runs this process's backend: asking for TensorFlow re-executes crosscheck."""
    code = crosscheck_cli.main(["--keras-backend", "tensorflow", "--case", "vision-model-shared-cls",
                                "--no-round-trips"])
    out = capfd.readouterr().out
    assert code == 0 and "Keras backend: tensorflow" in out and "1 passed, 0 failed" in out
    assert keras.backend.backend() == BACKEND


def _training_data(case, n_batches=3):
    rng = np.random.default_rng(2)
    batches = [case.make_inputs(rng) for _ in range(n_batches)]
    x = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    y = x.pop("labels")
    return x, y


@pytest.mark.parametrize("family", sorted(FAMILY_HEADS))
def test_fit_lowers_the_loss(family):
    """Built-in loss, compile + fit: numpy (vision), tf.data (text) or a generator (audio)."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    case = _case(FAMILY_HEADS[family])
    model, _ = _keras_model(case)
    x, y = _training_data(case)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    if family == "vision":
        history = model.fit(x, y, batch_size=2, epochs=4, shuffle=False, verbose=0).history
    elif family == "text":
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
        history = model.fit(ds, epochs=4, verbose=0).history
    else:
        def batches():
            while True:
                for i in range(0, len(y), 2):
                    yield {k: v[i : i + 2] for k, v in x.items()}, y[i : i + 2]

        history = model.fit(batches(), steps_per_epoch=(len(y) + 1) // 2, epochs=4, verbose=0).history
    losses = history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    if family == "vision":  # evaluate and predict compile steps of their own: once is enough
        assert np.isfinite(model.evaluate(x, y, batch_size=2, verbose=0))
        predictions = model.predict(x, batch_size=2, verbose=0)
        assert predictions["logits"].shape[0] == len(y)


@pytest.mark.parametrize("family", sorted(FAMILY_HEADS))
def test_one_sgd_step_matches_torch(family):
    """Gradients through model.stateless_call + jax.grad, optimizer.stateless_apply."""
    worst, where, (loss_pt, loss_keras) = step_parity(_case(FAMILY_HEADS[family]), "sgd")
    assert abs(loss_pt - loss_keras) <= 1e-5 * max(1.0, abs(loss_pt))
    assert worst <= 1e-5, f"{where}: {worst:.2e}"


@pytest.mark.parametrize("family", sorted(FAMILY_HEADS))
def test_keras_file_round_trip_bit_exact(family, tmp_path):
    case = _case(FAMILY_HEADS[family])
    model, _ = _keras_model(case)
    inputs = case.make_inputs(np.random.default_rng(1))
    inputs.pop("labels", None)
    before = to_numpy_outputs(model(**inputs, **case.call_kwargs))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is type(model) and loaded.config == model.config
    after = to_numpy_outputs(loaded(**inputs, **case.call_kwargs))
    assert max(max_abs_diff(before, after).values()) == 0.0


@pytest.mark.parametrize("checkpoint_format", ["safetensors", "pt-bin", "tf-h5"])
def test_checkpoints_load_in_every_format(checkpoint_format, tmp_path):
    """HF checkpoints written by d2v torch load here and give torch's outputs; save_pretrained
    from this backend round-trips bit-exact."""
    case = _case("vision-cls-plain")
    arrays = weight_spec(case.config, case.architecture).random_arrays(0)
    pt = getattr(d2v_torch, case.architecture)(case.config)
    pt.load_arrays(arrays)
    pt.save_pretrained(tmp_path / "pt", safe_serialization=checkpoint_format != "pt-bin",
                       tf_h5=checkpoint_format == "tf-h5")
    cls = getattr(d2v_tf, "TF" + case.architecture)
    model = cls.from_pretrained(tmp_path / "pt", checkpoint_format=checkpoint_format)
    inputs = case.make_inputs(np.random.default_rng(1))
    diffs = max_abs_diff(run_torch(case, arrays, inputs), to_numpy_outputs(model(**inputs, **case.call_kwargs)))
    assert max(diffs.values()) <= 1e-5
    model.save_pretrained(tmp_path / "keras", tf_h5=True)
    for fmt in ("safetensors", "tf-h5"):
        back = cls.from_pretrained(tmp_path / "keras", checkpoint_format=fmt).state_arrays()
        assert all(np.array_equal(back[k], v) for k, v in model.state_arrays().items())


def test_make_fast_compiles_once_and_matches_eager(monkeypatch):
    case = _case("text-seqcls-relk")
    model, _ = _keras_model(case)
    inputs = case.make_inputs(np.random.default_rng(1))
    inputs.pop("labels")
    eager = to_numpy_outputs(model(**inputs, output_hidden_states=True))
    calls = []
    original = type(model).call
    monkeypatch.setattr(type(model), "call", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    fast = model.make_fast()
    first = to_numpy_outputs(fast(**inputs, output_hidden_states=True))
    second = fast(**inputs, output_hidden_states=True)
    assert type(second).__name__ == "SequenceClassifierOutput"
    assert max(max_abs_diff(eager, first).values()) <= 1e-5
    assert len(calls) == (1 if BACKEND == "jax" else 2)  # jax.jit traces once per signature
    assert isinstance(fast(**inputs, return_dict=False), tuple)


# --------------------------------------------------------------------------- pretraining


@pytest.mark.parametrize("modality", ["vision", "text", "audio"])
def test_pretraining_step_matches_torch(modality):
    """One fit step (gradients, SGD, EMA teacher update in the compiled step) equals PyTorch's."""
    from tests.test_pretraining import test_one_step_torch_keras_parity

    test_one_step_torch_keras_parity(modality)


def test_pretraining_draws_masks_inside_the_compiled_step():
    from d2v_tf.pretraining import TFData2VecVisionForPreTraining
    from tests.test_pretraining import _config, _recipe

    config, recipe = _config("vision"), _recipe("vision")
    model = TFData2VecVisionForPreTraining(config, recipe, seed=5)
    teacher_before = {k: v.copy() for k, v in model.teacher.state_arrays().items()}
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    assert model.supports_jit == (BACKEND == "jax")
    pixels = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    history = model.fit(pixels, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["target_var"][0] > 0
    assert int(keras.ops.convert_to_numpy(model.num_updates)) == 2
    teacher_after = model.teacher.state_arrays()
    assert any(not np.array_equal(teacher_before[k], teacher_after[k]) for k in teacher_before)


def test_bad_ctc_labels_fail_inside_the_compiled_step():
    """Traced labels cannot be checked in numpy: the compiled step checks them and fails with
    the same message as an eager call."""
    case = _case("audio-ctc-plain")
    model, _ = _keras_model(case)
    x = case.make_inputs(np.random.default_rng(0))
    y = x.pop("labels").copy()
    y[0, 0] = model.config.vocab_size + 3
    vocab = model.config.vocab_size
    with pytest.raises(ValueError, match=rf"values must be < vocab_size \({vocab}\), got {vocab + 3}"):
        model(**x, labels=y)  # eager: checked in numpy before the loss
    model.compile(optimizer="sgd")
    # JAX: the traced check's message, re-raised from the compiled call; torch: the eager check's
    with pytest.raises(Exception, match=r"labels must be < vocab_size|values must be < vocab_size"):
        model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)


@pytest.mark.parametrize("name", ["text-seqcls-relk", "text-tokcls-relk", "text-mc-abs", "audio-seq-plain",
                                  "audio-xvector-plain", "vision-cls-plain", "vision-seg-plain",
                                  "data2vec2-text-cls-learned", "data2vec2-audio-seq-alibi",
                                  "data2vec2-vision-cls-plain"])
def test_out_of_range_class_labels_fail_in_the_compiled_step(name):
    """A class label past the classes gave NaN inside jax.jit: now evaluate and fit raise the
    PyTorch classes' ValueError (d2v_common.models.losses), and the model keeps its weights."""
    from tests.test_label_checks import labelled_inputs, out_of_range_labels

    case = _case(name)
    model, _ = _keras_model(case)
    x, labels = labelled_inputs(name)
    bad, message = out_of_range_labels(name, labels, x)
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # jit_compile="auto": jax.jit on JAX
    assert np.isfinite(model.evaluate(x, labels, batch_size=len(labels), verbose=0))
    weights = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    for run in (model.evaluate, model.fit):
        with pytest.raises(ValueError) as error:
            run(x, bad, batch_size=len(labels), verbose=0)
        assert str(error.value) == message, run
    # the weights are back in the model (learning rate 0: unchanged), and valid labels run again
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(weights, after))
    assert np.isfinite(model.evaluate(x, labels, batch_size=len(labels), verbose=0))


def test_data2vec2_pretraining_checkpoints_on_this_backend(tmp_path):
    """One case of the TensorFlow process' checkpoint test (the rest is numpy, backend-free)."""
    data2vec2_pretraining.test_checkpoints_keep_decoder_and_teacher("pretrain-text", tmp_path)


def test_data2vec2_pretraining_fit_and_ema_on_this_backend():
    data2vec2_pretraining.test_fit_lowers_the_loss_and_the_teacher_follows_the_ema_formula("pretrain-text")


_DATA_PARALLEL = """
import json, os, warnings
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["KERAS_BACKEND"] = "jax"
warnings.simplefilter("ignore")
import numpy as np, keras, jax
from tests.test_pretraining import _batch, _config, _max_diff, _recipe, _start_arrays
from d2v_tf.pretraining import TFData2VecVisionForPreTraining

config, recipe = _config("vision"), _recipe("vision")
batch = _batch("vision", recipe, config, np.random.default_rng(1), batch=4)
results = []
for parallel in (False, True):
    if parallel:
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    model = TFData2VecVisionForPreTraining(config, recipe, seed=0)
    model.load_pretraining_arrays(_start_arrays(model, 0))
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    loss = model.fit(batch, batch_size=4, epochs=1, shuffle=False, verbose=0).history["loss"][0]
    results.append((loss, model.pretraining_arrays()))
    # masks drawn inside the sharded, compiled step
    drawn = model.fit({"pixel_values": batch["pixel_values"]}, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(drawn["loss"][0])
worst, where = _max_diff(results[0][1], results[1][1])
print("RESULT " + json.dumps({"devices": len(jax.devices()), "loss_diff": abs(results[0][0] - results[1][0]),
                              "max_diff": worst, "where": where}))
"""


def test_jax_data_parallel_pretraining_matches_one_device(tmp_path):
    """keras.distribution.DataParallel over two CPU devices (JAX) == one device: the loss is
    normalised by the global batch's masked positions, and the EMA teacher stays in step."""
    import json
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "run.py").write_text(_DATA_PARALLEL)
    env = {**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, str(tmp_path / "run.py")], capture_output=True, text=True, timeout=300,
                         env=env, cwd=repo)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert result["devices"] == 2
    assert result["loss_diff"] <= 1e-5 and result["max_diff"] <= 1e-5, result


def test_chunked_speech_recognition_pipeline_matches_torch(tmp_path):
    """d2v_tf.pipeline on this backend: the chunked transcript and the feature tensor of d2v_torch's."""
    from d2v_common.configs import Data2VecAudioConfig
    from d2v_common.processing import AudioFeatureExtractor, CTCTokenizer
    from tests.test_pipelines import AUDIO, VOCAB, _save, _speech

    folder = _save("Data2VecAudioForCTC", Data2VecAudioConfig(**AUDIO, vocab_size=len(VOCAB)), tmp_path / "ctc")
    AudioFeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    CTCTokenizer({t: i for i, t in enumerate(VOCAB)}).save_pretrained(folder)
    waves = [_speech(1.1), _speech(0.7, seed=1)]
    expected = d2v_torch.pipeline("automatic-speech-recognition", model=folder)(waves, chunk_length_s=0.5)
    got = d2v_tf.pipeline("automatic-speech-recognition", model=folder, chunk_length_s=0.5)(waves)
    assert got == expected and all(len(e["text"]) > 3 for e in expected)
    features = d2v_tf.pipeline("feature-extraction", model=folder)(waves[1], return_tensors=True)
    assert tuple(features.shape) == (1, 34, 32)
    assert keras.ops.is_tensor(features) and not isinstance(features, np.ndarray)  # the backend's own tensor


@pytest.mark.parametrize("architecture", ["Data2VecTextForSequenceClassification", "Data2VecAudioForCTC",
                                          "Data2VecVisionForImageClassification", "Data2Vec2VisionModel"])
def test_gradient_checkpointing_recomputes_with_the_same_gradients(architecture):
    """keras.remat on this backend (jax.checkpoint / torch.utils.checkpoint): each encoder layer
    recomputed, the same dropout masks, the gradients of the plain model."""
    keras.utils.set_random_seed(0)
    model, inputs, call_kwargs = keras_model_and_inputs(architecture)
    (plain, _, plain_recomputed), (checkpointed, _, recomputed) = checkpointed_and_plain_gradients(
        model, inputs, call_kwargs)
    layers = model.config.num_hidden_layers + getattr(model.config, "num_prenet_layers", 0)
    if BACKEND == "jax":  # the count of jax.checkpoint calls: the audio feature encoder's conv layers too
        layers += keras_conv_layers(model)
    assert (plain_recomputed, recomputed) == (0, layers)
    assert_same_gradients(plain, checkpointed, architecture)
